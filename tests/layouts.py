"""Build the data layouts users bring, from the shipped tiny sample sets, for the layout matrix.

Usage (``tests/`` is on ``sys.path`` under pytest)::

    from layouts import LAYOUTS, make_layout

    root = make_layout("labels_multi", tmp_path / "data")

Layouts:
- ``class_folders``: one folder per class, no split (the loaders hold out a share).
- ``train_valid``: ``train/`` and ``valid/``, each with class folders.
- ``labels_single``: ``images/`` + ``labels.csv`` with one label per image and ``is_valid``;
  file names relative to ``images/``.
- ``labels_multi``: ``images/`` + ``labels.csv`` with several labels per image; file names
  relative to the data folder (``images/x.jpg``), as many annotation tools export them.
- ``odd_names``: ``train/`` + ``valid/`` class folders and file names with spaces, upper-case
  extensions, non-ASCII letters and mixed formats (JPEG, PNG, WebP).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from PIL import Image

from utils_cv.classification.data import sample_data_path

LAYOUTS = ("class_folders", "train_valid", "labels_single", "labels_multi", "odd_names")
SINGLE_LABEL_LAYOUTS = tuple(name for name in LAYOUTS if name != "labels_multi")
# class names with a space and non-ASCII letters, for the odd_names layout
ODD_CLASSES = {
    "apple": "äpfel rot",
    "citrus": "citrus fruit",
    "flower": "flor ñ",
    "tool": "Werkzeug",
}
ODD_FORMATS = (("JPG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP"), ("jpeg", "JPEG"))


def _single_label_images() -> list[tuple[Path, str, str]]:
    """(file, class, split) of every image in the tiny single-label sample set."""
    root = sample_data_path("objects_tiny")
    return [
        (file, file.parent.name, file.parents[1].name) for file in sorted(root.glob("*/*/*.jpg"))
    ]


def _write_labels_csv(path: Path, rows: list[tuple[str, str, bool]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "labels", "is_valid"])
        for name, labels, is_valid in rows:
            writer.writerow([name, labels, str(is_valid)])


def make_layout(name: str, root: Path) -> Path:
    """Write the data set ``name`` (one of LAYOUTS) into the new folder ``root``; return it."""
    if name not in LAYOUTS:
        raise ValueError(f"Unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}.")
    root.mkdir(parents=True)
    if name == "labels_multi":
        source = sample_data_path("objects_multilabel_tiny")
        shutil.copytree(source / "images", root / "images")
        with open(source / "labels.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        _write_labels_csv(
            root / "labels.csv",
            [(f"images/{r['filename']}", r["labels"], r["is_valid"] == "True") for r in rows],
        )
        return root
    rows = []
    for i, (file, label, split) in enumerate(_single_label_images()):
        if name == "class_folders":
            target = root / label / file.name
        elif name == "train_valid":
            target = root / split / label / file.name
        elif name == "labels_single":
            target = root / "images" / f"{split}_{file.name}"
            rows.append((target.name, label, split == "valid"))
        else:  # odd_names
            ext, fmt = ODD_FORMATS[i % len(ODD_FORMATS)]
            target = root / split / ODD_CLASSES[label] / f"Bild {i:02d} é.{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "odd_names":
            with Image.open(file) as im:
                im.convert("RGB").save(target, format=fmt)
        else:
            shutil.copyfile(file, target)
    if rows:
        _write_labels_csv(root / "labels.csv", rows)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``root``, keyed by relative path: to assert that
    nothing in a data folder was changed, added or removed."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_small_gray(
    root: Path, size: int = 28, n_train: int = 50, n_valid: int = 20, source: str = "objects"
) -> Path:
    """An MNIST-sized set: the shipped ``source`` set (train/ + valid/ class folders) shrunk to
    ``size`` x ``size`` greyscale PNGs, ``n_train`` / ``n_valid`` images per class.

    Each source image gives two images (the whole frame, and a mirrored 80 % centre crop); the
    train and valid images come from the source's own train and valid images, so the same
    object is never in both. Raises ValueError when the source has too few images.
    """
    from PIL import ImageOps

    src = sample_data_path(source)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for class_dir in sorted((src / split).iterdir()):
            files = sorted(class_dir.glob("*.jpg"))
            if 2 * len(files) < n:
                raise ValueError(f"{class_dir} has {len(files)} images; {n} need {n // 2 + 1}")
            out = root / split / class_dir.name
            out.mkdir(parents=True)
            for variant in range(2):
                for file in files:
                    if len(list(out.iterdir())) >= n:
                        break
                    with Image.open(file) as im:
                        im = im.convert("L")
                        if variant:
                            w, h = im.size
                            box = (w // 10, h // 10, w - w // 10, h - h // 10)
                            im = ImageOps.mirror(im.crop(box))
                        im.resize((size, size), Image.LANCZOS).save(
                            out / f"{file.stem}_{variant}.png"
                        )
    return root
