"""Reproducibility, copying files into folders, timing."""

from __future__ import annotations

import filecmp
import random
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (CPU and every GPU) with ``seed``.

    Also makes cuDNN deterministic (``deterministic=True``, ``benchmark=False``), which can make
    GPU training slower.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def copy_files(
    fpaths: str | Path | Iterable[str | Path],
    dst: str | Path,
    infer_subdir: bool = False,
    remove: bool = False,
) -> list[Path]:
    """Copy (or move) files into the folder ``dst``, which is created if missing.

    Parameters
    ----------
    fpaths : str, Path or iterable of them
        Files to copy.
    dst : str or Path
        Destination folder.
    infer_subdir : bool
        Put each file in ``dst/<name of its parent folder>/`` (e.g. keep class folders).
    remove : bool
        Move the files instead of copying them.

    Returns
    -------
    list of Path
        The destination file of each input, in order.

    Raises
    ------
    FileExistsError
        A destination already holds a file with different content, or two inputs would land on
        the same destination; nothing is copied in that case. An identical file is left as is.
    FileNotFoundError
        An input file does not exist.
    """
    if isinstance(fpaths, (str, Path)):
        fpaths = [fpaths]
    srcs = [Path(p) for p in fpaths]
    dsts = [destination(src, Path(dst), infer_subdir) for src in srcs]
    check_copies(srcs, dsts)
    for src, target in zip(srcs, dsts):
        if src.resolve() == target.resolve():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # identical content (checked above)
            if remove:
                src.unlink(missing_ok=True)
        elif remove:
            shutil.move(src, target)
        else:
            shutil.copy2(src, target)
    return dsts


def destination(src: Path, dst: Path, infer_subdir: bool) -> Path:
    """Where ``copy_files`` puts ``src``: ``dst/<name>`` or ``dst/<parent folder name>/<name>``."""
    return dst / src.parent.name / src.name if infer_subdir else dst / src.name


def check_copies(srcs: list[Path], dsts: list[Path]) -> None:
    """Raise before copying if a source is missing or a destination would be overwritten."""
    seen: dict[Path, Path] = {}
    for src, target in zip(srcs, dsts):
        if not src.is_file():
            raise FileNotFoundError(f"No file to copy at {src}")
        if target in seen and seen[target].resolve() != src.resolve():
            raise FileExistsError(f"{seen[target]} and {src} would both be copied to {target}")
        seen[target] = src
        if target.exists() and not filecmp.cmp(src, target, shallow=False):
            raise FileExistsError(f"{target} already exists with different content than {src}")


class Timer:
    """Measure wall-clock time, in seconds, of a ``with`` block.

    Examples
    --------
    >>> with Timer() as t:
    ...     train()
    >>> t.elapsed  # seconds; while the block runs, the time so far
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None

    def __enter__(self) -> Timer:
        self.start, self.end = time.perf_counter(), None
        return self

    def __exit__(self, *exc_info) -> None:
        self.end = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds from entering the block to leaving it (or to now, inside it)."""
        if self.start is None:
            raise RuntimeError("Timer has not been started; use it as `with Timer() as t:`")
        return (self.end if self.end is not None else time.perf_counter()) - self.start

    def __str__(self) -> str:
        return f"{self.elapsed:.2f} s"
