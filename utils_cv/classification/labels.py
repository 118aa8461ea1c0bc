"""labels.csv: the label file of multi-label sets and of annotation output.

Format: a header line ``filename,labels`` (optionally ``,is_valid``), then one line per image::

    filename,labels,is_valid
    0001.jpg,can milk_bottle,False
    0002.jpg,carton,True

Columns are separated by commas; the labels of one image by spaces (``LABEL_SEPARATOR``).
``filename`` is relative to the image folder (``images/`` next to labels.csv, or the folder
of labels.csv). ``is_valid`` accepts true/false, 1/0, yes/no (any case).

``read_labels_csv`` raises ``LabelsError`` naming the line (1-based, as an editor shows it) of
every problem; ``check_labels_csv`` returns the good rows and the problems instead.
"""

from __future__ import annotations

import csv as csvlib
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
    """

    line: int
    filename: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


# --- header ----------------------------------------------------------------------------------


def _read_rows(csv: Path) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    """Header (stripped, lower case), its line number and ``(line, fields)`` of each row.

    Blank lines are skipped; line numbers are 1-based as in an editor.
    """
    with open(csv, newline="", encoding="utf-8-sig") as f:
        reader = csvlib.reader(f)
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)
        if header is None:
            raise LabelsError(
                f"{csv} is empty; expected a header line 'filename,labels' and one line per image."
            )
        header_line = reader.line_num
        rows = [(reader.line_num, fields) for fields in reader if any(f.strip() for f in fields)]
    return [h.strip().lower() for h in header], header_line, rows


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


def _missing_file_message(filename: str, image_dir: Path) -> str:
    hint = ""
    parts = Path(filename).parts
    if len(parts) > 1 and (image_dir / Path(*parts[1:])).is_file():
        hint = f"; filenames are relative to {image_dir.name}/, so write '{Path(*parts[1:])}'"
    return f"'{filename}' not found in {image_dir}{hint}"


def check_labels_csv(
    csv: str | Path, image_dir: str | Path | None = None
) -> tuple[pd.DataFrame, list[LabelProblem]]:
    """Read labels.csv, keeping the good rows and listing the bad ones.

    Parameters
    ----------
    csv : the labels.csv file
    image_dir : folder the filenames are relative to; when given, rows whose file is missing
        there are problems too

    Returns
    -------
    df : good rows: ``filename`` (str), ``labels`` (list of str), ``is_valid`` (bool, when the
        column exists); unknown columns are dropped with a warning
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
    good, problems, first_line = [], [], {}
    for line, fields in rows:
        row, message = _check_row(fields, header, line)
        filename = row["filename"]
        if message is None and filename in first_line:
            message = f"'{filename}' is already listed on line {first_line[filename]}"
        if message is None and image_dir is not None and not (image_dir / filename).is_file():
            message = _missing_file_message(filename, image_dir)
        if message is None:
            first_line[filename] = line
            good.append(row)
        else:
            problems.append(LabelProblem(line, filename, message))
    columns = ["filename", "labels"] + (["is_valid"] if "is_valid" in header else [])
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


def read_labels_csv(csv: str | Path, image_dir: str | Path | None = None) -> pd.DataFrame:
    """Read ``labels.csv`` (columns ``filename``, ``labels`` space-separated, optional ``is_valid``).

    Parameters
    ----------
    csv : the labels.csv file
    image_dir : when given, every filename must exist in this folder

    Returns
    -------
    DataFrame with ``filename`` (str), ``labels`` (list of str) and ``is_valid`` (bool, when
    present); unknown extra columns are dropped with a warning.

    Raises
    ------
    FileNotFoundError : no file at ``csv``
    LabelsError (a ValueError) : naming the line of each bad row, or the header problem
    """
    df, problems = check_labels_csv(csv, image_dir)
    if problems:
        raise LabelsError(format_problems(csv, problems))
    return df
