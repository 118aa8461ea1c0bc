"""Build a messy image-classification dataset on the fly, for tests of the data check.

Usage (``tests/`` is on ``sys.path`` under pytest)::

    from messy_data import make_messy_dataset, make_source_dataset

    source = make_source_dataset(tmp_path / "source")  # or a shipped sample set
    expected = make_messy_dataset(tmp_path / "messy", source)
    report = check_dataset(expected["root"], out_dir=tmp_path / "out")
    assert report.good_files == expected["good_files"]

``make_messy_dataset`` copies the distinct images of ``source`` into class folders, writing
some of them in odd but readable forms (greyscale, palette with transparency, RGBA, LA, CMYK,
16-bit, EXIF-rotated, a PNG named .jpg, upper-case and non-ASCII names), and adds every kind
of bad file: zero bytes, truncated and corrupt images, text / PDF / HTML named .jpg,
unsupported extensions, a too-small image, a decompression bomb, exact duplicates (also across
classes, and across train / valid), near duplicates, misplaced files, an empty class, a class
of bad files only, a single-image class, and hidden files (``.ipynb_checkpoints``,
``.DS_Store``, ``__MACOSX``) that must be skipped.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from utils_cv.common.datacheck import dhash, hamming_distance
from utils_cv.common.image_io import IMAGE_EXTENSIONS, load_rgb

CLASS_FOLDERS = "class_folders"
TRAIN_VALID = "train_valid"
MAX_SIDE = 256  # source images are shrunk to at most this many pixels (fast tests)
DISTINCT_BITS = 16  # source images closer than this (dhash bits) are dropped as look-alikes
IMBALANCE_RATIO = 10  # check_dataset's default
SKIMAGE_PHOTOS = ("astronaut", "coffee", "rocket")


# --- raw PNG writing (Pillow cannot write 16-bit RGB, nor a bomb without allocating it) ------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG file bytes of a uint8 or uint16 array, shape (h, w) grey or (h, w, 2|3|4)."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    rows = pixels.astype(">u2" if bit_depth == 16 else "u1").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def bomb_png_bytes(side: int = 12_000) -> bytes:
    """A valid 1-bit black PNG of ``side`` x ``side`` pixels (144 Mpx by default) in ~20 KB."""
    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def encode(im: Image.Image, format: str = "JPEG", **kwargs) -> bytes:
    """Bytes of ``im`` saved in ``format``."""
    buffer = io.BytesIO()
    im.save(buffer, format, **kwargs)
    return buffer.getvalue()


# --- odd but readable forms of a good image ------------------------------------------------


def _transparent_border(im: Image.Image) -> np.ndarray:
    alpha = np.full((im.height, im.width), 255, np.uint8)
    alpha[: im.height // 6] = 0  # fully transparent band on top
    alpha[-im.height // 6 :] = 128
    return alpha


def _rgba(im: Image.Image) -> bytes:
    rgba = np.dstack([np.asarray(im), _transparent_border(im)])
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _la(im: Image.Image) -> bytes:
    la = np.dstack([np.asarray(im.convert("L")), _transparent_border(im)])
    return encode(Image.fromarray(la, "LA"), "PNG")


def _palette_transparent(im: Image.Image) -> bytes:
    palette = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    return encode(palette, "PNG", transparency=0)


def _exif_rotated(im: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored turned the other way
    return encode(im.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=90)


def _gray16(im: Image.Image) -> bytes:
    return encode(Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257), "PNG")


def _rgb16(im: Image.Image) -> bytes:
    return png_bytes(np.asarray(im).astype(np.uint16) * 257)


# name -> writer of the file bytes; every one must be a readable, good image.
ODD_FORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "gray.png": lambda im: encode(im.convert("L"), "PNG"),
    "bilevel.png": lambda im: encode(im.convert("1"), "PNG"),
    "palette.png": lambda im: encode(im.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "palette_transparent.png": _palette_transparent,
    "rgba.png": _rgba,
    "la.png": _la,
    "cmyk.jpg": lambda im: encode(im.convert("CMYK"), "JPEG", quality=90),
    "gray16.png": _gray16,
    "rgb16.png": _rgb16,
    "exif_rotated.jpg": _exif_rotated,
    "png_named.jpg": lambda im: encode(im, "PNG"),
    "UPPER_CASE.JPG": lambda im: encode(im, "JPEG", quality=90),
    "upper_case.PNG": lambda im: encode(im, "PNG"),
    "café_猫.jpg": lambda im: encode(im, "JPEG", quality=90),
    "ñandú.jpeg": lambda im: encode(im, "JPEG", quality=90),
    "bitmap.bmp": lambda im: encode(im, "BMP"),
    "tiff.tif": lambda im: encode(im, "TIFF"),
    "palette.gif": lambda im: encode(im, "GIF"),
}


# --- bad files ---------------------------------------------------------------------------------


def _garbage_jpeg(jpeg: bytes) -> bytes:
    """A JPEG whose headers are intact and whose compressed data is random noise."""
    start_of_scan = jpeg.index(b"\xff\xda") + 20
    noise = np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes()
    return jpeg[:start_of_scan] + noise


TEXT = b"These are my notes about the photos.\nNothing to see here.\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HTML = b"<!DOCTYPE html>\n<html><head><title>Image not found</title></head></html>\n"
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def bad_files(jpeg: bytes, png: bytes, tiny: bytes, strip: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expected reason code), made from a good ``jpeg`` and ``png``,
    a degenerate ``tiny`` image (a side under 8 px) and a ``strip`` (aspect beyond 1:20)."""
    return {
        "empty.jpg": (b"", "zero_bytes"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "truncated.png": (png[: len(png) // 2], "corrupt"),
        "garbage.jpg": (_garbage_jpeg(jpeg), "corrupt"),
        "text.jpg": (TEXT, "not_an_image"),
        "document.jpg": (PDF, "not_an_image"),
        "page.jpg": (HTML, "not_an_image"),
        "notes.txt": (TEXT, "unsupported_extension"),
        "photo.heic": (HEIC, "unsupported_extension"),
        "picture.jfif": (jpeg, "unsupported_extension"),
        "tiny.jpg": (tiny, "too_small"),
        "strip.png": (strip, "extreme_aspect"),
        "bomb.png": (bomb_png_bytes(), "decompression_bomb"),
    }


# --- source images -------------------------------------------------------------------------------


def make_source_dataset(dst: Path, tile: int = 128) -> Path:
    """Class folders of distinct JPEG tiles cut from scikit-image sample photos (offline).

    One class per photo (astronaut, coffee, rocket), one image per non-overlapping ``tile`` x
    ``tile`` px square: 12 to 16 images a class. Returns ``dst``.
    """
    from skimage import data

    for name in SKIMAGE_PHOTOS:
        photo = getattr(data, name)()
        folder = Path(dst) / name
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(photo.shape[0] // tile):
            for c in range(photo.shape[1] // tile):
                crop = photo[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
                Image.fromarray(crop).save(folder / f"{name}_{r}{c}.jpg", quality=90)
    return Path(dst)


def _source_images(source: Path) -> list[tuple[str, str | None, Image.Image]]:
    """(class, split or None, RGB image) of each distinct image under ``source``.

    The class is the parent folder's name, the split 'train' / 'valid' when a folder of that
    name is above it. Images closer than ``DISTINCT_BITS`` to an earlier one are dropped.
    """
    found, hashes = [], []
    for path in sorted(Path(source).rglob("*")):
        parts = path.relative_to(source).parts
        if path.suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in parts):
            continue
        im = load_rgb(path)
        im.thumbnail((MAX_SIDE, MAX_SIDE))
        h = dhash(im)
        if any(hamming_distance(h, other) < DISTINCT_BITS for other in hashes):
            continue
        hashes.append(h)
        split = next((p for p in parts[:-1] if p in ("train", "valid")), None)
        found.append((path.parent.name, split, im))
    return found


# --- the messy dataset -----------------------------------------------------------------------


class _Builder:
    """Writes files into the messy dataset and records what check_dataset should find."""

    def __init__(self, root: Path, layout: str):
        self.root, self.layout = root, layout
        self.good: list[Path] = []
        self.bad: dict[Path, str] = {}
        self.warnings: set[tuple[Path, str]] = set()
        self.hidden: list[Path] = []
        self.train_counts: dict[str, int] = {}

    def folder(self, cls: str, split: str = "train") -> Path:
        return self.root / split / cls if self.layout == TRAIN_VALID else self.root / cls

    def write(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def add_good(self, cls: str, name: str, data: bytes, split: str = "train") -> Path:
        path = self.write(self.folder(cls, split) / name, data)
        self.good.append(path)
        if split == "train":
            self.train_counts[cls] = self.train_counts.get(cls, 0) + 1
        return path

    def add_bad(self, path: Path, data: bytes, reason: str) -> Path:
        self.bad[self.write(path, data)] = reason
        return path

    def add_hidden(self, path: Path, data: bytes) -> None:
        self.hidden.append(self.write(path, data))


def make_messy_dataset(dst: Path, source: Path, layout: str = CLASS_FOLDERS) -> dict:
    """Build a messy dataset in ``dst`` from the good images in ``source``.

    Parameters
    ----------
    dst : new folder to build in (must not exist yet, or be empty)
    source : folder with images in class folders at any depth (the class is the parent
        folder's name), e.g. a shipped sample set or ``make_source_dataset``; needs at least
        2 classes and 30 distinct images. Images are shrunk to at most 256 px.
    layout : "class_folders" (``dst/<class>/``) or "train_valid" (``dst/train/<class>/`` and
        ``dst/valid/<class>/``; a source split is kept, else every 4th image is validation)

    Returns
    -------
    dict with
        root : Path, ``dst``
        layout : the layout
        good_files : sorted absolute paths check_dataset should keep for training
        n_good : len(good_files)
        classes : sorted classes with good training images
        bad : {path: reason code} of every file check_dataset should leave out
        warnings : {(path, reason code)} of kept files and of folders it should flag
            (near_duplicate, empty_class, single_image_class, class_imbalance at the
            default ratio of 10)
        hidden : hidden / system files it should skip without a word
    """
    dst, source = Path(dst).absolute(), Path(source)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} is not empty; give a new folder.")
    images = _source_images(source)
    classes = sorted({cls for cls, _, _ in images})
    n_special = len(ODD_FORMS) + 6
    if len(classes) < 2 or len(images) < n_special + 2 * len(classes):
        raise ValueError(
            f"{source} has {len(images)} distinct images in {len(classes)} classes; "
            f"make_messy_dataset needs at least 2 classes and {n_special + 2 * len(classes)}."
        )
    # Interleave classes so that the special cases are spread over all of them.
    by_class = {c: [(s, im) for cls, s, im in images if cls == c] for c in classes}
    order = sorted(((i, c) for c in classes for i in range(len(by_class[c]))), key=lambda ic: ic[0])
    pool = [(c, *by_class[c][i]) for i, c in order]
    specials, regular = pool[:n_special], pool[n_special:]
    b = _Builder(dst, layout)
    has_split = any(split for _, split, _ in images)

    for i, (cls, split, im) in enumerate(regular):
        if layout == TRAIN_VALID:
            split = split if has_split else ("valid" if i % 4 == 3 else "train")
        else:
            split = "train"
        b.add_good(cls, f"img_{i:03d}.jpg", encode(im, quality=90), split)

    for (cls, _, im), name in zip(specials, ODD_FORMS):
        b.add_good(cls, name, ODD_FORMS[name](im))
    extra = iter(specials[len(ODD_FORMS) :])
    _add_duplicates(b, next(extra), next(extra), next(extra), classes)
    _add_lonely_class(b, next(extra))
    if layout == TRAIN_VALID:
        _add_train_valid_leaks(b, next(extra), next(extra))
    _add_bad_files(b, regular[0][2], classes)
    _add_hidden_files(b, regular[0][2], classes)

    most = max(b.train_counts.values())
    for cls, n in b.train_counts.items():
        if n * IMBALANCE_RATIO < most:
            b.warnings.add((b.folder(cls), "class_imbalance"))
    good = sorted(b.good)
    return {
        "root": dst,
        "layout": layout,
        "good_files": good,
        "n_good": len(good),
        "classes": sorted(b.train_counts),
        "bad": b.bad,
        "warnings": b.warnings,
        "hidden": b.hidden,
    }


def _add_duplicates(b: _Builder, dup, near, conflict, classes: list[str]) -> None:
    """An exact copy, a near copy and the same image under two classes."""
    cls, _, im = dup
    data = encode(im, quality=90)
    b.add_good(cls, "dup_src.jpg", data)
    b.add_bad(b.folder(cls) / "dup_src_copy.jpg", data, "duplicate")

    cls, _, im = near
    b.add_good(cls, "near_src.jpg", encode(im, quality=90))
    smaller = im.resize((im.width * 7 // 8, im.height * 7 // 8), Image.Resampling.BICUBIC)
    copy = b.add_good(cls, "near_src_resized.jpg", encode(smaller, quality=70))
    b.warnings.add((copy, "near_duplicate"))

    _, _, im = conflict
    data = encode(im, quality=90)
    for cls in classes[:2]:
        b.add_bad(b.folder(cls) / "conflict.jpg", data, "conflicting_labels")


def _add_lonely_class(b: _Builder, lonely) -> None:
    """A class of one image, an empty class folder and a class folder of bad files only."""
    b.add_good("lonely", "only_one.jpg", encode(lonely[2], quality=90))
    b.warnings.add((b.folder("lonely"), "single_image_class"))
    b.folder("empty").mkdir(parents=True)
    b.warnings.add((b.folder("empty"), "empty_class"))
    b.add_bad(b.folder("broken") / "empty.png", b"", "zero_bytes")
    b.add_bad(b.folder("broken") / "text.png", TEXT, "not_an_image")
    b.warnings.add((b.folder("broken"), "empty_class"))


def _add_train_valid_leaks(b: _Builder, dup, near) -> None:
    """Training copies of validation images, and a validation class unknown to training."""
    cls, _, im = dup
    data = encode(im, quality=90)
    b.add_good(cls, "leak.jpg", data, split="valid")
    b.add_bad(b.folder(cls) / "leak.jpg", data, "train_valid_duplicate")

    cls, _, im = near
    b.add_good(cls, "near_leak.jpg", encode(im, quality=90), split="valid")
    smaller = im.resize((im.width * 7 // 8, im.height * 7 // 8), Image.Resampling.BICUBIC)
    b.add_bad(
        b.folder(cls) / "near_leak.jpg", encode(smaller, quality=70), "train_valid_near_duplicate"
    )

    ghost = b.folder("ghost", "valid")
    noise = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    b.add_bad(ghost / "ghost.jpg", encode(Image.fromarray(noise)), "class_not_in_train")
    b.warnings.add((ghost, "empty_class"))


def _add_bad_files(b: _Builder, im: Image.Image, classes: list[str]) -> None:
    """Every kind of bad file, spread over the class folders, plus misplaced images."""
    tiny = encode(im.resize((5, 6)), quality=90)
    strip = encode(im.resize((300, 12)), "PNG")
    cases = bad_files(encode(im, quality=90), encode(im, "PNG"), tiny, strip)
    for i, (name, (data, reason)) in enumerate(cases.items()):
        b.add_bad(b.folder(classes[i % len(classes)]) / name, data, reason)
    top = b.folder("x").parent  # dst, or dst/train
    b.add_bad(top / "stray.jpg", encode(im.rotate(90), quality=90), "misplaced")
    nested = b.folder(classes[0]) / "sub" / "nested.jpg"
    b.add_bad(nested, encode(im.rotate(270), quality=90), "misplaced")


def _add_hidden_files(b: _Builder, im: Image.Image, classes: list[str]) -> None:
    """Copies of a good image in hidden folders, and system clutter; all to be skipped."""
    data = encode(im, quality=90)
    top = b.folder("x").parent
    b.add_hidden(b.folder(classes[0]) / ".ipynb_checkpoints" / "img-checkpoint.jpg", data)
    b.add_hidden(top / ".ipynb_checkpoints" / "deep" / "copy.jpg", data)
    b.add_hidden(top / ".hidden_class" / "secret.jpg", data)
    b.add_hidden(top / "__MACOSX" / classes[0] / "._img_000.jpg", b"\x00\x05\x16\x07" * 8)
    b.add_hidden(b.folder(classes[1]) / ".DS_Store", b"\x00\x00\x00\x01Bud1" * 16)
    b.add_hidden(b.folder(classes[1]) / "Thumbs.db", b"\xd0\xcf\x11\xe0" * 16)
    b.add_hidden(b.folder(classes[0]) / ".hidden.jpg", data)
