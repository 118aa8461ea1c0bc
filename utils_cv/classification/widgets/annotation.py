"""Annotate a folder of images with a widget, and turn the annotations into training data.

The annotation file is tab-separated with the header ``IM_FILENAME``, ``EXCLUDE``, ``LABELS``:
one row per annotated image, ``EXCLUDE`` is ``True`` or ``False`` and ``LABELS`` holds the
image's labels separated by commas (empty for none). For example::

    IM_FILENAME	EXCLUDE	LABELS
    im_01.jpg	False	apple,green apple
    im_02.jpg	True
    im_03.jpg	False

``AnnotationWidget`` rewrites the whole file after every change, so nothing is lost if the
kernel dies. The file is created with the process umask (0644 under the usual umask 022), so
colleagues and services can read it. ``annotations_to_class_folders`` (single-label) and
``annotations_to_labels_csv`` (multi-label) copy the annotated images into a folder that
``get_dls`` can load.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from utils_cv.classification.data import get_image_files
from utils_cv.classification.labels import LABEL_SEPARATOR, LABELS_FILE

ANNO_COLUMNS = ("IM_FILENAME", "EXCLUDE", "LABELS")
ANNO_LABEL_SEPARATOR = ","
# Characters the annotation file uses as separators, so labels and file names may not hold them.
RESERVED_LABEL_CHARS = {",": "comma", "\t": "tab", "\n": "newline", "\r": "carriage return"}
# Formats browsers show as they are; others (tif, bmp) are re-encoded as JPEG for display.
BROWSER_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif", ".webp": "webp"}


# --- the annotation file -----------------------------------------------------------


def check_labels(labels: Sequence[str]) -> list[str]:
    """Return ``labels`` as a list after checking they can be written to the annotation file.

    Spaces inside a label are fine. Raises ValueError for no labels, an empty or duplicate
    label, a label with leading or trailing spaces, or one holding a comma, tab or newline
    (the file's separators).
    """
    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of strings, not the string {labels!r}.")
    labels = list(labels)
    if not labels:
        raise ValueError("Give at least one label.")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"Labels must be non-empty strings; got {label!r}.")
        if label != label.strip():
            raise ValueError(f"Label {label!r} has leading or trailing spaces; remove them.")
        for char, name in RESERVED_LABEL_CHARS.items():
            if char in label:
                raise ValueError(
                    f"Label {label!r} contains a {name}, which the annotation file uses as a "
                    f"separator. Rename the label (spaces are fine)."
                )
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Duplicate labels: {', '.join(duplicates)}.")
    return labels


def _parse_exclude(value: str, anno_path: Path, row: int) -> bool:
    """``'True'``/``'False'`` (any case, or 1/0) of row ``row`` -> bool; ValueError otherwise."""
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{anno_path}, row {row}: EXCLUDE must be True or False, not {value!r}.")


def _parse_labels(value: str) -> list[str]:
    """Comma-separated label text -> list of labels (empty text -> [])."""
    return [label for label in str(value).split(ANNO_LABEL_SEPARATOR) if label]


def read_annotations(anno_path: str | Path) -> pd.DataFrame:
    """Read an annotation file written by ``AnnotationWidget``.

    Parameters
    ----------
    anno_path : tab-separated file with the header ``IM_FILENAME``, ``EXCLUDE``, ``LABELS``.

    Returns
    -------
    DataFrame with ``IM_FILENAME`` (str), ``EXCLUDE`` (bool) and ``LABELS`` (list of str), one
    row per annotated image, in file order. Raises ValueError for a missing column, a bad
    ``EXCLUDE`` value or a file name listed twice.
    """
    anno_path = Path(anno_path)
    df = pd.read_csv(
        anno_path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL
    )
    missing = [c for c in ANNO_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{anno_path}: missing column(s) {', '.join(missing)}; expected the tab-separated "
            f"header {' '.join(ANNO_COLUMNS)}."
        )
    df = df[list(ANNO_COLUMNS)].copy()
    duplicates = sorted(df["IM_FILENAME"][df["IM_FILENAME"].duplicated()].unique())
    if duplicates:
        raise ValueError(f"{anno_path}: file name(s) listed twice: {', '.join(duplicates)}.")
    df["EXCLUDE"] = [
        _parse_exclude(v, anno_path, row) for row, v in enumerate(df["EXCLUDE"], start=2)
    ]
    df["LABELS"] = df["LABELS"].map(_parse_labels)
    return df.reset_index(drop=True)


def write_annotations(anno_path: str | Path, annos: dict[str, tuple[bool, list[str]]]) -> Path:
    """Write ``annos`` (file name -> (exclude, labels)) to ``anno_path`` atomically.

    Rows are written in the dict's order. The text goes to a temporary file in the same folder
    which then replaces ``anno_path`` (``os.replace``), so a crash leaves either the old or the
    new file, never half of one. The file gets the mode a plain ``open`` gives, 0666 less the
    process umask (``tempfile.mkstemp`` would give 0600). Returns ``anno_path``.
    """
    anno_path = Path(anno_path)
    anno_path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(ANNO_COLUMNS)
    for im_filename, (exclude, labels) in annos.items():
        writer.writerow([im_filename, str(bool(exclude)), ANNO_LABEL_SEPARATOR.join(labels)])
    # A new name (O_EXCL: never an existing file or link) created with mode 0666 & ~umask.
    tmp = anno_path.with_name(f".{anno_path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, anno_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return anno_path


# --- the widget --------------------------------------------------------------------


def image_bytes(im_path: str | Path, max_dim: int = 500) -> tuple[bytes, str]:
    """Bytes and format (``'jpeg'``, ``'png'``, ...) to show the image at ``im_path``.

    A browser-friendly file whose longer side is at most ``max_dim`` pixels is returned as it
    is; a larger one, or another format (tif, bmp), is re-encoded as a JPEG at most ``max_dim``
    pixels on its longer side (EXIF orientation applied). The file is not changed.
    """
    from PIL import Image

    from utils_cv.common.image_io import load_rgb

    im_path = Path(im_path)
    fmt = BROWSER_FORMATS.get(im_path.suffix.lower())
    with Image.open(im_path) as im:
        small = max(im.size) <= max_dim
    if fmt is not None and small:
        return im_path.read_bytes(), fmt
    im = load_rgb(im_path)
    im.thumbnail((max_dim, max_dim), Image.BILINEAR)
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "jpeg"


class AnnotationWidget:
    """Label a folder of images one at a time; every change is saved to ``anno_path`` at once.

    Shows one image with its file name and position, previous/next buttons, a checkbox per
    label (several may be ticked) and an "exclude" checkbox. Ticking a box writes the image's
    row; clicking "next" also writes the row of the image being left, so passing an image
    without ticking anything records it as annotated with no labels (a negative). "Previous"
    only navigates. The caption under the buttons shows the image's saved state at once
    ("not annotated yet", "annotated: apple, citrus", "annotated: excluded"), or "NOT SAVED"
    with the error when writing the file failed. File names and labels are shown as text, never
    as HTML.

    Resume: when ``anno_path`` exists it is read and the widget starts at the first image (in
    ``im_filenames`` order) without a row, or at the last image when all have one. Rows for
    files that are no longer in ``im_dir`` and labels that are not in ``labels`` are kept as
    they are (with a warning), so the user's annotations are never lost.

    Parameters
    ----------
    labels : label names; spaces are fine, commas, tabs and newlines are refused (ValueError).
    im_dir : folder of the images.
    anno_path : annotation file (tab-separated); created with just its header when missing.
    im_filenames : file names inside ``im_dir`` to annotate, in order; default: the image files
        directly in ``im_dir``, sorted.
    max_display_dim : longer side, in pixels, that larger images are downscaled to for display.
    """

    def __init__(
        self,
        labels: Sequence[str],
        im_dir: str | Path,
        anno_path: str | Path,
        im_filenames: Sequence[str] | None = None,
        max_display_dim: int = 500,
    ):
        self.labels = check_labels(labels)
        self.im_dir = Path(im_dir)
        self.anno_path = Path(anno_path)
        self.max_display_dim = max_display_dim
        if not self.im_dir.is_dir():
            raise FileNotFoundError(f"Image folder not found: {self.im_dir}")
        self.im_filenames = self._list_images(im_filenames)
        self.annos = self._read_existing()
        self._updating = False
        self._image_error: str | None = None  # why the image shown cannot be displayed
        self._save_error: str | None = None  # why the last save failed; None when saved
        self._build_ui()
        if not self.anno_path.is_file():
            self.save()
        self.index = self._resume_index()
        self._show_image()

    # -- setup

    def _list_images(self, im_filenames: Sequence[str] | None) -> list[str]:
        """File names to annotate: ``im_filenames`` checked, or the images in ``im_dir``."""
        if im_filenames is None:
            names = [p.name for p in get_image_files(self.im_dir, recurse=False)]
        else:
            names = [str(name) for name in im_filenames]
            missing = [name for name in names if not (self.im_dir / name).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"Not in {self.im_dir}: {', '.join(missing[:5])}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                )
        if not names:
            raise ValueError(f"No images to annotate in {self.im_dir}.")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"File names listed twice: {', '.join(duplicates)}.")
        return names

    def _read_existing(self) -> dict[str, tuple[bool, list[str]]]:
        """Annotations already in ``anno_path`` (empty when it does not exist); warns about
        rows whose image is not being annotated and labels not in ``self.labels``."""
        if not self.anno_path.is_file():
            return {}
        df = read_annotations(self.anno_path)
        annos = {
            name: (exclude, labels)
            for name, exclude, labels in zip(df["IM_FILENAME"], df["EXCLUDE"], df["LABELS"])
        }
        names = set(self.im_filenames)
        absent = [name for name in annos if name not in names]
        if absent:
            warnings.warn(
                f"{len(absent)} annotated image(s) in {self.anno_path} are not in {self.im_dir} "
                f"(e.g. {absent[0]}); their rows are kept unchanged.",
                stacklevel=3,
            )
        unknown = sorted({lab for _, labs in annos.values() for lab in labs} - set(self.labels))
        if unknown:
            warnings.warn(
                f"{self.anno_path} uses labels not in the widget's labels: {', '.join(unknown)}; "
                f"they are kept but have no checkbox.",
                stacklevel=3,
            )
        return annos

    def _resume_index(self) -> int:
        """Index of the first image without annotation; the last image when all have one."""
        for i, name in enumerate(self.im_filenames):
            if name not in self.annos:
                return i
        return len(self.im_filenames) - 1

    def _build_ui(self):
        """Create the widgets and connect their events."""
        import ipywidgets as widgets

        self.previous_button = widgets.Button(description="Previous", icon="arrow-left")
        self.next_button = widgets.Button(description="Next", icon="arrow-right")
        # Label and Checkbox descriptions render as text: file names and labels are not HTML.
        self.info_label = widgets.Label()
        self.image = widgets.Image(layout=widgets.Layout(max_width=f"{self.max_display_dim}px"))
        self.exclude_checkbox = widgets.Checkbox(description="exclude", indent=False)
        self.label_checkboxes = {
            label: widgets.Checkbox(description=label, indent=False) for label in self.labels
        }
        self.previous_button.on_click(lambda _: self.previous())
        self.next_button.on_click(lambda _: self.next())
        self.exclude_checkbox.observe(self._on_change, names="value")
        for checkbox in self.label_checkboxes.values():
            checkbox.observe(self._on_change, names="value")
        self.box = widgets.HBox(
            [
                widgets.VBox(
                    [
                        widgets.HBox([self.previous_button, self.next_button]),
                        self.info_label,
                        self.image,
                    ]
                ),
                widgets.VBox(
                    [
                        widgets.HTML("<b>Labels</b>"),
                        *self.label_checkboxes.values(),
                        widgets.HTML("<b>Skip this image</b>"),
                        self.exclude_checkbox,
                    ]
                ),
            ]
        )

    # -- state

    @property
    def im_filename(self) -> str:
        """File name of the image shown."""
        return self.im_filenames[self.index]

    def current_annotation(self) -> tuple[bool, list[str]]:
        """(exclude, labels) of the image shown, as set by its checkboxes.

        Labels ticked in the checkboxes come first, in ``self.labels`` order, then any labels
        from the file that have no checkbox (kept as they were).
        """
        _, old_labels = self.annos.get(self.im_filename, (False, []))
        ticked = [label for label, box in self.label_checkboxes.items() if box.value]
        extra = [label for label in old_labels if label not in self.label_checkboxes]
        return bool(self.exclude_checkbox.value), ticked + extra

    def record(self):
        """Store the annotation of the image shown, save the file and update the caption.

        When the file cannot be written the caption says so and the error is raised.
        """
        self.annos[self.im_filename] = self.current_annotation()
        try:
            self.save()
        finally:
            self._show_caption()

    def save(self) -> Path:
        """Write all annotations to ``anno_path``: rows in ``im_filenames`` order, then rows of
        images not being annotated, in their original order."""
        order = [name for name in self.im_filenames if name in self.annos]
        order += [name for name in self.annos if name not in set(self.im_filenames)]
        try:
            path = write_annotations(self.anno_path, {name: self.annos[name] for name in order})
        except Exception as e:
            self._save_error = f"{type(e).__name__}: {e}"
            raise
        self._save_error = None
        return path

    # -- navigation and events

    def next(self):
        """Record the image shown (even with no labels) and move to the next one, if any."""
        self.record()
        self.go_to(min(self.index + 1, len(self.im_filenames) - 1))

    def previous(self):
        """Move to the previous image, if any (records nothing)."""
        self.go_to(max(self.index - 1, 0))

    def go_to(self, index: int):
        """Show image number ``index`` (0-based)."""
        if not 0 <= index < len(self.im_filenames):
            raise IndexError(f"index {index} outside 0..{len(self.im_filenames) - 1}")
        self.index = index
        self._show_image()

    def _on_change(self, change):
        """A checkbox was ticked or unticked by the user: save at once."""
        if not self._updating:
            self.record()

    def _show_image(self):
        """Update image, caption, checkboxes and buttons for ``self.index``."""
        exclude, labels = self.annos.get(self.im_filename, (False, []))
        self._updating = True
        try:
            self.exclude_checkbox.value = exclude
            for label, checkbox in self.label_checkboxes.items():
                checkbox.value = label in labels
        finally:
            self._updating = False
        self._image_error = None
        try:
            value, fmt = image_bytes(self.im_dir / self.im_filename, self.max_display_dim)
        except Exception as e:  # unreadable image: say so and keep the widget usable
            value, fmt = b"", "png"
            self._image_error = str(e)
        self.image.format = fmt
        self.image.value = value
        self.previous_button.disabled = self.index == 0
        self._show_caption()

    def _status(self) -> str:
        """The saved state of the image shown, in words."""
        if self._save_error is not None:
            return f"NOT SAVED: {self._save_error}"
        if self.im_filename not in self.annos:
            return "not annotated yet"
        exclude, labels = self.annos[self.im_filename]
        if exclude:
            return "annotated: excluded"
        return f"annotated: {', '.join(labels) if labels else 'no label'}"

    def _show_caption(self):
        """Position, file name and saved state of the image shown (a Label: plain text)."""
        caption = (
            f"{self.index + 1} / {len(self.im_filenames)}: {self.im_filename} ({self._status()})"
        )
        if self._image_error is not None:
            caption += f" - cannot show image: {self._image_error}"
        self.info_label.value = caption

    def show(self):
        """The widget's box; the last expression of a notebook cell displays it."""
        return self.box


# --- annotations -> training data ------------------------------------------------------


def _prepare_out_dir(out_dir: Path, im_dir: Path, anno_path: Path, overwrite: bool):
    """Create an empty ``out_dir``; with ``overwrite`` delete an existing one first.

    Refuses an ``out_dir`` that is, or holds, the image folder or the annotation file.
    """
    out = out_dir.resolve()
    for path in (im_dir.resolve(), anno_path.resolve()):
        if path == out or out in path.parents:
            raise ValueError(
                f"out_dir {out_dir} must not hold {path}: originals are never changed."
            )
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty; pass overwrite=True to replace it, "
                "or choose another folder."
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _usable_rows(anno_path: Path, im_dir: Path, why_not) -> tuple[pd.DataFrame, dict]:
    """Rows of the annotation file to convert, and the file names left out per reason.

    ``why_not(labels)`` returns None for a usable label list, else the reason to leave the
    image out. Excluded rows and images missing from ``im_dir`` are left out too.
    """
    df = read_annotations(anno_path)
    left_out: dict[str, list[str]] = {}
    used = []
    for i, (name, exclude, labels) in enumerate(
        zip(df["IM_FILENAME"], df["EXCLUDE"], df["LABELS"])
    ):
        if exclude:
            reason = "excluded"
        elif not (im_dir / name).is_file():
            reason = "missing from the image folder"
        else:
            reason = why_not(labels)
        if reason is None:
            used.append(i)
        else:
            left_out.setdefault(reason, []).append(name)
    return df.iloc[used].reset_index(drop=True), left_out


def _report_left_out(left_out: dict[str, list[str]], out_dir: Path, n_used: int):
    """Warn with the number (and first names) of images left out, per reason."""
    if not left_out:
        return
    parts = [
        f"{len(names)} {reason} (e.g. {names[0]})" for reason, names in sorted(left_out.items())
    ]
    warnings.warn(f"{out_dir}: {n_used} image(s) used; left out: {'; '.join(parts)}.", stacklevel=3)


def annotations_to_class_folders(
    anno_path: str | Path, im_dir: str | Path, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Copy the single-label annotated images into ``out_dir/<label>/<file name>``.

    Images with exactly one label are used; excluded images, images with no label or several
    labels, with a label that cannot be a folder name (holding ``/`` or ``\\``) and images
    missing from ``im_dir`` are left out and reported in one warning.
    Originals are copied, never moved.

    Parameters
    ----------
    anno_path : annotation file written by ``AnnotationWidget``.
    im_dir : folder holding the annotated images.
    out_dir : new folder of class folders (loadable with ``get_dls``). Must be empty or
        missing, unless ``overwrite`` is True, in which case it is deleted first.

    Returns
    -------
    ``out_dir``.
    """
    anno_path, im_dir, out_dir = Path(anno_path), Path(im_dir), Path(out_dir)

    def why_not(labels):
        if len(labels) != 1:
            return "with no label" if not labels else "with several labels"
        if "/" in labels[0] or "\\" in labels[0] or labels[0] in (".", ".."):
            return "with a label that cannot be a folder name"
        return None

    df, left_out = _usable_rows(anno_path, im_dir, why_not)
    _prepare_out_dir(out_dir, im_dir, anno_path, overwrite)
    for name, labels in zip(df["IM_FILENAME"], df["LABELS"]):
        (out_dir / labels[0]).mkdir(exist_ok=True)
        shutil.copy2(im_dir / name, out_dir / labels[0] / Path(name).name)
    _report_left_out(left_out, out_dir, len(df))
    return out_dir


def annotations_to_labels_csv(
    anno_path: str | Path, im_dir: str | Path, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Copy the annotated images into ``out_dir/images/`` and write ``out_dir/labels.csv``.

    ``labels.csv`` has the header ``filename,labels`` with the labels separated by spaces, the
    format of multi-label sets (see ``read_labels_csv``). A space inside a label would split it
    there, so spaces in labels are replaced by underscores (``"green apple"`` ->
    ``"green_apple"``) with a warning. Images with at least one label are used; excluded images,
    images with no label and images missing from ``im_dir`` are left out and reported in one
    warning. Originals are copied, never moved.

    Parameters
    ----------
    anno_path : annotation file written by ``AnnotationWidget``.
    im_dir : folder holding the annotated images.
    out_dir : new folder (loadable with ``get_dls``). Must be empty or missing, unless
        ``overwrite`` is True, in which case it is deleted first.

    Returns
    -------
    ``out_dir``.
    """
    anno_path, im_dir, out_dir = Path(anno_path), Path(im_dir), Path(out_dir)

    df, left_out = _usable_rows(
        anno_path, im_dir, lambda labels: None if labels else "with no label"
    )
    _prepare_out_dir(out_dir, im_dir, anno_path, overwrite)
    (out_dir / "images").mkdir()
    renamed = sorted({label for labels in df["LABELS"] for label in labels if " " in label})
    if renamed:
        warnings.warn(
            "labels.csv separates labels by spaces, so spaces in labels became underscores: "
            + ", ".join(f"'{label}' -> '{label.replace(' ', '_')}'" for label in renamed),
            stacklevel=2,
        )
    rows = []
    for name, labels in zip(df["IM_FILENAME"], df["LABELS"]):
        shutil.copy2(im_dir / name, out_dir / "images" / Path(name).name)
        labels = list(dict.fromkeys(label.replace(" ", "_") for label in labels))
        rows.append({"filename": Path(name).name, "labels": LABEL_SEPARATOR.join(labels)})
    pd.DataFrame(rows, columns=["filename", "labels"]).to_csv(out_dir / LABELS_FILE, index=False)
    _report_left_out(left_out, out_dir, len(df))
    return out_dir
