"""labels.csv: the label file of multi-label sets and of annotation output.

Format: a header line ``filename,labels`` (optionally ``,is_valid``), then one line per image::

    filename,labels,is_valid
    0001.jpg,can milk_bottle,False
    0002.jpg,carton,True

Columns are separated by commas; the labels of one image by spaces (``LABEL_SEPARATOR``).
``filename`` is relative to the image folder (``images/`` next to labels.csv) or to the data
folder (``images/cat_01.jpg``, as many tools export it); each row is resolved on its own, and a
name that would resolve both ways to different files, or neither, is reported with its row.
Absolute names and names that leave the data folder (``../``) are refused with their row.
``is_valid`` accepts true/false, 1/0, yes/no (any case). The file must be UTF-8 (a BOM is fine).

``read_labels_csv`` raises ``LabelsError`` naming the line (1-based, as an editor shows it) of
every problem; ``check_labels_csv`` returns the good rows and the problems instead.
"""

from __future__ import annotations

import csv as csvlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

LABELS_FILE = "labels.csv"
LABEL_SEPARATOR = " "
REQUIRED_COLUMNS = ("filename", "labels")
OPTIONAL_COLUMNS = ("is_valid",)
# Separators people use instead of spaces, and what to call them in messages.
WRONG_SEPARATORS = {",": "commas", ";": "semicolons", "|": "pipes"}
TRUE_VALUES = ("true", "1", "yes", "y", "t", "1.0")
FALSE_VALUES = ("false", "0", "no", "n", "f", "0.0")
MAX_LISTED_PROBLEMS = 10


class LabelsError(ValueError):
    """labels.csv cannot be used as it is; the message names the file and the line."""


@dataclass(frozen=True)
class LabelProblem:
    """A row of labels.csv that cannot be used.

    Attributes
    ----------
    line : 1-based line number in the file
    filename : the row's filename ("" when it has none)
    message : what is wrong, in one sentence
    path : the file the row names, when it could be resolved (else None)
    """

    line: int
    filename: str
    message: str
    path: Path | None = None  # the file the row names, when it could be resolved

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


# --- header ----------------------------------------------------------------------------------


MAX_CSV_BYTES = 256 * 1024 * 1024
MAX_FIELD_CHARS = 4096  # a file name or label list longer than this is not one


def labels_image_dir(data_path: str | Path) -> Path:
    """The folder labels.csv file names are relative to: ``images/`` when the data folder
    has one, else the data folder itself (names may also be relative to the data folder; see
    ``resolve_filename``)."""
    data_path = Path(data_path)
    return data_path / "images" if (data_path / "images").is_dir() else data_path


def _decode(csv: Path) -> str:
    """The text of ``csv`` as UTF-8; LabelsError naming the line of the first bad byte."""
    from utils_cv.common.datacheck import read_regular_file

    try:
        data = read_regular_file(csv, MAX_CSV_BYTES)
    except OSError as err:
        raise LabelsError(f"{csv} cannot be read: {err}.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise LabelsError(
            f"{csv}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; save "
            f"{csv.name} as UTF-8 (in Excel: 'CSV UTF-8'; most editors: 'Save with encoding')."
        ) from None


def _read_rows(csv: Path) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    """Header (stripped, lower case), its line number and ``(line, fields)`` of each row.

    Blank lines are skipped; line numbers are 1-based as in an editor.
    """
    import io

    reader = csvlib.reader(io.StringIO(_decode(csv), newline=""))
    rows = []
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)
        if header is None:
            raise LabelsError(
                f"{csv} is empty; expected a header line 'filename,labels' and one line per image."
            )
        header_line = reader.line_num
        for fields in reader:
            if any(len(f) > MAX_FIELD_CHARS for f in fields):
                raise LabelsError(
                    f"{csv}, line {reader.line_num}: a field has more than {MAX_FIELD_CHARS} "
                    f'characters; is a quote (") left open on this line or above?'
                )
            if any(f.strip() for f in fields):
                rows.append((reader.line_num, fields))
    except csvlib.Error as err:
        raise LabelsError(
            f'{csv}, line {reader.line_num}: not readable as CSV ({err}); is a quote (") '
            f"left open on this line or above?"
        ) from None
    return [h.strip().lower() for h in header], header_line, rows


def labels_columns(csv: str | Path) -> list[str]:
    """The column names (lower case) of labels.csv; LabelsError when it cannot be read."""
    return _read_rows(Path(csv))[0]


def _check_header(csv: Path, header: list[str], header_line: int) -> None:
    """Raise LabelsError for a wrong column separator or a missing column; warn on extra ones."""
    if len(header) == 1:
        for sep, name in {**WRONG_SEPARATORS, "\t": "tabs"}.items():
            if sep in header[0]:
                raise LabelsError(
                    f"{csv}, line {header_line}: the columns are separated by {name} "
                    f"('{header[0]}'); labels.csv separates columns with commas: "
                    f"'filename,labels'."
                )
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LabelsError(
            f"{csv}, line {header_line}: missing column(s) {', '.join(missing)}; found "
            f"{', '.join(repr(h) for h in header)}; expected the header 'filename,labels' "
            f"(optionally ',is_valid')."
        )
    extra = [h for h in header if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if extra:
        warnings.warn(
            f"{csv}: ignoring unknown column(s) {', '.join(repr(h) for h in extra)}; labels.csv "
            f"uses filename, labels and optional is_valid.",
            stacklevel=3,
        )


# --- rows --------------------------------------------------------------------------------------


def wrong_label_separator(labels: str) -> str | None:
    """Name of the non-space separator used in a labels field ('commas', ...), or None."""
    for sep, name in WRONG_SEPARATORS.items():
        if sep in labels:
            return name
    return None


def parse_is_valid(value: str) -> bool | None:
    """True / False for the accepted spellings of is_valid, None for anything else."""
    value = value.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    return None


def _field(fields: list[str], header: list[str], column: str) -> str:
    """The stripped value of ``column`` in a row, "" when the row is too short."""
    i = header.index(column)
    return fields[i].strip() if i < len(fields) else ""


def _check_row(fields: list[str], header: list[str], line: int) -> tuple[dict, str | None]:
    """Parse one row into ``{filename, labels[, is_valid]}``; second item: problem message."""
    filename = _field(fields, header, "filename")
    if len(fields) > len(header):
        return {"filename": filename}, (
            f"{len(fields)} comma-separated fields but the header has {len(header)}; separate "
            f"the labels of one image with spaces ('cat dog'), not commas"
        )
    if not filename:
        return {"filename": ""}, "empty filename"
    labels = _field(fields, header, "labels")
    if not labels:
        return {"filename": filename}, f"empty label list for '{filename}'"
    sep = wrong_label_separator(labels)
    if sep:
        return {"filename": filename}, (
            f"the labels '{labels}' of '{filename}' are separated by {sep}; labels.csv "
            f"separates labels with spaces, e.g. '{' '.join(_split_any(labels))}'"
        )
    row = {"filename": filename, "labels": labels.split()}
    if "is_valid" in header:
        value = _field(fields, header, "is_valid")
        row["is_valid"] = parse_is_valid(value)
        if row["is_valid"] is None:
            return row, f"is_valid of '{filename}' is '{value}'; use true/false or 1/0"
    return row, None


def _split_any(labels: str) -> list[str]:
    for sep in WRONG_SEPARATORS:
        labels = labels.replace(sep, " ")
    return labels.split()


def _missing_file_message(filename: str, image_dir: Path, data_dir: Path | None) -> str:
    where = (
        f"{image_dir}"
        if data_dir is None or data_dir == image_dir
        else (f"{image_dir} nor in {data_dir}")
    )
    return f"'{filename}' not found in {where}"


def _escapes(filename: str) -> bool:
    """True for absolute names and names with a '..' part (they could leave the data folder)."""
    path = Path(filename.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or filename.startswith(("/", "\\"))


def resolve_filename(
    filename: str, image_dir: Path, data_dir: Path | None = None
) -> tuple[Path | None, str | None]:
    """The file a labels.csv name means: relative to ``image_dir`` or to ``data_dir``.

    Returns (path, None), or (path or None, problem message) for a name that escapes the data
    folder (None), exists both ways as different files, or exists neither way (the path under
    ``image_dir``). Nothing is opened.
    """
    if _escapes(filename):
        return None, (
            f"'{filename}' points outside the data folder; write names relative to "
            f"{image_dir.name}/ or to the data folder"
        )
    candidates = [image_dir / filename]
    if data_dir is not None and os.path.normpath(data_dir) != os.path.normpath(image_dir):
        candidates.append(data_dir / filename)
    found = [c for c in candidates if os.path.lexists(c)]
    if len(found) == 2 and os.path.realpath(found[0]) != os.path.realpath(found[1]):
        return candidates[0], (
            f"'{filename}' names two different files, {found[0]} and {found[1]}; write "
            f"'{image_dir.name}/{filename}' or move one of them"
        )
    if not found:
        return candidates[0], _missing_file_message(filename, image_dir, data_dir)
    return found[0], None


def check_labels_csv(
    csv: str | Path, image_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> tuple[pd.DataFrame, list[LabelProblem]]:
    """Read labels.csv, keeping the good rows and listing the bad ones.

    Parameters
    ----------
    csv : the labels.csv file
    image_dir : folder the filenames are relative to; when given, rows whose file is missing
        there are problems too, and the rows get a ``path`` column (the file they name)
    data_dir : the data folder, which names may also be relative to (see ``resolve_filename``)

    Returns
    -------
    df : good rows: ``filename`` (str), ``labels`` (list of str), ``is_valid`` (bool, when the
        column exists), ``path`` (Path, when ``image_dir`` is given); unknown columns are
        dropped with a warning
    problems : one LabelProblem per bad row (wrong field count, empty filename, empty labels,
        labels separated by commas / semicolons / pipes, bad is_valid, repeated filename,
        file not found)

    Raises
    ------
    FileNotFoundError : no file at ``csv``
    LabelsError : empty file, columns not separated by commas, missing column
    """
    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"Labels file not found: {csv}")
    header, header_line, rows = _read_rows(csv)
    _check_header(csv, header, header_line)
    image_dir = None if image_dir is None else Path(image_dir)
    data_dir = None if data_dir is None else Path(data_dir)
    good, problems, first_line = [], [], {}
    for line, fields in rows:
        row, message = _check_row(fields, header, line)
        filename = row["filename"]
        key = filename
        if filename and image_dir is not None:
            path, resolve_message = resolve_filename(filename, image_dir, data_dir)
            if path is not None:
                row["path"] = path
            if message is None and resolve_message is None:
                key = os.path.normpath(path)
            message = message or resolve_message
        if message is None and key in first_line:
            message = f"'{filename}' is already listed on line {first_line[key]}"
        if message is None:
            first_line[key] = line
            good.append(row)
        else:
            problems.append(LabelProblem(line, filename, message, row.get("path")))
    columns = ["filename", "labels"] + (["is_valid"] if "is_valid" in header else [])
    columns += ["path"] if image_dir is not None else []
    df = pd.DataFrame(good, columns=columns)
    if "is_valid" in df.columns:
        df["is_valid"] = df["is_valid"].astype(bool)
    return df, problems


def format_problems(csv: str | Path, problems: list[LabelProblem]) -> str:
    """One readable message for a list of row problems (the first ``MAX_LISTED_PROBLEMS``)."""
    listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    more = f"\n  ... and {more} more" if more > 0 else ""
    noun = "row" if len(problems) == 1 else "rows"
    return f"{csv}: {len(problems)} bad {noun}:\n{listed}{more}"


def read_labels_csv(
    csv: str | Path, image_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> pd.DataFrame:
    """Read ``labels.csv`` (columns ``filename``, ``labels`` space-separated, optional ``is_valid``).

    Parameters
    ----------
    csv : the labels.csv file
    image_dir : when given, every filename must exist in this folder (or in ``data_dir``)
    data_dir : the data folder (see ``check_labels_csv``)

    Returns
    -------
    DataFrame with ``filename`` (str), ``labels`` (list of str) and ``is_valid`` (bool, when
    present); unknown extra columns are dropped with a warning.

    Raises
    ------
    FileNotFoundError : no file at ``csv``
    LabelsError (a ValueError) : naming the line of each bad row, or the header problem
    """
    df, problems = check_labels_csv(csv, image_dir, data_dir)
    if problems:
        raise LabelsError(format_problems(csv, problems))
    return df
