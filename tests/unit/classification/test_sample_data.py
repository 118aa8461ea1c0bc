"""The committed sample data (utils_cv/classification/sample_data) and its generator script."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from utils_cv.classification.data import SAMPLE_DATA_DIR, sample_data_path

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "classification" / "tools" / "make_sample_data.py"
CLASSES = ["apple", "citrus", "flower", "tool"]
FRAME = (320, 240)
MAX_BYTES = 10_000_000
# set -> {split: images per class}
SINGLE_LABEL = {
    "objects": {"train": 30, "valid": 10},
    "objects_tiny": {"train": 4, "valid": 2},
}
MULTILABEL = {"objects_multilabel": 120, "objects_multilabel_tiny": 20}
NEGATIVES = {"negatives": 60, "negatives_tiny": 10}
ALL_SETS = [*SINGLE_LABEL, *MULTILABEL, *NEGATIVES]
DEBIAN_DATA = [Path("/usr/share/tuxpaint/stamps"), Path("/usr/share/backgrounds/mate/nature")]


def jpgs(folder: Path) -> list[Path]:
    """Sorted JPEG files under ``folder``."""
    return sorted(folder.rglob("*.jpg"))


def digest(path: Path) -> str:
    """SHA-256 of the file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sample_data_path_points_at_the_data():
    assert sample_data_path("objects") == SAMPLE_DATA_DIR / "objects"
    for name in ALL_SETS:
        assert sample_data_path(name).is_dir()


@pytest.mark.parametrize("name", list(SINGLE_LABEL))
def test_single_label_counts(name):
    root = sample_data_path(name)
    for split, per_class in SINGLE_LABEL[name].items():
        assert sorted(p.name for p in (root / split).iterdir()) == CLASSES
        for cls in CLASSES:
            files = jpgs(root / split / cls)
            assert len(files) == per_class, f"{name}/{split}/{cls}"
            assert all(f.name.startswith(f"{cls}_") for f in files)


@pytest.mark.parametrize("name", ALL_SETS)
def test_images_are_rgb_jpegs_of_one_size(name):
    files = jpgs(sample_data_path(name))
    assert files
    for path in files:
        with Image.open(path) as im:
            assert im.format == "JPEG", path
            assert im.mode == "RGB", path
            assert im.size == FRAME, path


@pytest.mark.parametrize("name", list(MULTILABEL))
def test_multilabel_labels_csv(name):
    root = sample_data_path(name)
    df = pd.read_csv(root / "labels.csv", dtype=str)
    assert list(df.columns) == ["filename", "labels", "is_valid"]
    assert len(df) == MULTILABEL[name]
    assert sorted(df["filename"]) == [p.name for p in jpgs(root / "images")]
    for labels in df["labels"].str.split(" "):
        assert 1 <= len(labels) <= 3
        assert labels == sorted(set(labels))
        assert set(labels) <= set(CLASSES)
    assert set(df["is_valid"]) == {"True", "False"}


def test_multilabel_reads_with_the_labels_module():
    from utils_cv.classification.labels import read_labels_csv

    df = read_labels_csv(sample_data_path("objects_multilabel") / "labels.csv")
    assert 0.2 <= df["is_valid"].mean() <= 0.3
    assert {label for labels in df["labels"] for label in labels} == set(CLASSES)


@pytest.mark.parametrize("name", list(NEGATIVES))
def test_negatives_exist(name):
    root = sample_data_path(name)
    assert len(jpgs(root)) == NEGATIVES[name]
    assert all(p.parent == root for p in jpgs(root))


def test_total_size_under_budget():
    size = sum(p.stat().st_size for p in SAMPLE_DATA_DIR.rglob("*") if p.is_file())
    assert size < MAX_BYTES, f"sample data is {size / 1e6:.1f} MB"


@pytest.mark.parametrize("name", list(SINGLE_LABEL))
def test_no_identical_files_in_train_and_valid(name):
    root = sample_data_path(name)
    train = {digest(p) for p in jpgs(root / "train")}
    valid = {digest(p) for p in jpgs(root / "valid")}
    assert not train & valid


@pytest.mark.parametrize("name", list(MULTILABEL))
def test_no_identical_files_in_multilabel_train_and_valid(name):
    root = sample_data_path(name)
    df = pd.read_csv(root / "labels.csv", dtype=str)
    hashes = {row.filename: digest(root / "images" / row.filename) for row in df.itertuples()}
    train = {hashes[f] for f, v in zip(df["filename"], df["is_valid"]) if v == "False"}
    valid = {hashes[f] for f, v in zip(df["filename"], df["is_valid"]) if v == "True"}
    assert len(train) + len(valid) == len(df)
    assert not train & valid


def test_no_negative_is_a_copy_of_a_positive():
    positives = {digest(p) for n in [*SINGLE_LABEL, *MULTILABEL] for p in jpgs(sample_data_path(n))}
    assert not positives & {digest(p) for p in jpgs(sample_data_path("negatives"))}


def test_readme_present():
    text = (SAMPLE_DATA_DIR / "README.md").read_text()
    for word in [*CLASSES, "GPL-2.0-or-later", "make_sample_data.py", "apt-get install"]:
        assert word in text


def run_generator(out: Path, *sets: str) -> None:
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--only", *sets],
        check=True,
        capture_output=True,
    )


def tree_bytes(root: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generator_help():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "--only" in out and "--seed" in out and "--out" in out


@pytest.mark.skipif(
    not all(d.is_dir() for d in DEBIAN_DATA),
    reason="needs: apt-get install tuxpaint-stamps-default mate-backgrounds",
)
def test_generator_is_deterministic(tmp_path):
    sets = ["objects_tiny", "objects_multilabel_tiny", "negatives_tiny"]
    (tmp_path / "a" / "objects_tiny").mkdir(parents=True)
    (tmp_path / "a" / "objects_tiny" / "stale.jpg").write_bytes(b"old")
    (tmp_path / "a" / "keep.txt").write_text("not the generator's")
    run_generator(tmp_path / "a", *sets)
    run_generator(tmp_path / "b", *sets)
    assert (tmp_path / "a" / "keep.txt").read_text() == "not the generator's"  # left alone
    (tmp_path / "a" / "keep.txt").unlink()
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert sorted({k.split("/")[0] for k in a}) == sorted(sets)
    assert a == b
    for name in sets:  # same layout as the committed sets
        assert sorted(k for k in a if k.startswith(name + "/")) == sorted(
            f"{name}/{k}" for k in tree_bytes(sample_data_path(name))
        )
