"""labels.csv: the label file of multi-label sets and of annotation output."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

LABELS_FILE = "labels.csv"
LABEL_SEPARATOR = " "


def read_labels_csv(csv: str | Path) -> pd.DataFrame:
    """Read ``labels.csv`` (columns ``filename``, ``labels`` space-separated, optional ``is_valid``).

    Returns a DataFrame with ``filename`` (str), ``labels`` (list of str) and ``is_valid`` (bool,
    when present). Raises ValueError naming the row for an empty label list or a missing column.
    """
    csv = Path(csv)
    df = pd.read_csv(csv, dtype={"filename": str, "labels": str})
    missing = [c for c in ("filename", "labels") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{csv}: missing column(s) {', '.join(missing)}; expected a header "
            f"'filename,labels' (labels separated by spaces)."
        )
    for i, labels in enumerate(df["labels"]):
        if not isinstance(labels, str) or not labels.strip():
            raise ValueError(f"{csv}, row {i + 2}: empty label list for '{df['filename'][i]}'.")
    df["labels"] = df["labels"].map(lambda s: s.split())
    if "is_valid" in df.columns:
        df["is_valid"] = df["is_valid"].astype(str).str.lower().isin(["1", "true", "yes"])
    return df
