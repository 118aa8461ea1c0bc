"""labels.csv: good files parse; every problem is a clear error naming its line."""

from __future__ import annotations

import warnings

import pytest

from utils_cv.classification.labels import (
    LabelsError,
    check_labels_csv,
    read_labels_csv,
    wrong_label_separator,
)


def write_csv(tmp_path, text: str, name: str = "labels.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def make_images(tmp_path, *names: str):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


# --- good files -------------------------------------------------------------------------------


def test_reads_labels_and_is_valid(tmp_path):
    csv = write_csv(
        tmp_path,
        "filename,labels,is_valid\n"
        "a.jpg,cat dog,False\n"
        "b.jpg,  cat ,True\n"
        "c.jpg,dog,1\n"
        "d.jpg,bird  cat,no\n",
    )
    df = read_labels_csv(csv)
    assert list(df.columns) == ["filename", "labels", "is_valid"]
    assert df["filename"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert df["labels"].tolist() == [["cat", "dog"], ["cat"], ["dog"], ["bird", "cat"]]
    assert df["is_valid"].tolist() == [False, True, True, False]
    assert df["is_valid"].dtype == bool


def test_without_is_valid(tmp_path):
    df = read_labels_csv(write_csv(tmp_path, "filename,labels\na.jpg,cat\n"))
    assert list(df.columns) == ["filename", "labels"]


def test_column_order_case_bom_blank_lines_and_non_ascii(tmp_path):
    csv = write_csv(
        tmp_path,
        "\n Labels , FILENAME\n\nkatze hund,café_猫.jpg\n\n",
        encoding="utf-8-sig",
    )
    df = read_labels_csv(csv)
    assert df["filename"].tolist() == ["café_猫.jpg"]
    assert df["labels"].tolist() == [["katze", "hund"]]


def test_quoted_filename_with_comma(tmp_path):
    df = read_labels_csv(write_csv(tmp_path, 'filename,labels\n"a, b.jpg",cat\n'))
    assert df["filename"].tolist() == ["a, b.jpg"]


def test_files_found_in_image_dir(tmp_path):
    images = make_images(tmp_path, "a.jpg")
    (images / "sub").mkdir()
    (images / "sub" / "b.jpg").write_bytes(b"x")
    csv = write_csv(tmp_path, "filename,labels\na.jpg,cat\nsub/b.jpg,dog\n")
    assert len(read_labels_csv(csv, images)) == 2


# --- whole-file errors ------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Labels file not found: .*nope.csv"):
        read_labels_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_empty_file(tmp_path, text):
    with pytest.raises(LabelsError, match="is empty; expected a header line 'filename,labels'"):
        read_labels_csv(write_csv(tmp_path, text))


def test_missing_column(tmp_path):
    csv = write_csv(tmp_path, "filename,label\na.jpg,cat\n")
    with pytest.raises(
        LabelsError, match=r"line 1: missing column\(s\) labels; found 'filename', 'label'"
    ):
        read_labels_csv(csv)


def test_missing_both_columns(tmp_path):
    with pytest.raises(LabelsError, match=r"missing column\(s\) filename, labels"):
        read_labels_csv(write_csv(tmp_path, "path,tags\na.jpg,cat\n"))


@pytest.mark.parametrize("sep, name", [(";", "semicolons"), ("\t", "tabs"), ("|", "pipes")])
def test_columns_separated_by_something_else(tmp_path, sep, name):
    csv = write_csv(tmp_path, f"filename{sep}labels\na.jpg{sep}cat dog\n")
    with pytest.raises(LabelsError, match=f"line 1: the columns are separated by {name}"):
        read_labels_csv(csv)


def test_unknown_columns_are_ignored_with_a_warning(tmp_path):
    csv = write_csv(tmp_path, "filename,labels,photographer,notes\na.jpg,cat,Ann,blurry\n")
    with pytest.warns(UserWarning, match="ignoring unknown column\\(s\\) 'photographer', 'notes'"):
        df = read_labels_csv(csv)
    assert list(df.columns) == ["filename", "labels"]


def test_no_warning_for_known_columns(tmp_path):
    csv = write_csv(tmp_path, "filename,labels,is_valid\na.jpg,cat,true\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_labels_csv(csv)


# --- row errors, named by line --------------------------------------------------------------


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.jpg,", "line 3: empty label list for 'a.jpg'"),
        ("a.jpg", "line 3: empty label list for 'a.jpg'"),
        ('a.jpg,"  "', "line 3: empty label list for 'a.jpg'"),
        (",cat", "line 3: empty filename"),
        ('a.jpg,"cat,dog"', "line 3: the labels 'cat,dog' of 'a.jpg' are separated by commas"),
        ("a.jpg,cat;dog", "line 3: the labels 'cat;dog' of 'a.jpg' are separated by semicolons"),
        ("a.jpg,cat|dog", "line 3: the labels 'cat\\|dog' of 'a.jpg' are separated by pipes"),
        ("a.jpg,cat,dog", "line 3: 3 comma-separated fields but the header has 2"),
    ],
)
def test_bad_row(tmp_path, row, message):
    csv = write_csv(tmp_path, f"filename,labels\nok.jpg,cat\n{row}\n")
    with pytest.raises(LabelsError, match=message):
        read_labels_csv(csv)


def test_wrong_separator_message_shows_the_fix(tmp_path):
    csv = write_csv(tmp_path, 'filename,labels\na.jpg,"cat, dog"\n')
    with pytest.raises(LabelsError, match="separates labels with spaces, e.g. 'cat dog'"):
        read_labels_csv(csv)


def test_bad_is_valid(tmp_path):
    csv = write_csv(tmp_path, "filename,labels,is_valid\na.jpg,cat,maybe\nb.jpg,dog\n")
    with pytest.raises(LabelsError) as info:
        read_labels_csv(csv)
    assert "line 2: is_valid of 'a.jpg' is 'maybe'; use true/false or 1/0" in str(info.value)
    assert "line 3: is_valid of 'b.jpg' is ''" in str(info.value)


def test_repeated_filename(tmp_path):
    csv = write_csv(tmp_path, "filename,labels\na.jpg,cat\nb.jpg,cat\na.jpg,dog\n")
    with pytest.raises(LabelsError, match="line 4: 'a.jpg' is already listed on line 2"):
        read_labels_csv(csv)


def test_file_not_found_on_disk(tmp_path):
    images = make_images(tmp_path, "a.jpg")
    csv = write_csv(tmp_path, "filename,labels\na.jpg,cat\nb.jpg,dog\n")
    assert len(read_labels_csv(csv)) == 2  # no folder given: not checked
    with pytest.raises(LabelsError, match=r"line 3: 'b.jpg' not found in .*images"):
        read_labels_csv(csv, images)


def test_names_relative_to_the_data_folder_or_to_images(tmp_path):
    images = make_images(tmp_path, "a.jpg", "b.jpg")
    csv = write_csv(tmp_path, "filename,labels\nimages/a.jpg,cat\nb.jpg,dog\n")
    df = read_labels_csv(csv, images, tmp_path)  # detected per row
    assert list(df["path"]) == [images / "a.jpg", images / "b.jpg"]
    with pytest.raises(LabelsError, match=r"line 2: 'images/a.jpg' not found in .*images"):
        read_labels_csv(csv, images)  # without the data folder, only images/ counts


def test_a_name_that_resolves_both_ways_or_leaves_the_folder_is_refused(tmp_path):
    images = make_images(tmp_path, "a.jpg")
    (tmp_path / "a.jpg").write_bytes(b"another file")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    csv = write_csv(
        tmp_path,
        "filename,labels\na.jpg,cat\n../outside.jpg,cat\n/etc/hostname,dog\n"
        "images/../../x.jpg,dog\n",
    )
    df, problems = check_labels_csv(csv, images, tmp_path)
    assert df.empty
    assert [p.line for p in problems] == [2, 3, 4, 5]
    assert "names two different files" in problems[0].message
    assert all("points outside the data folder" in p.message for p in problems[1:])


def test_non_utf8_and_runaway_fields_name_the_line(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes("filename,labels\na.jpg,cat\ncaf\u00e9.jpg,dog\n".encode("cp1252"))
    with pytest.raises(LabelsError, match=r"line 3: byte 0xe9 is not UTF-8 text; save"):
        read_labels_csv(csv)
    csv.write_text('filename,labels\na.jpg,cat\n"b.jpg,' + "x" * 200_000 + "\n")
    with pytest.raises(LabelsError, match=r"line 3: .*quote"):
        read_labels_csv(csv)
    csv.write_text("filename,labels\n" + "a.jpg," + "y" * 5000 + "\n")
    with pytest.raises(LabelsError, match=r"line 2: a field has more than"):
        read_labels_csv(csv)


def test_line_numbers_count_blank_lines(tmp_path):
    csv = write_csv(tmp_path, "\nfilename,labels\n\na.jpg,cat\n\n\nb.jpg,\n")
    with pytest.raises(LabelsError, match="line 7: empty label list for 'b.jpg'"):
        read_labels_csv(csv)


def test_all_problems_are_listed_up_to_ten(tmp_path):
    rows = "".join(f"{i}.jpg,\n" for i in range(15))
    with pytest.raises(LabelsError) as info:
        read_labels_csv(write_csv(tmp_path, "filename,labels\n" + rows))
    message = str(info.value)
    assert "15 bad rows" in message and "line 2:" in message and "line 11:" in message
    assert "line 12:" not in message and "... and 5 more" in message


def test_check_labels_csv_keeps_good_rows_and_lists_bad_ones(tmp_path):
    images = make_images(tmp_path, "a.jpg", "b.jpg", "c.jpg")
    csv = write_csv(
        tmp_path,
        "filename,labels,is_valid\na.jpg,cat,0\nb.jpg,,0\nc.jpg,dog,1\nd.jpg,cat,1\n",
    )
    df, problems = check_labels_csv(csv, images)
    assert df["filename"].tolist() == ["a.jpg", "c.jpg"]
    assert [(p.line, p.filename) for p in problems] == [(3, "b.jpg"), (5, "d.jpg")]
    assert str(problems[0]) == "line 3: empty label list for 'b.jpg'"


def test_wrong_label_separator():
    assert wrong_label_separator("cat dog") is None
    assert wrong_label_separator("t-shirt") is None
    assert wrong_label_separator("cat,dog") == "commas"
