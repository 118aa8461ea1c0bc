"""Hard negative mining: teach a classifier a ``negative`` class from its own mistakes.

Images showing none of the classes are split into a few initial training negatives, a mining
pool and a held-out validation part. Each round the classifier scores the pool; the pool images
it most confidently assigns to a *positive* class (its hard negatives) are copied into
training as ``negative`` and the classifier is retrained. The shipped data is never changed:
everything is copied into a working folder made by ``make_working_set``.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils_cv.classification.data import describe_split, get_image_files
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import TrainConfig

NEGATIVE_CLASS = "negative"
WORKDIR_MARKER = ".hard_negatives_workdir"  # marks a folder make_working_set may replace


# --- splitting the negatives -----------------------------------------------------------------


@dataclass
class NegativeSplit:
    """Negative images split three ways (lists of paths, disjoint).

    initial : added to training before round 0, so the negative class exists from the start.
    pool : the mining pool, scored every round; mined images leave it.
    valid : held out; false positives are counted on these.
    """

    initial: list[Path]
    pool: list[Path]
    valid: list[Path]


def split_negatives(
    files: Sequence[str | Path], n_initial: int, valid_pct: float = 0.3, seed: int = 42
) -> NegativeSplit:
    """Shuffle ``files`` with ``seed`` and split them into initial, pool and validation parts.

    Parameters
    ----------
    files : sequence of str or Path
        Negative images (showing none of the classes).
    n_initial : int
        Number of images for training from round 0.
    valid_pct : float
        Fraction (0..1) of ``files`` held out for validation, rounded, at least 1.
    seed : int
        Seed of the shuffle; the same files and seed give the same split.

    Returns
    -------
    NegativeSplit
        Each part sorted by path.
    """
    if n_initial < 0 or not 0 < valid_pct < 1:
        raise ValueError(f"Need n_initial >= 0 and 0 < valid_pct < 1, got {n_initial}, {valid_pct}")
    files = sorted(Path(f) for f in files)
    n_valid = max(1, round(valid_pct * len(files)))
    if n_initial + n_valid >= len(files):
        raise ValueError(
            f"{len(files)} negatives leave no mining pool after {n_initial} initial and "
            f"{n_valid} validation images"
        )
    random.Random(seed).shuffle(files)
    valid, initial, pool = (
        files[:n_valid],
        files[n_valid : n_valid + n_initial],
        files[n_valid + n_initial :],
    )
    return NegativeSplit(sorted(initial), sorted(pool), sorted(valid))


# --- the working dataset ---------------------------------------------------------------------


def check_negatives(folder: str | Path, progress: bool = True) -> list[Path]:
    """The usable images under ``folder`` (walked recursively), in name order.

    Every image file is opened and checked as the data check does (``check_image_files``);
    files that cannot be used are left out with a warning that names each one and why. Raises
    ValueError when no usable image remains.
    """
    import warnings

    from utils_cv.common.datacheck import check_image_files

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Negative images folder not found: {folder}")
    checks = check_image_files(get_image_files(folder), progress=progress)
    bad = [c for c in checks if not c.ok]
    if bad:
        lines = "\n".join(f"  {c.path}: {c.reason} ({c.detail})" for c in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        warnings.warn(
            f"{len(bad)} of {len(checks)} files in {folder} are left out:\n{lines}{more}",
            stacklevel=2,
        )
    good = [c.path for c in checks if c.ok]
    if not good:
        raise ValueError(f"No usable negative image in {folder} (of {len(checks)} image files).")
    return good


def _is_inside(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def _split_per_class(
    items: list[tuple[Path, str]], valid_pct: float, seed: int
) -> list[tuple[Path, str, str]]:
    """(image, label, split) with ``valid_pct`` of each label's images (at least one) in valid."""
    out = []
    for label in sorted({label for _, label in items}):
        files = sorted(f for f, lab in items if lab == label)
        random.Random(seed).shuffle(files)
        n_valid = max(1, round(valid_pct * len(files)))
        out += [(f, label, "valid" if i < n_valid else "train") for i, f in enumerate(files)]
    return out


def _positive_items(
    data_path: Path, valid_pct: float, seed: int, files: Sequence[str | Path] | None = None
) -> list[tuple[Path, str, str]]:
    """(image, label, 'train' or 'valid') for every image of a single-label dataset.

    ``data_path`` holds ``train/`` and ``valid/`` with class folders (split kept), class
    folders, or ``images/`` + ``labels.csv`` with one label per image (split by its
    ``is_valid`` column when there is one). Without a given split each class is split with
    ``valid_pct`` and ``seed``. ``files`` keeps only those images (a data check's good files).
    """
    from utils_cv.classification.labels import (
        LABELS_FILE,
        LabelsError,
        check_labels_csv,
        labels_image_dir,
    )

    keep = None if files is None else {Path(f).resolve() for f in files}
    split = describe_split(data_path)
    csv = data_path / LABELS_FILE
    if csv.is_file():
        im_dir = labels_image_dir(data_path)
        df, problems = check_labels_csv(csv, im_dir, data_path)
        if problems and keep is None:
            raise LabelsError(
                f"{csv}: {len(problems)} rows cannot be used (first: {problems[0]}); run "
                "check_dataset on the data folder and pass its good_files."
            )
        several = df[df["labels"].map(len) > 1]
        if len(several):
            raise ValueError(
                f"{csv}: hard negative mining needs single-label data, but "
                f"{several['filename'].iloc[0]} (and {len(several) - 1} more) has several labels."
            )
        rows = [
            (Path(p), labels[0], bool(v) if split == "column" else None)
            for p, labels, v in zip(df["path"], df["labels"], df.get("is_valid", [None] * len(df)))
        ]
        rows = [r for r in rows if keep is None or r[0].resolve() in keep]
        if split == "column":
            return [(f, label, "valid" if v else "train") for f, label, v in rows]
        return _split_per_class([(f, label) for f, label, _ in rows], valid_pct, seed)
    if split == "folders":
        items = [
            (f, f.parent.name, part)
            for part in ("train", "valid")
            for f in get_image_files(data_path / part)
        ]
        return [item for item in items if keep is None or item[0].resolve() in keep]
    items = [
        (f, class_dir.name)
        for class_dir in sorted(d for d in data_path.iterdir() if d.is_dir() and d.name[0] != ".")
        for f in get_image_files(class_dir)
        if keep is None or f.resolve() in keep
    ]
    return _split_per_class(items, valid_pct, seed)


def _prepare_work_dir(work_dir: Path) -> None:
    """Empty ``work_dir`` if an earlier ``make_working_set`` made it; refuse any other folder."""
    if work_dir.exists() and any(work_dir.iterdir()):
        if not (work_dir / WORKDIR_MARKER).is_file():
            raise FileExistsError(
                f"{work_dir} is not empty and was not made by make_working_set; choose another folder"
            )
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / WORKDIR_MARKER).touch()


def make_working_set(
    data_path: str | Path,
    work_dir: str | Path,
    negatives: NegativeSplit,
    negative_class: str = NEGATIVE_CLASS,
    valid_pct: float = 0.2,
    seed: int = 42,
    files: Sequence[str | Path] | None = None,
) -> Path:
    """Copy positives and negatives into ``work_dir/{train,valid}/<class>/`` for ``get_dls``.

    Parameters
    ----------
    data_path : str or Path
        Single-label data: ``train/`` + ``valid/`` with class folders, class folders, or
        ``images/`` + ``labels.csv`` with one label per image (without a given split, each
        class is split with ``valid_pct`` and ``seed``).
    work_dir : str or Path
        Working folder, replaced when an earlier call made it; never inside ``data_path`` or the
        negatives' folders.
    negatives : NegativeSplit
        ``initial`` go to ``train/<negative_class>``, ``valid`` to ``valid/<negative_class>``;
        the pool is not copied.
    negative_class : str
        Name of the negative class; no positive class may have it.
    files : sequence of paths, optional
        Copy only these positives (the good files of ``check_dataset(data_path)``).

    Returns
    -------
    Path
        ``work_dir``.
    """
    data_path, work_dir = Path(data_path), Path(work_dir)
    sources = [data_path] + [f.parent for f in negatives.initial + negatives.pool + negatives.valid]
    if any(_is_inside(work_dir, s) or _is_inside(s, work_dir) for s in sources):
        raise ValueError(f"work_dir {work_dir} must be outside the data folders")
    items = _positive_items(data_path, valid_pct, seed, files)
    if not items:
        raise ValueError(f"No positive images to copy from {data_path}.")
    if any(label == negative_class for _, label, _ in items):
        raise ValueError(
            f"The data already has a class named '{negative_class}'; pass another negative_class."
        )
    _prepare_work_dir(work_dir)
    for f, label, split in items:
        _copy(f, work_dir / split / label)
    for f in negatives.valid:
        _copy(f, work_dir / "valid" / negative_class)
    add_negatives(negatives.initial, work_dir, negative_class)
    return work_dir


def _copy(src: Path, dst_dir: Path) -> Path:
    """Copy ``src`` into ``dst_dir``; two different sources may not share a name."""
    dst = dst_dir / src.name
    if dst.exists():
        raise FileExistsError(f"{dst} already exists: image names must be unique per class")
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return dst


def add_negatives(
    files: Sequence[str | Path], work_dir: str | Path, negative_class: str = NEGATIVE_CLASS
) -> list[Path]:
    """Copy ``files`` into ``work_dir/train/<negative_class>/``; returns the copies' paths."""
    return [_copy(Path(f), Path(work_dir) / "train" / negative_class) for f in files]


# --- selecting hard negatives (pure) ---------------------------------------------------------


def rank_false_positives(
    probs: np.ndarray, classes: Sequence[str], negative_class: str, ids: Sequence
) -> pd.DataFrame:
    """Negative images predicted as a positive class, most confident first.

    Parameters
    ----------
    probs : array (n_images, n_classes)
        Class probabilities of images that are all negatives; columns in ``classes`` order.
    classes : sequence of str
        Class names, including ``negative_class``.
    negative_class : str
        The class the images truly belong to.
    ids : sequence
        One identifier (e.g. a file path) per image.

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``predicted`` (class name) and ``confidence`` (probability of the
        predicted class, 0..1), sorted by decreasing confidence; ties keep the input order.
    """
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape != (len(ids), len(classes)):
        raise ValueError(
            f"probs must have shape (len(ids), len(classes)) = ({len(ids)}, {len(classes)}), "
            f"got {probs.shape}"
        )
    classes = list(classes)
    if negative_class not in classes:
        raise ValueError(f"'{negative_class}' is not one of the classes {classes}")
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    confidence = probs[np.arange(len(probs)), predicted]
    wrong = np.flatnonzero(predicted != classes.index(negative_class))
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    return pd.DataFrame(
        {
            "id": [ids[i] for i in order],
            "predicted": [classes[predicted[i]] for i in order],
            "confidence": confidence[order],
        }
    )


def select_hard_negatives(
    probs: np.ndarray, classes: Sequence[str], negative_class: str, ids: Sequence, n: int
) -> list:
    """The ``ids`` of the (at most) ``n`` negatives most confidently predicted as a positive class.

    See ``rank_false_positives`` for the inputs; correctly rejected images are never selected.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return rank_false_positives(probs, classes, negative_class, ids)["id"].head(n).tolist()


def count_false_positives(
    y_true: np.ndarray, y_score: np.ndarray, classes: Sequence[str], negative_class: str
) -> tuple[int, int]:
    """Negatives predicted as a positive class, and negatives in all.

    y_true : array (n_images,) of class indices; y_score : array (n_images, n_classes) of
    scores in ``classes`` order. Returns (false positives, negative images).
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    negative = list(classes).index(negative_class)
    is_negative = y_true == negative
    n_wrong = (
        int((y_score[is_negative].argmax(axis=1) != negative).sum()) if is_negative.any() else 0
    )
    return n_wrong, int(is_negative.sum())


# --- training and scoring --------------------------------------------------------------------


def train_classifier(
    path: str | Path,
    spec: ModelSpec | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
):
    """A new learner from the pretrained backbone, trained on ``path`` (train/ + valid/).

    Trains with the project's recipe through ``train.train(path, spec, config)``: every round
    starts afresh from the same pretrained weights and ``config.seed``, so two rounds differ
    only by their data. Returns the fastai Learner (``learn.spec`` holds the classes, the
    ``negative`` class among them); its ``TrainMetricsRecorder`` holds per-epoch accuracies.
    """
    from utils_cv.classification.train import train

    return train(path, spec, config, progress=progress)


def score_files(learn, files: Sequence[str | Path]) -> np.ndarray:
    """Class probabilities (n_files, n_classes), columns in ``learn.spec.classes`` order."""
    from utils_cv.classification.train import get_preds

    if not files:
        return np.zeros((0, len(learn.spec.classes)))
    with learn.no_bar():
        probs, _ = get_preds(learn, learn.dls.test_dl(list(files)))
    return probs


def show_false_positives(ranked: pd.DataFrame, n: int, cols: int = 5, size: float = 2.5):
    """Grid of the first ``n`` rows of ``rank_false_positives`` (``id`` = image path).

    Each image is titled with its predicted class and confidence in percent. Returns the
    matplotlib Figure, or None when there is nothing to show.
    """
    from utils_cv.common.plot import show_ims

    top = ranked.head(n)
    if top.empty:
        return None
    labels = [f"{p} {c:.1%}" for p, c in zip(top["predicted"], top["confidence"])]
    rows = -(-len(top) // cols)
    return show_ims(list(top["id"]), labels, size=size, rows=rows)
