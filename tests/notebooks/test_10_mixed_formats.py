"""Notebook 10 on a flat folder of unlabelled images of mixed formats and sizes: labels ticked
in the annotation widget become a data set that the training notebooks take as it is."""

from __future__ import annotations

import pytest
from layouts import snapshot
from PIL import Image

from utils_cv.classification.data import get_image_files, sample_data_path
from utils_cv.classification.saved import read_spec
from utils_cv.classification.widgets.annotation import AnnotationWidget, read_annotations

# (format, extension, size) cycled over the images: every format users export, small and
# large images, landscape and portrait, colour and greyscale.
FORMATS = (
    ("JPEG", ".jpg", (640, 480), "RGB"),
    ("PNG", ".png", (90, 120), "RGBA"),
    ("WEBP", ".webp", (300, 200), "RGB"),
    ("BMP", ".bmp", (48, 40), "RGB"),
    ("TIFF", ".tiff", (1200, 900), "L"),
    ("JPEG", ".JPEG", (200, 300), "L"),
)
CLASSES = ("apple", "citrus", "flower", "tool")


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """A flat folder of the 24 tiny sample images in mixed formats and sizes, and their
    classes by file name."""
    root = tmp_path_factory.mktemp("unlabelled")
    truth = {}
    sources = sorted(sample_data_path("objects_tiny").glob("*/*/*.jpg"))
    for i, source in enumerate(sources):
        fmt, ext, size, mode = FORMATS[i % len(FORMATS)]
        name = f"photo {i:02d}{ext}"
        with Image.open(source) as im:
            im.convert(mode).resize(size).save(root / name, format=fmt)
        truth[name] = source.parent.name
    return root, truth


def annotate(im_dir, anno_path, truth, extra_label=None):
    """Tick each image's class in the widget (plus ``extra_label`` on every third image) and
    click Next, as a user would."""
    labels = [*CLASSES, extra_label] if extra_label else list(CLASSES)
    widget = AnnotationWidget(labels, im_dir, anno_path)
    assert sorted(widget.im_filenames) == sorted(truth)
    for i, name in enumerate(widget.im_filenames):
        assert widget.im_filename == name and widget.image.value  # every format is shown
        widget.label_checkboxes[truth[name]].value = True
        if extra_label and i % 3 == 0:
            widget.label_checkboxes[extra_label].value = True
        widget.next()
    annos = read_annotations(anno_path)
    assert len(annos) == len(truth) and not annos["EXCLUDE"].any()


@pytest.mark.notebooks
def test_single_label_annotations_train_in_notebook_01(unlabelled, run_notebook, tmp_path):
    im_dir, truth = unlabelled
    before = snapshot(im_dir)
    anno_path = tmp_path / "annotations.tsv"
    annotate(im_dir, anno_path, truth)
    out_dir = tmp_path / "annotated"
    scraps = run_notebook(
        "10_image_annotation.ipynb",
        {
            "IM_DIR": str(im_dir),
            "ANNO_PATH": str(anno_path),
            "LABELS": list(CLASSES),
            "OUT_DIR": str(out_dir),
        },
    )
    assert scraps["num_images"] == 24
    assert {p.parent.name for p in get_image_files(out_dir)} == set(CLASSES)
    for path in get_image_files(out_dir):
        assert truth[path.name] == path.parent.name

    scraps = run_notebook(
        "01_training_introduction.ipynb",
        {
            "DATA_PATH": str(out_dir),
            "IM_SIZE": 64,
            "EPOCHS_HEAD": 1,
            "EPOCHS": 0,
            "BATCH_SIZE": 4,
            "OUTPUT_DIR": str(tmp_path / "model_01"),
        },
    )
    assert scraps["num_images_used"] == 24
    assert set(read_spec(scraps["model_dir"])[0].classes) == set(CLASSES)
    assert snapshot(im_dir) == before


@pytest.mark.notebooks
def test_multilabel_annotations_train_in_notebook_02(unlabelled, run_notebook, tmp_path):
    im_dir, truth = unlabelled
    before = snapshot(im_dir)
    anno_path = tmp_path / "annotations.tsv"
    annotate(im_dir, anno_path, truth, extra_label="on table")
    out_dir = tmp_path / "annotated"
    run_notebook(
        "10_image_annotation.ipynb",
        {"IM_DIR": str(im_dir), "ANNO_PATH": str(anno_path), "OUT_DIR": str(out_dir)},
    )
    assert len(get_image_files(out_dir / "images")) == 24
    scraps = run_notebook(
        "02_multilabel_classification.ipynb",
        {
            "DATA_PATH": str(out_dir),
            "IM_SIZE": 64,
            "EPOCHS_HEAD": 1,
            "EPOCHS": 0,
            "BATCH_SIZE": 4,
            "OUTPUT_DIR": str(tmp_path / "model_02"),
        },
    )
    assert 0 <= scraps["acc_hl"] <= 1 and 0 <= scraps["acc_zol"] <= 1
    assert snapshot(im_dir) == before
