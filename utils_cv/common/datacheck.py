"""File-level data checks any vision task can use: is this file a usable image, and which
images are exact or near duplicates of each other.

``check_image_file`` reads a file once and returns a ``FileCheck``: whether it is usable and,
if not, a short stable ``reason`` code and a readable ``detail``. Usable images also get a
content hash (sha1 of the bytes) and a 64-bit perceptual difference hash (``dhash``) for
duplicate search. ``check_image_files`` runs it over many files in parallel.

Reason codes: ``not_a_file`` (a named pipe, device, socket or folder: refused before any
read), ``too_large`` (more bytes than ``MAX_FILE_BYTES``), ``unreadable``, ``zero_bytes``,
``unsupported_extension``, ``not_an_image``, ``decompression_bomb``, ``too_small`` (a side under
``min_size`` pixels: degenerate, since smaller images are upscaled when training),
``extreme_aspect`` (one side more than ``MAX_ASPECT`` times the other), ``corrupt``.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils_cv.common.image_io import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    DecompressionBombError,
    apply_exif_orientation,
    open_image,
    to_rgb,
)

# Reason codes of check_image_file.
NOT_A_FILE = "not_a_file"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"
ZERO_BYTES = "zero_bytes"
UNSUPPORTED_EXTENSION = "unsupported_extension"
NOT_AN_IMAGE = "not_an_image"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_SMALL = "too_small"
EXTREME_ASPECT = "extreme_aspect"
CORRUPT = "corrupt"

MIN_SIZE = 8  # pixels: images with a shorter side are degenerate (smaller ones are upscaled)
MAX_ASPECT = 20.0  # longer side / shorter side beyond this is degenerate
MAX_FILE_BYTES = 512 * 1024 * 1024  # no image file of a data set is larger; never read more

HASH_SIZE = 8  # dhash compares HASH_SIZE x (HASH_SIZE + 1) pixels: 64 bits
THUMB_SIZE = 64  # JPEGs are decoded at reduced scale, down to about this many pixels
NEAR_DUPLICATE_DISTANCE = 5  # max differing dhash bits (of 64) for a near duplicate
NEAR_DUPLICATE_MEAN_DIFF = 40.0  # max difference of mean grey level (0..255) as well


@dataclass(frozen=True)
class FileCheck:
    """What ``check_image_file`` found out about one file.

    Attributes
    ----------
    path : the file
    ok : True when the file is an image that can be trained on
    reason : short stable code of the problem ("" when ok)
    detail : readable explanation ("" when ok)
    width, height : image size in pixels (None when the header could not be read)
    format : Pillow's name of the actual file format ("JPEG", "PNG", ...), whatever the extension
    sha1 : hex sha1 of the file bytes (None for files that were not read or are empty)
    dhash : 64-bit difference hash of the upright greyscale image (None unless ok)
    mean : mean grey level 0..255 of the hash thumbnail (None unless ok)
    """

    path: Path
    ok: bool
    reason: str = ""
    detail: str = ""
    width: int | None = None
    height: int | None = None
    format: str | None = None
    sha1: str | None = None
    dhash: int | None = None
    mean: float | None = None


# --- what is in a file -----------------------------------------------------------------


def describe_content(data: bytes) -> str:
    """Guess what a non-image file holds from its first bytes, e.g. 'a PDF document'."""
    head = data[:1024]
    lower = head.lstrip().lower()
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if lower.startswith((b"<!doctype html", b"<html")) or b"<html" in lower:
        return "an HTML page"
    if lower.startswith(b"<?xml") or b"<svg" in lower:
        return "an XML / SVG file"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (or Office document)"
    if head[4:8] == b"ftyp":
        return f"an ISO media file ('{head[8:12].decode('latin-1')}': HEIC, AVIF or video)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character may be cut at the end of the head
        try:
            text = head[:-4].decode("utf-8")
        except UnicodeDecodeError:
            return "unrecognised binary data"
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    return "text" if printable >= 0.95 * len(text) else "unrecognised binary data"


def describe_image_header(data: bytes) -> str | None:
    """Pillow's format name and size of an image in ``data`` (header only), or None."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return f"a {im.format} image of {im.width} x {im.height} px"
    except Exception:
        return None


# --- perceptual hash ---------------------------------------------------------------------


def hash_thumbnail(im: Image.Image, hash_size: int = HASH_SIZE) -> np.ndarray:
    """The ``hash_size`` x ``(hash_size + 1)`` greyscale pixels (uint8) ``dhash`` compares."""
    small = im.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.BILINEAR)
    return np.asarray(small)


def dhash(im: Image.Image | np.ndarray, hash_size: int = HASH_SIZE) -> int:
    """Difference hash of ``im``: ``hash_size**2`` bits, 1 where a pixel is brighter than its
    left neighbour in a ``(hash_size + 1) x hash_size`` greyscale thumbnail.

    Robust to re-encoding, resizing, small crops and global brightness changes.
    ``im`` is used as it is (apply EXIF orientation first); it may also be the thumbnail from
    ``hash_thumbnail``. Returns a Python int.
    """
    pixels = im if isinstance(im, np.ndarray) else hash_thumbnail(im, hash_size)
    pixels = pixels.astype(np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming_distance(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


# --- one file ------------------------------------------------------------------------------


def _bad(path: Path, reason: str, detail: str, **kwargs) -> FileCheck:
    return FileCheck(path=path, ok=False, reason=reason, detail=detail, **kwargs)


def _upright_gray(im: Image.Image) -> Image.Image:
    """Decode ``im`` (JPEGs at reduced scale) and return it upright, in 8-bit greyscale."""
    if im.format == "JPEG":
        im.draft("L", (THUMB_SIZE, THUMB_SIZE))  # DCT scaling: decodes 1/2 .. 1/8 size
    im.load()
    if im.mode == "L" and "transparency" not in im.info:
        return apply_exif_orientation(im)
    return to_rgb(im).convert("L")


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``max_bytes`` bytes
    (default ``MAX_FILE_BYTES``).

    The file type is checked on the opened descriptor before anything is read (opened
    non-blocking, so a named pipe cannot hang the caller). Raises ``NotARegularFile`` or
    ``FileTooLarge`` (both OSError) otherwise.
    """
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(f"{_file_kind(info.st_mode)}, not a regular file; not read")
        if info.st_size > max_bytes:
            raise FileTooLarge(f"{info.st_size:,} bytes; image files of at most {max_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileTooLarge(f"more than {max_bytes:,} bytes; image files of at most {max_bytes:,}")
    return data


class NotARegularFile(OSError):
    """A path names a pipe, device, socket or folder where a file was expected."""


class FileTooLarge(OSError):
    """A file is larger than the limit for an image file."""


def check_image_file(
    path: str | Path,
    min_size: int = MIN_SIZE,
    max_pixels: int | None = MAX_PIXELS,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> FileCheck:
    """Check whether the file at ``path`` is an image that can be trained on.

    The file is read once (never written). Checks, in order: a regular file (pipes and devices
    are refused before any read) of at most ``MAX_FILE_BYTES``, readable, not empty, extension
    in ``extensions`` (any case), recognised as an image by its content (a PNG named .jpg is
    fine), at most ``max_pixels`` pixels (bombs are refused without decoding), shorter side at
    least ``min_size`` pixels and an aspect ratio within 1:``MAX_ASPECT`` (images smaller than
    the training size are fine: they are upscaled), decodes completely (JPEGs at reduced
    scale) and converts to RGB.

    Parameters
    ----------
    path : file to check
    min_size : smallest acceptable width and height, in pixels (degenerate below)
    max_pixels : largest acceptable width x height; None for Pillow's own limit only
    extensions : accepted lower-case extensions, with the dot

    Returns
    -------
    FileCheck, with ``ok``, ``reason`` and ``detail``; usable images carry ``sha1``, ``dhash``.
    """
    with warnings.catch_warnings():
        # Bombs are refused with a reason; Pillow's warning about them would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _check_image_file(Path(path), min_size, max_pixels, tuple(extensions))


def _check_image_file(
    path: Path, min_size: int, max_pixels: int | None, extensions: tuple[str, ...]
) -> FileCheck:
    """``check_image_file`` without its warning filter (not thread-safe to set in threads)."""
    try:
        data = read_regular_file(path)
    except NotARegularFile as e:
        return _bad(path, NOT_A_FILE, str(e))
    except FileTooLarge as e:
        return _bad(path, TOO_LARGE, str(e))
    except OSError as e:
        return _bad(path, UNREADABLE, f"cannot read the file: {e.strerror or e}")
    if not data:
        return _bad(path, ZERO_BYTES, "the file is empty (0 bytes)")
    ext = path.suffix.lower()
    if ext not in extensions:
        content = describe_image_header(data) or describe_content(data)
        return _bad(
            path,
            UNSUPPORTED_EXTENSION,
            f"extension '{path.suffix or '(none)'}' is not one of {', '.join(extensions)}; "
            f"the file holds {content}",
        )
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        im = open_image(io.BytesIO(data), max_pixels)
    except DecompressionBombError as e:
        return _bad(path, DECOMPRESSION_BOMB, str(e), sha1=sha1)
    except UnidentifiedImageError:
        return _bad(path, NOT_AN_IMAGE, f"the file holds {describe_content(data)}", sha1=sha1)
    except Exception as e:  # broken header
        return _bad(path, CORRUPT, f"unreadable image header: {e}", sha1=sha1)
    size = {"width": im.width, "height": im.height, "format": im.format, "sha1": sha1}
    with im:
        if min(im.width, im.height) < min_size:
            detail = f"{im.width} x {im.height} px; both sides must be at least {min_size} px"
            return _bad(path, TOO_SMALL, detail, **size)
        if max(im.width, im.height) > MAX_ASPECT * min(im.width, im.height):
            detail = (
                f"{im.width} x {im.height} px; one side is more than {MAX_ASPECT:g} times the "
                f"other (a strip, not a photo)"
            )
            return _bad(path, EXTREME_ASPECT, detail, **size)
        try:
            thumb = hash_thumbnail(_upright_gray(im))
        except Exception as e:
            reason = "truncated" if "truncated" in str(e) else "corrupt image data"
            return _bad(path, CORRUPT, f"{reason}: {e}", **size)
    return FileCheck(path=path, ok=True, dhash=dhash(thumb), mean=float(thumb.mean()), **size)


def _check_one(args: tuple) -> FileCheck:
    return _check_image_file(*args)


def check_image_files(
    paths: Iterable[str | Path],
    min_size: int = MIN_SIZE,
    max_pixels: int | None = MAX_PIXELS,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    workers: int | None = None,
    progress: bool = False,
) -> list[FileCheck]:
    """``check_image_file`` for every path, in parallel threads; results in the order given.

    Pillow and hashlib release the GIL while decoding, resizing and hashing, so threads can
    share the work without the start-up and pickling cost of processes. With small images
    Python-level overhead dominates and extra threads gain little (see
    ``benchmarks/bench_datacheck.py``).

    Parameters
    ----------
    paths : files to check
    min_size, max_pixels, extensions : see ``check_image_file``
    workers : number of threads; default: the number of CPU cores available
    progress : show a tqdm progress bar

    Returns
    -------
    list of FileCheck, one per path, same order.
    """
    paths = [Path(p) for p in paths]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        workers = workers or os.cpu_count() or 1
    jobs = [(p, min_size, max_pixels, tuple(extensions)) for p in paths]
    with warnings.catch_warnings():
        # Bombs are refused with a reason; Pillow's warning about them would only be noise.
        # Set here, in the calling thread, as warning filters are global.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if workers <= 1 or len(paths) < 2:
            return list(_with_progress(map(_check_one, jobs), len(jobs), progress))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_check_one, jobs)
            return list(_with_progress(results, len(jobs), progress))


def _with_progress(results: Iterable, total: int, progress: bool) -> Iterable:
    if not progress:
        return results
    from tqdm.auto import tqdm

    return tqdm(results, total=total, desc="Checking images", unit="img")


# --- duplicates --------------------------------------------------------------------------------


def group_exact_duplicates(digests: Sequence[str | None]) -> list[list[int]]:
    """Indices of items with equal content hash, grouped; only groups of 2 or more.

    ``None`` digests are ignored. Groups and their members keep the input order.
    """
    groups: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        if digest is not None:
            groups.setdefault(digest, []).append(i)
    return [members for members in groups.values() if len(members) > 1]


def near_duplicate_pairs(
    hashes: Sequence[int],
    max_distance: int = NEAR_DUPLICATE_DISTANCE,
    means: Sequence[float] | None = None,
    max_mean_diff: float = NEAR_DUPLICATE_MEAN_DIFF,
) -> list[tuple[int, int, int]]:
    """Pairs of hashes at most ``max_distance`` bits apart, as ``(i, j, distance)`` with i < j.

    When ``means`` (mean grey levels 0..255) are given, a pair must also differ by at most
    ``max_mean_diff`` in mean brightness: the difference hash alone cannot tell a black from a
    white image. Compares all pairs with numpy in row blocks: 10,000 hashes take well under a
    second.
    """
    n = len(hashes)
    codes = np.array([h & 0xFFFFFFFFFFFFFFFF for h in hashes], dtype=np.uint64)
    levels = None if means is None else np.asarray(means, dtype=np.float64)
    block = max(1, 4_000_000 // max(n, 1))
    pairs = []
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        cols = np.arange(start, n)  # the upper triangle only
        distance = np.bitwise_count(codes[rows, None] ^ codes[None, start:])
        close = (distance <= max_distance) & (cols[None, :] > rows[:, None])
        if levels is not None:
            close &= np.abs(levels[rows, None] - levels[None, start:]) <= max_mean_diff
        for r, c in zip(*np.nonzero(close)):
            pairs.append((int(rows[r]), int(cols[c]), int(distance[r, c])))
    return pairs


def group_pairs(n: int, pairs: Iterable[tuple[int, int, int]]) -> list[list[int]]:
    """Connected groups (2 or more members, sorted indices) of the graph of ``pairs`` on n items."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def group_near_duplicates(
    hashes: Sequence[int],
    max_distance: int = NEAR_DUPLICATE_DISTANCE,
    means: Sequence[float] | None = None,
    max_mean_diff: float = NEAR_DUPLICATE_MEAN_DIFF,
) -> list[list[int]]:
    """Indices of near-duplicate images grouped (see ``near_duplicate_pairs``); groups of 2+."""
    pairs = near_duplicate_pairs(hashes, max_distance, means, max_mean_diff)
    return group_pairs(len(hashes), pairs)
