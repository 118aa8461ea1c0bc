"""AnnotationWidget driven programmatically, the annotation file, and its conversion helpers."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import pytest
from PIL import Image
from widget_html import html_texts

from utils_cv.classification.labels import read_labels_csv
from utils_cv.classification.widgets.annotation import (
    AnnotationWidget,
    annotations_to_class_folders,
    annotations_to_labels_csv,
    check_labels,
    image_bytes,
    read_annotations,
    write_annotations,
)

LABELS = ["apple", "green apple", "citrus"]
HEADER = "IM_FILENAME\tEXCLUDE\tLABELS\n"


@pytest.fixture
def im_dir(tmp_path) -> Path:
    """Folder of three small images a.jpg, b.png, c.jpg."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, color in (("a.jpg", "red"), ("b.png", "green"), ("c.jpg", "blue")):
        Image.new("RGB", (32, 24), color).save(folder / name)
    return folder


@pytest.fixture
def anno_path(tmp_path) -> Path:
    return tmp_path / "annos" / "annotations.tsv"


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --- labels ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, match",
    [
        (["a,b"], "comma"),
        (["a\tb"], "tab"),
        (["a\nb"], "newline"),
        ([""], "non-empty"),
        ([" apple"], "leading or trailing"),
        (["apple", "apple"], "Duplicate"),
        ([], "at least one"),
        ("apple", "list"),
    ],
)
def test_check_labels_refuses(labels, match):
    with pytest.raises(ValueError, match=match):
        check_labels(labels)


def test_widget_refuses_label_with_comma(im_dir, anno_path):
    with pytest.raises(ValueError, match="comma"):
        AnnotationWidget(["apple", "pear,plum"], im_dir, anno_path)
    assert not anno_path.exists()


# --- driving the widget --------------------------------------------------------------


def test_new_widget_writes_header_and_starts_at_first_image(im_dir, anno_path):
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    assert text(anno_path) == HEADER
    assert widget.im_filenames == ["a.jpg", "b.png", "c.jpg"]
    assert (widget.index, widget.im_filename) == (0, "a.jpg")
    assert widget.info_label.value.startswith("1 / 3: a.jpg")
    assert widget.image.value == (im_dir / "a.jpg").read_bytes()
    assert list(widget.label_checkboxes) == LABELS
    assert widget.show() is widget.box


def test_every_change_is_written_at_once(im_dir, anno_path):
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    widget.label_checkboxes["citrus"].value = True
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tcitrus\n"
    widget.label_checkboxes["apple"].value = True
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple,citrus\n"
    widget.label_checkboxes["citrus"].value = False
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple\n"
    widget.exclude_checkbox.value = True
    assert text(anno_path) == HEADER + "a.jpg\tTrue\tapple\n"
    widget.exclude_checkbox.value = False
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple\n"


def test_navigation(im_dir, anno_path):
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    widget.label_checkboxes["apple"].value = True
    widget.next_button.click()
    assert (widget.index, widget.im_filename) == (1, "b.png")
    assert not any(box.value for box in widget.label_checkboxes.values())
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple\n"

    # Leaving an image with "next" records it, even without labels.
    widget.next_button.click()
    assert widget.im_filename == "c.jpg"
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple\nb.png\tFalse\t\n"

    # "Previous" only navigates; the stored annotation is shown again.
    widget.previous_button.click()
    widget.previous_button.click()
    assert widget.im_filename == "a.jpg"
    assert widget.label_checkboxes["apple"].value
    assert widget.previous_button.disabled
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple\nb.png\tFalse\t\n"
    widget.previous_button.click()
    assert widget.index == 0

    # Rows stay in image order whatever order they were annotated in.
    widget.go_to(2)
    widget.exclude_checkbox.value = True
    widget.go_to(1)
    widget.label_checkboxes["citrus"].value = True
    assert text(anno_path) == (
        HEADER + "a.jpg\tFalse\tapple\nb.png\tFalse\tcitrus\nc.jpg\tTrue\t\n"
    )

    # "Next" on the last image records it and stays there.
    widget.go_to(2)
    widget.next_button.click()
    assert widget.index == 2
    assert text(anno_path).endswith("c.jpg\tTrue\t\n")


def test_resume_starts_at_first_image_without_annotation(im_dir, anno_path):
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    widget.label_checkboxes["apple"].value = True
    widget.next_button.click()
    saved = text(anno_path)

    resumed = AnnotationWidget(LABELS, im_dir, anno_path)
    assert resumed.im_filename == "b.png"
    assert text(anno_path) == saved
    resumed.previous_button.click()
    assert resumed.label_checkboxes["apple"].value
    resumed.label_checkboxes["citrus"].value = True
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple,citrus\n"


def test_resume_when_all_annotated_shows_last_image(im_dir, anno_path):
    write_annotations(
        anno_path, {"a.jpg": (False, ["apple"]), "b.png": (True, []), "c.jpg": (False, [])}
    )
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    assert widget.im_filename == "c.jpg"
    widget.previous_button.click()
    assert widget.exclude_checkbox.value


def test_label_with_spaces_round_trips(im_dir, anno_path):
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    widget.label_checkboxes["green apple"].value = True
    widget.label_checkboxes["citrus"].value = True
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tgreen apple,citrus\n"
    assert read_annotations(anno_path)["LABELS"].tolist() == [["green apple", "citrus"]]

    resumed = AnnotationWidget(LABELS, im_dir, anno_path)
    resumed.go_to(0)
    assert resumed.label_checkboxes["green apple"].value
    assert not resumed.label_checkboxes["apple"].value


def test_rows_of_missing_images_and_unknown_labels_are_kept(im_dir, anno_path):
    write_annotations(
        anno_path, {"gone.jpg": (False, ["apple"]), "a.jpg": (False, ["pear", "apple"])}
    )
    with pytest.warns(UserWarning) as record:
        widget = AnnotationWidget(LABELS, im_dir, anno_path)
    messages = " ".join(str(w.message) for w in record)
    assert "gone.jpg" in messages and "pear" in messages
    widget.go_to(0)
    widget.label_checkboxes["citrus"].value = True
    assert text(anno_path) == (HEADER + "a.jpg\tFalse\tapple,citrus,pear\ngone.jpg\tFalse\tapple\n")


def test_im_filenames_restricts_and_orders(im_dir, anno_path):
    widget = AnnotationWidget(LABELS, im_dir, anno_path, im_filenames=["c.jpg", "a.jpg"])
    assert widget.im_filename == "c.jpg"
    widget.next_button.click()
    assert text(anno_path) == HEADER + "c.jpg\tFalse\t\n"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        AnnotationWidget(LABELS, im_dir, anno_path, im_filenames=["nope.jpg"])


def test_unreadable_image_keeps_widget_usable(im_dir, anno_path):
    (im_dir / "b.png").write_bytes(b"not an image")
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    widget.next_button.click()
    assert "cannot show image" in widget.info_label.value
    widget.label_checkboxes["apple"].value = True
    assert text(anno_path).endswith("b.png\tFalse\tapple\n")


# --- the file ------------------------------------------------------------------------


def test_write_is_atomic(anno_path, monkeypatch):
    write_annotations(anno_path, {"a.jpg": (False, ["apple"])})
    before = text(anno_path)

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_annotations(anno_path, {"a.jpg": (True, [])})
    assert text(anno_path) == before
    assert [p.name for p in anno_path.parent.iterdir()] == [anno_path.name]


def test_read_annotations(anno_path):
    anno_path.parent.mkdir()
    anno_path.write_text(HEADER + "a.jpg\ttrue\tapple,green apple\nb 1.png\tFalse\t\n")
    df = read_annotations(anno_path)
    assert df["IM_FILENAME"].tolist() == ["a.jpg", "b 1.png"]
    assert df["EXCLUDE"].tolist() == [True, False]
    assert df["LABELS"].tolist() == [["apple", "green apple"], []]

    anno_path.write_text("filename\tlabels\na.jpg\tapple\n")
    with pytest.raises(ValueError, match="missing column"):
        read_annotations(anno_path)
    anno_path.write_text(HEADER + "a.jpg\tmaybe\t\n")
    with pytest.raises(ValueError, match="row 2"):
        read_annotations(anno_path)


def test_image_bytes_downscales_large_images(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (1200, 600), "red").save(big)
    value, fmt = image_bytes(big, max_dim=300)
    assert fmt == "jpeg"
    assert Image.open(io.BytesIO(value)).size == (300, 150)

    tif = tmp_path / "small.tif"
    Image.new("RGB", (20, 10), "red").save(tif)
    assert image_bytes(tif)[1] == "jpeg"
    assert big.stat().st_size > 0  # original untouched


# --- conversions ---------------------------------------------------------------------


@pytest.fixture
def annotated(im_dir, tmp_path):
    """Annotation file: a single-label, b excluded, c two labels, d no label, gone missing."""
    Image.new("RGB", (16, 16), "white").save(im_dir / "d.jpg")
    path = tmp_path / "annotations.tsv"
    write_annotations(
        path,
        {
            "a.jpg": (False, ["green apple"]),
            "b.png": (True, ["citrus"]),
            "c.jpg": (False, ["apple", "green apple"]),
            "d.jpg": (False, []),
            "gone.jpg": (False, ["citrus"]),
        },
    )
    return path


def test_annotations_to_class_folders(annotated, im_dir, tmp_path):
    before = hashes(im_dir)
    out_dir = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        assert annotations_to_class_folders(annotated, im_dir, out_dir) == out_dir
    message = str(record[0].message)
    for reason in ("1 excluded", "1 with several labels", "1 with no label", "1 missing"):
        assert reason in message
    assert sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*.*")) == [
        "green apple/a.jpg"
    ]
    assert (out_dir / "green apple" / "a.jpg").read_bytes() == (im_dir / "a.jpg").read_bytes()
    assert hashes(im_dir) == before

    with pytest.raises(FileExistsError, match="overwrite"):
        annotations_to_class_folders(annotated, im_dir, out_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        annotations_to_class_folders(annotated, im_dir, out_dir, overwrite=True)
    write_annotations(annotated, {"a.jpg": (False, ["a/b"]), "d.jpg": (False, ["citrus"])})
    with pytest.warns(UserWarning, match="1 with a label that cannot be a folder name"):
        annotations_to_class_folders(annotated, im_dir, out_dir, overwrite=True)
    assert [p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.*")] == ["citrus/d.jpg"]
    with pytest.raises(ValueError, match="never changed"):
        annotations_to_class_folders(annotated, im_dir, im_dir, overwrite=True)
    assert hashes(im_dir) == before


def test_annotations_to_labels_csv(annotated, im_dir, tmp_path):
    before = hashes(im_dir)
    out_dir = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        annotations_to_labels_csv(annotated, im_dir, out_dir)
    messages = [str(w.message) for w in record]
    assert any("'green apple' -> 'green_apple'" in m for m in messages)
    assert any("1 excluded" in m and "1 with no label" in m for m in messages)
    assert text(out_dir / "labels.csv") == (
        "filename,labels\na.jpg,green_apple\nc.jpg,apple green_apple\n"
    )
    assert sorted(p.name for p in (out_dir / "images").iterdir()) == ["a.jpg", "c.jpg"]
    df = read_labels_csv(out_dir / "labels.csv")
    assert df["labels"].tolist() == [["green_apple"], ["apple", "green_apple"]]
    assert hashes(im_dir) == before


# --- hostile names, file modes, the caption --------------------------------------------------

IMG_TAG = "<img src=x onerror=alert(1)>"


def test_widget_renders_hostile_names_as_text(tmp_path, anno_path):
    import ipywidgets

    im_dir = tmp_path / "hostile"
    im_dir.mkdir()
    Image.new("RGB", (8, 8), "red").save(im_dir / f"{IMG_TAG}.jpg")
    (im_dir / "<b>x.png").write_bytes(b"not an image")  # error message names the file
    labels = [IMG_TAG, "<b>bold</b>", "a&b"]
    widget = AnnotationWidget(labels, im_dir, anno_path)
    seen = []
    for _ in range(2):
        widget.label_checkboxes[IMG_TAG].value = True
        for text in html_texts(widget.show()):
            assert "<img" not in text and "<b>bold" not in text and "<b>x" not in text
        # The caption is a Label (rendered as text), checkbox descriptions are text.
        assert isinstance(widget.info_label, ipywidgets.Label)
        assert not any(box.description_allow_html for box in widget.label_checkboxes.values())
        seen.append(widget.info_label.value)
        widget.next_button.click()
    assert [box.description for box in widget.label_checkboxes.values()] == labels
    assert f"{IMG_TAG}.jpg" in seen[1] and "<b>x.png" in seen[0]
    assert "cannot show image" in seen[0]
    assert read_annotations(anno_path)["LABELS"].tolist() == [[IMG_TAG], [IMG_TAG]]


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one is restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_annotation_file_is_created_with_the_umask(im_dir, anno_path, umask, mask, expected):
    umask(mask)
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    assert mode(anno_path) == expected
    widget.label_checkboxes["apple"].value = True  # rewritten through a temporary file
    assert mode(anno_path) == expected
    widget.next_button.click()
    assert mode(anno_path) == expected
    assert [p.name for p in anno_path.parent.iterdir()] == [anno_path.name]  # no leftovers
    write_annotations(anno_path, {"a.jpg": (False, [])})
    assert mode(anno_path) == expected


def test_training_data_is_created_with_the_umask(annotated, im_dir, tmp_path, umask):
    umask(0o022)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csv_dir = annotations_to_labels_csv(annotated, im_dir, tmp_path / "csv")
        class_dir = annotations_to_class_folders(annotated, im_dir, tmp_path / "folders")
    assert mode(csv_dir / "labels.csv") == 0o644
    assert mode(csv_dir / "images") == mode(class_dir / "green apple") == 0o755
    assert mode(csv_dir / "images" / "a.jpg") == mode(class_dir / "green apple" / "a.jpg") == 0o644


def test_caption_shows_the_saved_state_at_once(im_dir, anno_path):
    widget = AnnotationWidget(LABELS, im_dir, anno_path)
    assert widget.info_label.value == "1 / 3: a.jpg (not annotated yet)"
    widget.label_checkboxes["citrus"].value = True  # what a click in the browser does
    assert "a.jpg\tFalse\tcitrus" in text(anno_path)
    assert widget.info_label.value == "1 / 3: a.jpg (annotated: citrus)"
    widget.label_checkboxes["green apple"].value = True
    assert widget.info_label.value == "1 / 3: a.jpg (annotated: green apple, citrus)"
    widget.label_checkboxes["green apple"].value = False
    widget.label_checkboxes["citrus"].value = False
    assert widget.info_label.value == "1 / 3: a.jpg (annotated: no label)"
    widget.exclude_checkbox.value = True
    assert widget.info_label.value == "1 / 3: a.jpg (annotated: excluded)"
    widget.next_button.click()
    assert widget.info_label.value == "2 / 3: b.png (not annotated yet)"
    widget.previous_button.click()
    assert widget.info_label.value == "1 / 3: a.jpg (annotated: excluded)"


def test_caption_says_when_a_change_is_not_saved(im_dir, anno_path, monkeypatch):
    widget = AnnotationWidget(LABELS, im_dir, anno_path)

    def full(src, dst):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        widget.label_checkboxes["apple"].value = True
    assert "NOT SAVED" in widget.info_label.value
    assert "No space left on device" in widget.info_label.value
    assert text(anno_path) == HEADER
    monkeypatch.undo()
    widget.label_checkboxes["citrus"].value = True  # the next save writes both
    assert widget.info_label.value == "1 / 3: a.jpg (annotated: apple, citrus)"
    assert text(anno_path) == HEADER + "a.jpg\tFalse\tapple,citrus\n"
