"""Data health check of an image classification dataset, to run before training.

``check_dataset(path, out_dir)`` walks the dataset once and returns a ``DataReport``: the
image files that are safe to train on (``good_files``, pass them to ``get_dls(files=...)``)
and every problem found, by file path, with a short stable reason code. The issues are also
written to ``out_dir/data_issues.csv``. Nothing in the data folder is ever written, moved or
deleted, and ``out_dir`` may not lie inside it.

The three layouts of ``get_dls`` are understood:

- ``class_folders``: ``path/<class>/<image>``, split at random when training;
- ``train_valid``: ``path/train/<class>/<image>`` and ``path/valid/<class>/<image>``;
- ``labels_csv``: ``path/labels.csv`` (``filename``, ``labels``, optional ``is_valid``) with the
  images in ``path/images/`` or ``path/``.

Hidden files and folders (``.ipynb_checkpoints``, ``.DS_Store``) and system clutter
(``__MACOSX``, ``Thumbs.db``, ``desktop.ini``) are skipped and only counted.

Reason codes of files left out (``excluded`` True): those of ``check_image_file``
(``unreadable``, ``zero_bytes``, ``unsupported_extension``, ``not_an_image``,
``decompression_bomb``, ``too_small``, ``corrupt``) and ``misplaced`` (not directly in a class
folder), ``label_error`` (bad labels.csv row), ``unlabelled`` (image not in labels.csv),
``duplicate`` (same bytes as the kept copy), ``train_valid_duplicate`` and
``train_valid_near_duplicate`` (training copy of a validation image, removed from training so
validation stays honest), ``conflicting_labels`` (same bytes under different labels: all
copies left out), ``class_not_in_train`` (validation image of a class with no training image).

Warnings (file kept, or a folder / class): ``near_duplicate``, ``empty_class``,
``single_image_class``, ``class_imbalance``.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from utils_cv.classification.data import IMAGE_EXTENSIONS, is_inside, is_skipped_name, walk_files
from utils_cv.classification.labels import (
    LABELS_FILE,
    LabelsError,
    check_labels_csv,
    labels_image_dir,
)
from utils_cv.common.datacheck import (
    MIN_SIZE,
    NEAR_DUPLICATE_DISTANCE,
    FileCheck,
    check_image_files,
    group_exact_duplicates,
    group_near_duplicates,
    hamming_distance,
)
from utils_cv.common.image_io import MAX_PIXELS

LAYOUT_CLASS_FOLDERS = "class_folders"
LAYOUT_TRAIN_VALID = "train_valid"
LAYOUT_LABELS_CSV = "labels_csv"
ISSUES_CSV = "data_issues.csv"
ISSUE_COLUMNS = ["path", "reason", "detail", "excluded"]

MISPLACED = "misplaced"
LABEL_ERROR = "label_error"
UNLABELLED = "unlabelled"
DUPLICATE = "duplicate"
TRAIN_VALID_DUPLICATE = "train_valid_duplicate"
NEAR_DUPLICATE = "near_duplicate"
TRAIN_VALID_NEAR_DUPLICATE = "train_valid_near_duplicate"
CONFLICTING_LABELS = "conflicting_labels"
CLASS_NOT_IN_TRAIN = "class_not_in_train"
OUTSIDE = "outside_data_folder"
EMPTY_CLASS = "empty_class"
SINGLE_IMAGE_CLASS = "single_image_class"
CLASS_IMBALANCE = "class_imbalance"


class DataError(ValueError):
    """The dataset cannot be trained on; the message says why in one sentence.

    ``report`` holds the ``DataReport`` when the check got that far (else None). In Jupyter
    the error shows as its one-line message, without a traceback.
    """

    def __init__(self, message: str, report: DataReport | None = None):
        super().__init__(message)
        self.report = report

    def _render_traceback_(self) -> list[str]:
        return [f"DataError: {self}"]


@dataclass
class Item:
    """An image file the loader would use: its labels, split and class folder."""

    path: Path
    labels: tuple[str, ...]
    split: str | None = None  # "train", "valid", or None for a random split
    folder: Path | None = None  # class folder, in the folder layouts


@dataclass
class DataReport:
    """Result of ``check_dataset``.

    Attributes
    ----------
    path : the data folder (absolute)
    layout : "class_folders", "train_valid" or "labels_csv"
    good_files : absolute paths of the images safe to train on, sorted
    issues : DataFrame with columns path (str), reason (code), detail (sentence), excluded
        (True when the file is left out of ``good_files``)
    class_counts : good training images per class (all good images for a random split)
    split_counts : good images per split, {"train": n, "valid": n}; {} for a random split
    n_files : files looked at (hidden and system files not counted)
    n_hidden : hidden / system files and folders skipped
    csv_path : where the issues CSV was written, or None
    notes : sentences about the data as a whole (e.g. how many images are upscaled)
    """

    path: Path
    layout: str
    good_files: list[Path]
    issues: pd.DataFrame
    class_counts: dict[str, int]
    split_counts: dict[str, int] = field(default_factory=dict)
    n_files: int = 0
    n_hidden: int = 0
    csv_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Number of classes with at least one good training image."""
        return len(self.class_counts)

    @property
    def excluded(self) -> pd.DataFrame:
        """The issues that left a file out of training."""
        return self.issues[self.issues["excluded"]]

    @property
    def warnings(self) -> pd.DataFrame:
        """The issues reported without leaving a file out."""
        return self.issues[~self.issues["excluded"]]

    def summary(self, max_classes: int = 20) -> str:
        """A few lines: counts, reasons, classes and where the CSV went."""
        layout = {
            LAYOUT_CLASS_FOLDERS: "class folders, split at random",
            LAYOUT_TRAIN_VALID: "train/ and valid/ class folders",
            LAYOUT_LABELS_CSV: "images + labels.csv"
            + (", is_valid column" if self.split_counts else ", split at random"),
        }[self.layout]
        splits = ", ".join(f"{k} {v:,}" for k, v in self.split_counts.items())
        lines = [
            f"Data check of {display_path(self.path)} ({layout})",
            f"  {self.n_files:,} files: {len(self.good_files):,} good images in "
            f"{self.n_classes} classes{f' ({splits})' if splits else ''}, "
            f"{self.excluded['path'].nunique():,} left out, {self.n_hidden} hidden skipped",
        ]
        for title, df in (("left out", self.excluded), ("warnings", self.warnings)):
            if len(df):
                counts = df["reason"].value_counts()
                lines.append(f"  {title}: " + ", ".join(f"{r} {n}" for r, n in counts.items()))
        classes = sorted(self.class_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        listed = ", ".join(f"{c} {n}" for c, n in classes[:max_classes])
        more = f", ... {len(classes) - max_classes} more" if len(classes) > max_classes else ""
        lines.append(f"  classes: {listed}{more}")
        lines += [f"  note: {note}" for note in self.notes]
        if self.csv_path is not None:
            lines.append(f"  issues CSV: {self.csv_path}")
        return "\n".join(lines)

    def readable_issues(self) -> pd.DataFrame:
        """``issues`` with paths relative to the data folder, for display."""
        df = self.issues.copy()
        df["path"] = [_relative(Path(p), self.path) for p in df["path"]]
        return df

    def show(self, max_rows: int = 30) -> None:
        """Print the summary and the first ``max_rows`` issues (a table in notebooks)."""
        print(self.summary())
        if not len(self.issues):
            return
        table = self.readable_issues().head(max_rows)
        try:
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is not None:
                display(table)
                return
        except ImportError:
            pass
        with pd.option_context("display.max_colwidth", 120, "display.width", 200):
            print(table.to_string(index=False))

    def _repr_html_(self) -> str:
        table = self.readable_issues().to_html(index=False, max_rows=30)
        return f"<pre>{html.escape(self.summary())}</pre>{table}"

    def __repr__(self) -> str:
        return self.summary()


# --- walking -------------------------------------------------------------------------------


def display_path(path: str | Path) -> str:
    """``path`` as printable text: bytes of a file name that are not UTF-8 shown as ``\\xff``
    (such names are kept and trained on; only their display changes)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def visible_subdirs(folder: Path, root: Path, follow_links: bool = False) -> list[Path]:
    """Immediate sub-folders of ``folder`` that are not hidden nor links leading outside
    ``root`` (unless ``follow_links``), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir()
        and not is_skipped_name(p.name)
        and (follow_links or not p.is_symlink() or is_inside(p, root))
    )


def _report_outside(paths: list[Path], issues: _Issues) -> None:
    for p in paths:
        kind = "folder" if p.is_dir() else "file"
        issues.add(
            p,
            OUTSIDE,
            f"a link to a {kind} outside the data folder ({os.path.realpath(p)}); not used "
            f"(check_dataset(follow_links=True) to use it)",
        )


def detect_layout(path: Path) -> str:
    """Which of the loader's layouts ``path`` uses (labels.csv wins, as in ``get_dls``)."""
    if (path / LABELS_FILE).is_file():
        return LAYOUT_LABELS_CSV
    if (path / "train").is_dir() and (path / "valid").is_dir():
        return LAYOUT_TRAIN_VALID
    return LAYOUT_CLASS_FOLDERS


class _Issues:
    """Collects issue rows."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, bool]] = []

    def add(self, path: Path, reason: str, detail: str, excluded: bool = True) -> None:
        self.rows.append((display_path(path), reason, display_path(detail), excluded))

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=ISSUE_COLUMNS)
        df["excluded"] = df["excluded"].astype(bool)
        df = df.sort_values(["excluded", "reason", "path"], ascending=[False, True, True])
        return df.reset_index(drop=True)


def _folder_items(path: Path, layout: str, issues: _Issues, follow_links: bool = False):
    """Items, class folders and skipped count of the two folder layouts."""
    roots = [("train", path / "train"), ("valid", path / "valid")]
    if layout == LAYOUT_CLASS_FOLDERS:
        roots = [(None, path)]
    items, class_dirs, n_skipped, n_files = [], [], 0, 0
    for split, root in roots:
        walk = walk_files(root, path, follow_links)
        files = walk.files
        _report_outside(walk.outside, issues)
        n_skipped += walk.n_skipped
        n_files += len(files) + len(walk.outside)
        class_dirs += visible_subdirs(root, path, follow_links)
        where = f"{root.name}/" if split else ""
        for f in files:
            parts = f.relative_to(root).parts
            if len(parts) == 2:
                items.append(Item(f, (parts[0],), split, root / parts[0]))
            elif len(parts) == 1:
                detail = f"not in a class folder; images go in {where}<class>/<image>"
                issues.add(f, MISPLACED, detail)
            else:
                detail = (
                    f"in a sub-folder of class folder '{parts[0]}'; images go directly in "
                    f"{where}<class>/"
                )
                issues.add(f, MISPLACED, detail)
    return items, class_dirs, n_skipped, n_files


def _csv_items(path: Path, issues: _Issues, follow_links: bool = False):
    """Items and skipped count of the labels.csv layout; bad rows and unlisted files reported."""
    csv = path / LABELS_FILE
    image_dir = labels_image_dir(path)
    try:
        df, problems = check_labels_csv(csv, image_dir, path)
    except LabelsError as e:
        raise DataError(str(e)) from None
    listed = set()
    for problem in problems:
        where = problem.path or csv
        if where != csv:
            listed.add(os.path.normpath(where))
        issues.add(where, LABEL_ERROR, f"{LABELS_FILE} {problem}")
    has_split = "is_valid" in df.columns
    items = []
    for i, row in enumerate(df.itertuples(index=False)):
        split = ("valid" if df["is_valid"].iat[i] else "train") if has_split else None
        file = Path(os.path.abspath(row.path))
        listed.add(os.path.normpath(file))
        if not follow_links and not is_inside(file, path):
            _report_outside([file], issues)
            continue
        items.append(Item(file, tuple(row.labels), split))
    walk = walk_files(image_dir, path, follow_links)
    _report_outside([p for p in walk.outside if os.path.normpath(p) not in listed], issues)
    files, n_skipped = walk.files, walk.n_skipped
    files = [f for f in files if f != csv]
    for f in files:
        if os.path.normpath(f) not in listed:
            issues.add(f, UNLABELLED, f"not listed in {LABELS_FILE}; not used")
    n_files = len(listed | {os.path.normpath(f) for f in files})
    return items, n_skipped, n_files


# --- duplicates ------------------------------------------------------------------------------


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _labels_text(item: Item) -> str:
    return " ".join(item.labels)


def _drop_exact_duplicates(ok: list[tuple[Item, FileCheck]], keep: list[bool], root, issues):
    """Keep one copy of each file content; a validation copy wins over training copies."""
    for group in group_exact_duplicates([check.sha1 for _, check in ok]):
        members = [ok[i][0] for i in group]
        if len({tuple(sorted(m.labels)) for m in members}) > 1:
            for i, item in zip(group, members):
                keep[i] = False
                others = ", ".join(
                    f"{_relative(m.path, root)} ('{_labels_text(m)}')"
                    for m in members
                    if m is not item
                )
                detail = (
                    f"same image as {others}, labelled differently ('{_labels_text(item)}' "
                    f"here); all copies left out"
                )
                issues.add(item.path, CONFLICTING_LABELS, detail)
            continue
        valid = [i for i in group if ok[i][0].split == "valid"]
        kept = valid[0] if valid else group[0]
        for i in group:
            if i == kept:
                continue
            keep[i] = False
            item = ok[i][0]
            reason = TRAIN_VALID_DUPLICATE if valid and item.split == "train" else DUPLICATE
            detail = f"same content as {_relative(ok[kept][0].path, root)}"
            if reason == TRAIN_VALID_DUPLICATE:
                detail += " (validation); removed from training"
            issues.add(item.path, reason, detail)


def _flag_near_duplicates(
    ok: list[tuple[Item, FileCheck]], keep: list[bool], root, issues, max_distance: int
):
    """Report near duplicates; training copies of a validation image are removed."""
    rest = [i for i in range(len(ok)) if keep[i]]
    checks = [ok[i][1] for i in rest]
    groups = group_near_duplicates(
        [c.dhash for c in checks], max_distance, means=[c.mean for c in checks]
    )
    for group in groups:
        members = [rest[k] for k in group]
        valid = [i for i in members if ok[i][0].split == "valid"]
        train = [i for i in members if ok[i][0].split == "train"]
        reference = valid[0] if valid and train else members[0]
        ref_item, ref_check = ok[reference]
        for i in members:
            if i == reference:
                continue
            item, check = ok[i]
            bits = hamming_distance(check.dhash, ref_check.dhash)
            detail = f"looks like {_relative(ref_item.path, root)} ({bits} of 64 hash bits differ)"
            if valid and train and item.split == "train":
                keep[i] = False
                issues.add(
                    item.path, TRAIN_VALID_NEAR_DUPLICATE, detail + "; removed from training"
                )
            else:
                issues.add(item.path, NEAR_DUPLICATE, detail, excluded=False)


# --- classes -----------------------------------------------------------------------------------


def _drop_classes_not_in_train(good: list[Item], issues: _Issues) -> list[Item]:
    """Leave out validation images with a label that no training image has."""
    train_labels = {label for item in good if item.split == "train" for label in item.labels}
    kept = []
    for item in good:
        missing = [label for label in item.labels if label not in train_labels]
        if item.split == "valid" and missing:
            detail = f"class '{missing[0]}' has no usable training image; the model cannot learn it"
            issues.add(item.path, CLASS_NOT_IN_TRAIN, detail)
        else:
            kept.append(item)
    return kept


def _report_classes(good, class_dirs, counts, layout, path, issues, imbalance_ratio):
    """Empty class folders, single-image classes and class imbalance (warnings)."""
    used = Counter(item.folder for item in good)
    for folder in class_dirs:
        if used[folder] == 0:
            n = len(walk_files(folder, path).files)
            detail = (
                "the folder is empty" if n == 0 else f"none of its {_plural(n, 'file')} is usable"
            )
            issues.add(folder, EMPTY_CLASS, f"class '{folder.name}': {detail}", excluded=False)

    def location(label: str) -> Path:
        if layout == LAYOUT_LABELS_CSV:
            return path / LABELS_FILE
        return path / "train" / label if layout == LAYOUT_TRAIN_VALID else path / label

    for label, n in sorted(counts.items()):
        if n == 1:
            where = location(label)
            if layout == LAYOUT_LABELS_CSV:
                where = next(i.path for i in good if label in i.labels and i.split != "valid")
            detail = f"class '{label}' has a single training image; it can hardly be learnt"
            issues.add(where, SINGLE_IMAGE_CLASS, detail, excluded=False)
    if not counts:
        return
    largest, most = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    for label, n in sorted(counts.items()):
        if n * imbalance_ratio < most:
            detail = (
                f"class '{label}' has {_plural(n, 'training image')}, '{largest}' has {most} "
                f"({most / n:.0f}x more); collect more '{label}' images, or train with "
                f'TrainConfig(balance="weights") (class weights in the loss; "sampler" for '
                f"the most recall of rare classes)"
            )
            issues.add(location(label), CLASS_IMBALANCE, detail, excluded=False)


# --- the check -------------------------------------------------------------------------------


def _split_counts(good: list[Item]) -> dict[str, int]:
    counts = Counter(item.split for item in good)
    return {"train": counts["train"], "valid": counts["valid"]}


def _resolve_out_dir(out_dir: str | Path | None, data_dir: Path) -> Path | None:
    """``out_dir`` made absolute; DataError when it lies inside the data folder."""
    if out_dir is None:
        return None
    out, data = Path(out_dir).resolve(), data_dir.resolve()
    if out == data or data in out.parents:
        raise DataError(
            f"out_dir {out} is inside the data folder {data}; choose a folder outside it, "
            f"the data folder is never written to."
        )
    return out


def _stop_unless_trainable(report: DataReport, has_split: bool) -> None:
    """DataError (with ``report``) when there is nothing to train or validate on."""
    where = f"; see {report.csv_path}" if report.csv_path else "; see report.issues"
    if report.n_files == 0:
        raise DataError(
            f"No files found in {report.path}; expected class folders (<class>/<image>), "
            f"train/ and valid/ class folders, or images/ with {LABELS_FILE}.",
            report,
        )
    if not report.good_files:
        raise DataError(
            f"None of the {report.n_files} files in {report.path} is a usable image{where}.",
            report,
        )
    if report.n_classes == 0:
        raise DataError(f"No usable training image in {report.path}{where}.", report)
    if report.n_classes == 1:
        raise DataError(
            f"Only one class ('{next(iter(report.class_counts))}') has usable training images "
            f"in {report.path}; a classifier needs at least two{where}.",
            report,
        )
    if has_split and not report.split_counts.get("valid"):
        raise DataError(f"The validation set of {report.path} has no usable image{where}.", report)


def _small_image_notes(checks: list[FileCheck], im_size: int | None) -> list[str]:
    """One note on the images smaller than the training size (they are upscaled)."""
    if im_size is None:
        from utils_cv.classification.spec import ModelSpec

        im_size = ModelSpec().im_size
    small = [c for c in checks if min(c.width, c.height) < im_size]
    if not small:
        return []
    least = min(small, key=lambda c: c.width * c.height)
    return [
        f"{_plural(len(small), 'image')} smaller than the training size {im_size} px (smallest "
        f"{least.width} x {least.height}); they are upscaled, which works (also for 28 x 28 "
        f"images) but adds no detail"
    ]


def check_dataset(
    path: str | Path,
    out_dir: str | Path | None = None,
    im_size: int | None = None,
    follow_links: bool = False,
    min_size: int = MIN_SIZE,
    max_pixels: int | None = MAX_PIXELS,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
    imbalance_ratio: float = 10.0,
    workers: int | None = None,
    progress: bool = True,
) -> DataReport:
    """Walk an image classification dataset once and report what is safe to train on.

    Parameters
    ----------
    path : data folder in one of the layouts of ``get_dls`` (see the module docstring)
    out_dir : folder for ``data_issues.csv`` (created if needed); None: no CSV. Must lie
        outside ``path``.
    im_size : the training image size in pixels (default: the default model's); images
        smaller than it are kept (they are upscaled) and counted in one note.
    follow_links : also use files and folders that links inside ``path`` lead to outside it
        (by default they are reported as ``outside_data_folder`` and left out)
    min_size : images with a side shorter than this many pixels are degenerate and left out
        (``too_small``); so are strips with an aspect ratio beyond 1:20 (``extreme_aspect``)
    max_pixels : images with more pixels are refused undecoded (``decompression_bomb``)
    near_duplicate_distance : largest number of differing bits (of 64) of the perceptual
        hashes of two near duplicates; 0 finds re-encoded copies only
    imbalance_ratio : a class with this many times fewer training images than the largest
        class is reported as ``class_imbalance``
    workers : threads for the file checks (default: CPU cores)
    progress : show a progress bar

    Returns
    -------
    DataReport; ``report.good_files`` are the images to train on.

    Raises
    ------
    DataError (a ValueError) : one sentence, when the folder does not exist, ``out_dir`` is
        inside it, labels.csv is unusable, no image is usable, only one class is left, or the
        given validation set is empty. ``error.report`` holds the report when one was made.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise DataError(f"Data folder not found: {path}.")
    out_dir = _resolve_out_dir(out_dir, path)
    layout = detect_layout(path)
    issues = _Issues()
    class_dirs = []
    if layout == LAYOUT_LABELS_CSV:
        items, n_hidden, n_files = _csv_items(path, issues, follow_links)
    else:
        items, class_dirs, n_hidden, n_files = _folder_items(path, layout, issues, follow_links)
    items.sort(key=lambda item: str(item.path))

    checks = check_image_files(
        [item.path for item in items],
        min_size=min_size,
        max_pixels=max_pixels,
        extensions=IMAGE_EXTENSIONS,
        workers=workers,
        progress=progress,
    )
    ok = []
    for item, check in zip(items, checks):
        if check.ok:
            ok.append((item, check))
        else:
            issues.add(item.path, check.reason, check.detail)
    keep = [True] * len(ok)
    _drop_exact_duplicates(ok, keep, path, issues)
    _flag_near_duplicates(ok, keep, path, issues, near_duplicate_distance)
    good = [item for (item, _), k in zip(ok, keep) if k]
    has_split = any(item.split is not None for item in items) or layout == LAYOUT_TRAIN_VALID
    if has_split:
        good = _drop_classes_not_in_train(good, issues)
    counts = Counter(label for item in good if item.split != "valid" for label in item.labels)
    _report_classes(good, class_dirs, counts, layout, path, issues, imbalance_ratio)

    report = DataReport(
        notes=_small_image_notes([c for (_, c), k in zip(ok, keep) if k], im_size),
        path=path,
        layout=layout,
        good_files=sorted(item.path for item in good),
        issues=issues.frame(),
        class_counts=dict(sorted(counts.items())),
        split_counts=_split_counts(good) if has_split else {},
        n_files=n_files,
        n_hidden=n_hidden,
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report.csv_path = out_dir / ISSUES_CSV
        report.issues.to_csv(report.csv_path, index=False)
    _stop_unless_trainable(report, has_split)
    return report
