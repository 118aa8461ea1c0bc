"""The evaluation-set builder (classification/tools/make_eval_sets.py) run for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
TOOLS = REPO / "classification" / "tools"
SCRIPT = TOOLS / "make_eval_sets.py"
DEBIAN_DATA = [Path("/usr/share/tuxpaint/stamps"), Path("/usr/share/backgrounds/mate/nature")]
needs_debian_data = pytest.mark.skipif(
    not all(d.is_dir() for d in DEBIAN_DATA),
    reason="needs: apt-get install tuxpaint-stamps-default mate-backgrounds",
)


@pytest.fixture(scope="module")
def eval_sets():
    sys.path.insert(0, str(TOOLS))
    try:
        import make_eval_sets
    finally:
        sys.path.remove(str(TOOLS))
    return make_eval_sets


def test_help_lists_the_sets():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "--only" in out and "--out" in out and "--seed" in out


@needs_debian_data
@pytest.mark.parametrize(
    "name", ["animals_photo", "animals_busy", "objects_small_gray", "objects_large"]
)
def test_validation_objects_are_never_seen_in_training(eval_sets, name):
    spec = eval_sets.EVAL_SETS[name]
    items = eval_sets.plan(name, spec)
    for cls in spec.classes:
        train = {s for i in items if i.labels == [cls] and not i.is_valid for s in i.stamps}
        valid = {s for i in items if i.labels == [cls] and i.is_valid for s in i.stamps}
        assert train and valid and not train & valid
    n_valid = sum(i.is_valid for i in items)
    assert n_valid == spec.per_class["valid"] * len(spec.classes)
    assert len({i.path for i in items}) == len(items)  # unique file names


@needs_debian_data
def test_builds_small_grayscale_set_and_leaves_other_files(tmp_path, eval_sets):
    (tmp_path / "notes.txt").write_text("mine")
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", "objects_small_gray"],
        check=True,
        capture_output=True,
    )
    spec = eval_sets.EVAL_SETS["objects_small_gray"]
    folder = tmp_path / "objects_small_gray"
    for split, per_class in spec.per_class.items():
        for cls in spec.classes:
            files = sorted((folder / split / cls).glob("*.jpg"))
            assert len(files) == per_class
    with Image.open(next(folder.rglob("*.jpg"))) as im:
        assert im.size == eval_sets.SMALL_SIZE and im.mode == "L"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert eval_sets.eval_set_path("objects_small_gray", tmp_path) == folder
    with pytest.raises(SystemExit, match="make_eval_sets.py --out"):
        eval_sets.eval_set_path("animals_busy", tmp_path)


@needs_debian_data
@pytest.mark.parametrize("name", ["objects_multilabel_other", "animals_multilabel"])
def test_multilabel_plan_holds_out_objects(eval_sets, name):
    spec = eval_sets.EVAL_SETS[name]
    items = eval_sets.plan(name, spec)
    assert len(items) == spec.per_class["train"] + spec.per_class["valid"]
    assert sum(i.is_valid for i in items) == spec.per_class["valid"]
    for item in items:
        assert 1 <= len(item.labels) <= 3 and item.labels == sorted(set(item.labels))
        assert len(item.stamps) == len(item.labels)
    train = {s for i in items if not i.is_valid for s in i.stamps}
    valid = {s for i in items if i.is_valid for s in i.stamps}
    assert train and valid and not train & valid
    assert {c for i in items if i.is_valid for c in i.labels} == set(spec.classes)


@needs_debian_data
def test_builds_multilabel_set_with_labels_csv(tmp_path, eval_sets):
    import pandas as pd

    from utils_cv.classification.data import is_data_multilabel

    name = "animals_multilabel"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", name],
        check=True,
        capture_output=True,
    )
    spec = eval_sets.EVAL_SETS[name]
    folder = eval_sets.eval_set_path(name, tmp_path)
    df = pd.read_csv(folder / "labels.csv")
    assert list(df.columns) == ["filename", "labels", "is_valid"]
    assert len(df) == spec.per_class["train"] + spec.per_class["valid"]
    assert df["is_valid"].sum() == spec.per_class["valid"]
    assert all((folder / "images" / f).is_file() for f in df["filename"])
    assert set(" ".join(df["labels"]).split()) == set(spec.classes)
    assert is_data_multilabel(folder)
