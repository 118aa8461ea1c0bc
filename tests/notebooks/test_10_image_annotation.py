"""Notebook 10: reads a pre-written annotation file headless and makes training data."""

from __future__ import annotations

import pytest
from PIL import Image

from utils_cv.classification.widgets.annotation import read_annotations, write_annotations

NOTEBOOK = "10_image_annotation.ipynb"
LABELS = ["apple", "green apple", "citrus"]


@pytest.mark.notebooks
def test_10_image_annotation(run_notebook, tmp_path):
    im_dir = tmp_path / "images"
    im_dir.mkdir()
    for i, color in enumerate(("red", "green", "blue", "white")):
        Image.new("RGB", (32, 32), color).save(im_dir / f"im_{i}.jpg")
    anno_path = tmp_path / "annotations" / "annotations.tsv"
    write_annotations(
        anno_path,
        {
            "im_0.jpg": (False, ["apple"]),
            "im_1.jpg": (False, ["green apple", "apple"]),
            "im_2.jpg": (True, ["citrus"]),
        },
    )
    annos = read_annotations(anno_path)
    expected = int((~annos["EXCLUDE"]).sum())
    out_dir = tmp_path / "annotated_data"

    scraps = run_notebook(
        NOTEBOOK,
        {
            "IM_DIR": str(im_dir),
            "ANNO_PATH": str(anno_path),
            "LABELS": LABELS,
            "OUT_DIR": str(out_dir),
        },
    )

    assert scraps["num_images"] == expected == 2
    # Opening the widget headless changes nothing; im_1 has two labels -> multi-label data.
    assert read_annotations(anno_path).equals(annos)
    assert (out_dir / "labels.csv").read_text() == (
        "filename,labels\nim_0.jpg,apple\nim_1.jpg,green_apple apple\n"
    )


@pytest.mark.notebooks
def test_10_image_annotation_new_file(run_notebook, tmp_path):
    im_dir = tmp_path / "images"
    im_dir.mkdir()
    Image.new("RGB", (32, 32), "red").save(im_dir / "im_0.png")
    anno_path = tmp_path / "new" / "annotations.tsv"
    out_dir = tmp_path / "annotated_data"

    scraps = run_notebook(
        NOTEBOOK,
        {"IM_DIR": str(im_dir), "ANNO_PATH": str(anno_path), "OUT_DIR": str(out_dir)},
    )

    assert scraps["num_images"] == 0
    assert anno_path.read_text() == "IM_FILENAME\tEXCLUDE\tLABELS\n"
    assert out_dir.is_dir() and not any(out_dir.iterdir())
