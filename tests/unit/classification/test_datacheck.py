"""check_dataset on messy datasets built on the fly: every bad case is found, by path and
reason; the data folder is never changed; unusable datasets stop with one clear sentence."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest
from messy_data import CLASS_FOLDERS, TRAIN_VALID, encode, make_messy_dataset, make_source_dataset
from PIL import Image

from utils_cv.classification.data import SAMPLE_DATA_DIR
from utils_cv.classification.datacheck import (
    ISSUE_COLUMNS,
    ISSUES_CSV,
    DataError,
    DataReport,
    check_dataset,
    detect_layout,
)


def tree_digest(folder: Path) -> str:
    """sha1 over every entry's relative path, type, size, mtime and content."""
    digest = hashlib.sha1()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(root, name)
            stat = path.lstat()
            digest.update(f"{path.relative_to(folder)}|{stat.st_mode}|{stat.st_mtime_ns}".encode())
            if path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The shipped sample set when it is there, else tiles of scikit-image photos."""
    sample = SAMPLE_DATA_DIR / "objects"
    if sample.is_dir():
        return sample
    return make_source_dataset(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module", params=[CLASS_FOLDERS, TRAIN_VALID])
def messy(request, source, tmp_path_factory):
    """(expected, report, digest before, out_dir) for a messy dataset of each layout."""
    base = tmp_path_factory.mktemp(request.param)
    expected = make_messy_dataset(base / "data", source, request.param)
    before = tree_digest(expected["root"])
    report = check_dataset(expected["root"], out_dir=base / "out", progress=False)
    return expected, report, before, base / "out"


def excluded(report: DataReport) -> dict[Path, str]:
    return {Path(p): r for p, r in zip(report.excluded["path"], report.excluded["reason"])}


def flagged(report: DataReport) -> set[tuple[Path, str]]:
    return {(Path(p), r) for p, r in zip(report.warnings["path"], report.warnings["reason"])}


# --- the messy dataset ---------------------------------------------------------------------------


def test_layout_is_detected(messy):
    expected, report, *_ = messy
    assert report.layout == expected["layout"] == detect_layout(expected["root"])


def test_good_files_are_exactly_the_expected_ones(messy):
    expected, report, *_ = messy
    assert report.good_files == expected["good_files"]
    assert all(p.is_absolute() for p in report.good_files)


def test_every_bad_file_is_left_out_with_its_reason(messy):
    expected, report, *_ = messy
    assert excluded(report) == expected["bad"]
    assert report.excluded["path"].is_unique  # one reason per file


def test_warnings(messy):
    expected, report, *_ = messy
    assert flagged(report) == expected["warnings"]


def test_every_reason_is_covered(messy):
    expected, report, *_ = messy
    reasons = set(report.issues["reason"])
    assert {
        "zero_bytes",
        "corrupt",
        "not_an_image",
        "unsupported_extension",
        "too_small",
        "decompression_bomb",
        "duplicate",
        "near_duplicate",
        "conflicting_labels",
        "misplaced",
        "empty_class",
        "single_image_class",
        "class_imbalance",
    } <= reasons
    if expected["layout"] == TRAIN_VALID:
        assert {"train_valid_duplicate", "train_valid_near_duplicate"} <= reasons
        assert "class_not_in_train" in reasons


def test_odd_but_readable_files_are_kept(messy):
    expected, report, *_ = messy
    names = {p.name for p in report.good_files}
    for name in ("cmyk.jpg", "gray16.png", "rgb16.png", "la.png", "palette_transparent.png"):
        assert name in names
    for name in ("exif_rotated.jpg", "png_named.jpg", "UPPER_CASE.JPG", "café_猫.jpg"):
        assert name in names


def test_hidden_files_are_skipped_silently(messy):
    expected, report, *_ = messy
    hidden = {str(p) for p in expected["hidden"]}
    assert not hidden & set(report.issues["path"])
    assert not hidden & {str(p) for p in report.good_files}
    assert report.n_hidden >= 5


def test_classes_and_counts(messy):
    expected, report, *_ = messy
    assert sorted(report.class_counts) == expected["classes"]
    assert report.n_classes == len(expected["classes"])
    assert report.class_counts["lonely"] == 1
    if expected["layout"] == TRAIN_VALID:
        assert sum(report.split_counts.values()) == len(report.good_files)
        assert sum(report.class_counts.values()) == report.split_counts["train"]
    else:
        assert report.split_counts == {}
        assert sum(report.class_counts.values()) == len(report.good_files)


def test_issues_frame(messy):
    _, report, *_ = messy
    assert list(report.issues.columns) == ISSUE_COLUMNS
    assert report.issues["detail"].str.len().min() > 10
    assert report.issues["excluded"].dtype == bool


def test_csv_is_written_in_out_dir(messy):
    _, report, _, out_dir = messy
    assert report.csv_path == out_dir.resolve() / ISSUES_CSV
    written = pd.read_csv(report.csv_path, keep_default_na=False)
    pd.testing.assert_frame_equal(written, report.issues)


def test_data_folder_is_not_changed(messy):
    expected, _, before, _ = messy
    assert tree_digest(expected["root"]) == before
    assert not (expected["root"] / ISSUES_CSV).exists()


def test_summary_and_html(messy, capsys):
    expected, report, *_ = messy
    text = report.summary()
    assert f"{report.n_files} files: {len(report.good_files)} good images" in text
    assert "decompression_bomb 1" in text and str(report.csv_path) in text
    assert "<table" in report._repr_html_() and "bomb.png" in report._repr_html_()
    report.show()
    assert "bomb.png" in capsys.readouterr().out
    assert repr(report) == text


def test_good_files_load_in_the_training_data_loader(messy):
    from utils_cv.classification.data import get_dls
    from utils_cv.classification.spec import ModelSpec

    expected, report, *_ = messy
    dls = get_dls(
        expected["root"],
        ModelSpec(im_size=32),
        batch_size=4,
        files=report.good_files,
        num_workers=0,
        device="cpu",
    )
    x, y = dls.one_batch()
    assert tuple(x.shape) == (4, 3, 32, 32)
    assert set(dls.vocab) == set(expected["classes"])


# --- options --------------------------------------------------------------------------------------


def test_near_duplicate_distance_zero_finds_exact_copies_only(messy, tmp_path):
    expected, *_ = messy
    report = check_dataset(expected["root"], near_duplicate_distance=0, progress=False)
    assert "near_duplicate" not in set(report.issues["reason"])
    assert report.csv_path is None


def test_imbalance_ratio(messy):
    expected, *_ = messy
    report = check_dataset(expected["root"], imbalance_ratio=1000, progress=False)
    assert "class_imbalance" not in set(report.issues["reason"])


def test_relative_path(messy, monkeypatch):
    expected, report, *_ = messy
    monkeypatch.chdir(expected["root"].parent)
    again = check_dataset(expected["root"].name, progress=False, workers=1)
    assert again.good_files == report.good_files


def test_out_dir_inside_the_data_folder_is_refused(messy):
    expected, *_ = messy
    for inside in (expected["root"], expected["root"] / "reports"):
        with pytest.raises(DataError, match="is inside the data folder"):
            check_dataset(expected["root"], out_dir=inside, progress=False)
    assert not (expected["root"] / "reports").exists()


# --- datasets that cannot be trained on --------------------------------------------------------


def one_sentence(error: DataError) -> str:
    message = str(error)
    assert "\n" not in message and message.endswith(".")
    assert error._render_traceback_() == [f"DataError: {message}"]
    return message


def photo(seed: int) -> Image.Image:
    from skimage import data

    a = data.astronaut()
    return Image.fromarray(a[seed * 60 : seed * 60 + 120, seed * 70 : seed * 70 + 120])


def test_folder_not_found(tmp_path):
    with pytest.raises(DataError, match="Data folder not found") as info:
        check_dataset(tmp_path / "nope")
    one_sentence(info.value)


def test_empty_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="No files found in") as info:
        check_dataset(tmp_path, progress=False)
    one_sentence(info.value)


def test_no_usable_image(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for cls in ("cat", "dog"):
        (data / cls).mkdir(parents=True)
        (data / cls / "empty.jpg").write_bytes(b"")
        (data / cls / "note.jpg").write_text("not an image")
    with pytest.raises(DataError, match="None of the 4 files in .* is a usable image") as info:
        check_dataset(data, out_dir=out, progress=False)
    one_sentence(info.value)
    assert len(info.value.report.issues) == 6  # 4 files + 2 empty classes
    assert (out / ISSUES_CSV).is_file()  # the reasons are still written


def test_only_one_class(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    for i in range(3):
        photo(i).save(tmp_path / "cat" / f"{i}.jpg")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match="Only one class \\('cat'\\) has usable") as info:
        check_dataset(tmp_path, progress=False)
    one_sentence(info.value)


def test_no_usable_validation_image(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "valid" / cls).mkdir(parents=True)
        for i in range(2):
            photo(i + (cls == "dog") * 2).save(tmp_path / "train" / cls / f"{i}.jpg")
    with pytest.raises(DataError, match="validation set .* has no usable image") as info:
        check_dataset(tmp_path, progress=False)
    one_sentence(info.value)


def test_all_too_small(messy, tmp_path):
    expected, *_ = messy
    with pytest.raises(DataError, match="is a usable image"):
        check_dataset(expected["root"], min_size=5000, progress=False)


# --- labels.csv layout --------------------------------------------------------------------------


@pytest.fixture
def csv_dataset(tmp_path):
    """images/ + labels.csv with bad rows, an unlisted file, a leak and multi-label rows."""
    root = tmp_path / "data"
    images = root / "images"
    images.mkdir(parents=True)
    good = {}
    for i in range(6):
        data = encode(photo(i), quality=90)
        (images / f"{i}.jpg").write_bytes(data)
        good[f"{i}.jpg"] = data
    (images / "leak_train.jpg").write_bytes(good["0.jpg"])  # same as a validation image
    (images / "broken.jpg").write_bytes(b"")
    (images / "unlisted.jpg").write_bytes(good["1.jpg"])
    (images / ".ipynb_checkpoints").mkdir()
    (images / ".ipynb_checkpoints" / "x.jpg").write_bytes(good["1.jpg"])
    (root / "labels.csv").write_text(
        "filename,labels,is_valid\n"
        "0.jpg,cat,True\n"
        "1.jpg,cat dog,False\n"
        "2.jpg,dog,False\n"
        "3.jpg,,False\n"
        "4.jpg,cat;dog,False\n"
        "5.jpg,bird dog,False\n"
        "missing.jpg,cat,False\n"
        "leak_train.jpg,cat,False\n"
        "broken.jpg,dog,False\n"
    )
    return root


def test_labels_csv_layout(csv_dataset, tmp_path):
    before = tree_digest(csv_dataset)
    report = check_dataset(csv_dataset, out_dir=tmp_path / "out", progress=False)
    images = csv_dataset / "images"
    assert report.layout == "labels_csv"
    assert report.good_files == [images / n for n in ("0.jpg", "1.jpg", "2.jpg", "5.jpg")]
    assert excluded(report) == {
        images / "3.jpg": "label_error",
        images / "4.jpg": "label_error",
        images / "missing.jpg": "label_error",
        images / "leak_train.jpg": "train_valid_duplicate",
        images / "broken.jpg": "zero_bytes",
        images / "unlisted.jpg": "unlabelled",
    }
    details = dict(zip(report.issues["path"], report.issues["detail"]))
    assert details[str(images / "3.jpg")].startswith("labels.csv line 5: empty label list")
    assert "separated by semicolons" in details[str(images / "4.jpg")]
    assert report.class_counts == {"bird": 1, "cat": 1, "dog": 3}
    assert report.split_counts == {"train": 3, "valid": 1}
    assert (images / "5.jpg", "single_image_class") in flagged(report)  # bird
    assert tree_digest(csv_dataset) == before


def test_labels_csv_unusable_header_is_one_sentence(tmp_path):
    (tmp_path / "labels.csv").write_text("filename;labels\na.jpg;cat\n")
    with pytest.raises(DataError, match="separated by semicolons") as info:
        check_dataset(tmp_path, progress=False)
    one_sentence(info.value)


def test_labels_csv_without_split_and_images_next_to_it(tmp_path):
    for i in range(4):
        photo(i).save(tmp_path / f"{i}.jpg")
    (tmp_path / "labels.csv").write_text(
        "filename,labels\n0.jpg,cat\n1.jpg,cat\n2.jpg,dog\n3.jpg,dog\n"
    )
    report = check_dataset(tmp_path, progress=False)
    assert len(report.good_files) == 4 and report.split_counts == {}
    assert report.issues.empty


# --- hostile folders: pipes, devices, links out, odd names ---------------------------------------


def _photo_folders(root: Path, source: Path, per_class: int = 3) -> Path:
    """root/<class>/ with ``per_class`` copies of real photos for two classes."""
    for cls in ("apple", "tool"):
        (root / cls).mkdir(parents=True)
        for f in sorted((source / "train" / cls).glob("*.jpg"))[:per_class]:
            (root / cls / f.name).write_bytes(f.read_bytes())
    return root


def test_pipes_devices_and_links_out_are_refused_without_reading(tmp_path, source):
    import threading

    data = _photo_folders(tmp_path / "data", source)
    os.mkfifo(data / "apple" / "pipe.jpg")
    (data / "tool" / "zero.jpg").symlink_to("/dev/zero")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 60, 0, 0)).save(outside / f"{i}.jpg")
    (data / "linked_class").symlink_to(outside)  # a class folder that is a link out
    (data / "apple" / "secret.jpg").symlink_to(outside / "0.jpg")
    (data / "tool" / "inside_link.jpg").symlink_to(
        data / "apple" / sorted(os.listdir(data / "apple"))[0]
    )
    before = tree_digest(data)
    result = []
    worker = threading.Thread(
        target=lambda: result.append(check_dataset(data, progress=False)), daemon=True
    )
    worker.start()
    worker.join(60)  # the old code blocked on the pipe, then read /dev/zero until memory ran out
    assert result, "check_dataset did not finish"
    report = result[0]
    reasons = excluded(report)
    assert reasons[data / "apple" / "pipe.jpg"] == "not_a_file"
    assert reasons[data / "tool" / "zero.jpg"] == "outside_data_folder"
    assert reasons[data / "linked_class"] == "outside_data_folder"
    assert reasons[data / "apple" / "secret.jpg"] == "outside_data_folder"
    assert all(str(outside) not in str(p) for p in report.good_files)
    assert set(report.class_counts) == {"apple", "tool"}
    # a link that stays inside the folder is a file like any other (here: a duplicate)
    assert reasons[data / "tool" / "inside_link.jpg"] == "conflicting_labels"
    assert tree_digest(data) == before
    followed = check_dataset(data, follow_links=True, progress=False)
    assert "linked_class" in followed.class_counts
    assert excluded(followed)[data / "tool" / "zero.jpg"] == "not_a_file"


def test_a_file_name_that_is_not_utf8_is_reported_and_trained_on(tmp_path, source):
    from utils_cv.classification.data import get_dls
    from utils_cv.classification.spec import ModelSpec

    data = _photo_folders(tmp_path / "data", source)
    odd = os.path.join(os.fsencode(data / "apple"), b"caf\xe9.jpg")
    with open(odd, "wb") as f:
        f.write(encode(Image.new("RGB", (80, 60), (200, 10, 10))))
    report = check_dataset(data, out_dir=tmp_path / "out", progress=False)
    assert Path(os.fsdecode(odd)) in report.good_files
    text = report.summary() + report._repr_html_()
    text.encode("utf-8")  # printable: the old code crashed writing the report
    assert (tmp_path / "out" / ISSUES_CSV).is_file()
    dls = get_dls(
        data,
        ModelSpec(im_size=32),
        batch_size=2,
        files=report.good_files,
        num_workers=0,
        device="cpu",
    )
    assert len(dls.train_ds) + len(dls.valid_ds) == len(report.good_files)


def test_the_check_and_the_loader_agree_on_labels_csv(tmp_path, source):
    from utils_cv.classification.data import get_dls
    from utils_cv.classification.spec import ModelSpec

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["filename,labels,is_valid"]
    for i, cls in enumerate(("apple", "tool") * 3):
        f = sorted((source / "train" / cls).glob("*.jpg"))[i]
        (data / "images" / f.name).write_bytes(f.read_bytes())
        name = f"images/{f.name}" if i % 2 else f.name  # either way, per row
        rows.append(f"{name},{cls},{i >= 4}")
    rows += [rows[1], "../../etc/passwd,apple,False", "/etc/hostname,tool,False"]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    (data / "images" / "via_link.jpg").symlink_to(data / "images" / rows[1].split(",")[0])
    report = check_dataset(data, progress=False)
    details = " ".join(report.issues["detail"])
    assert "line 8: " in details and "already listed on line 2" in details
    assert "'../../etc/passwd' points outside the data folder" in details
    assert "'/etc/hostname' points outside the data folder" in details
    assert len(report.good_files) == 6
    # training on what the check passed works (the old loader failed on the repeated row)
    dls = get_dls(
        data,
        ModelSpec(im_size=32),
        batch_size=2,
        files=report.good_files,
        num_workers=0,
        device="cpu",
    )
    assert len(dls.train_ds) + len(dls.valid_ds) == 6
