"""Reading images from disk into 8-bit RGB, whatever mode or orientation they were saved in.

``load_rgb`` is what the training data loader uses. It refuses decompression bombs (images whose
header claims more than ``MAX_PIXELS`` pixels) before decoding them, applies the EXIF
orientation and converts every readable mode: greyscale, palette (with transparency), RGBA / LA
(composited on a neutral grey), CMYK, 16-bit and 32-bit greyscale, float.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps

# Extensions (lower case) of the files the data loader picks up.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Neutral grey that transparent pixels are composited onto.
BACKGROUND_RGB = (128, 128, 128)

# Images with more pixels than this are refused without decoding (about 9,460 x 9,460; the
# limit at which Pillow starts warning). Pillow itself refuses twice this number outright.
MAX_PIXELS = 89_478_485

# Pillow's own error type, re-exported so callers need not import PIL to catch it.
DecompressionBombError = Image.DecompressionBombError

ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _prefix(fp: str | Path | IO[bytes]) -> str:
    """'<file name>: ' for error messages, or '' for a file object without a name."""
    name = fp if isinstance(fp, (str, Path)) else getattr(fp, "name", None)
    return f"{name}: " if name else ""


def open_image(fp: str | Path | IO[bytes], max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open an image lazily (header only) and refuse it if it has more than ``max_pixels`` pixels.

    Parameters
    ----------
    fp : path or binary file object
    max_pixels : width x height above which the image is refused; None for no limit of ours
        (Pillow still refuses more than ``2 * Image.MAX_IMAGE_PIXELS``).

    Returns
    -------
    The opened, not yet decoded, ``PIL.Image``; use it as a context manager or close it.

    Raises
    ------
    DecompressionBombError : too many pixels; nothing was decoded.
    PIL.UnidentifiedImageError : not an image Pillow can read.
    """
    try:
        im = Image.open(fp)
    except DecompressionBombError as e:
        raise DecompressionBombError(
            f"{_prefix(fp)}refused as a possible decompression bomb ({e}); not decoded."
        ) from None
    n_pixels = im.width * im.height
    if max_pixels is not None and n_pixels > max_pixels:
        im.close()
        raise DecompressionBombError(
            f"{_prefix(fp)}{im.width} x {im.height} = {n_pixels:,} pixels exceeds the limit of "
            f"{max_pixels:,}; refused as a possible decompression bomb, not decoded."
        )
    return im


def apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Return ``im`` rotated / flipped as its EXIF Orientation tag says (``im`` itself if upright).

    A missing or unreadable EXIF block counts as upright.
    """
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # broken EXIF must not make a readable image unreadable
        return im
    if orientation not in range(2, 9):
        return im
    return ImageOps.exif_transpose(im)


def high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float greyscale image to 8-bit ``L``.

    ``I;16*``: 0..65535 -> 0..255. ``I``: the same when the values fit in 16 bits, else the
    min..max range is stretched to 0..255. ``F``: 0..1 -> 0..255 when the values lie in 0..1,
    else min..max is stretched.
    """
    values = np.asarray(im, dtype=np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        scaled = values / 257
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255
    else:
        scaled = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def has_alpha(im: Image.Image) -> bool:
    """True when ``im`` has an alpha channel or a transparent colour (palette / tRNS key)."""
    return im.mode in ALPHA_MODES or "transparency" in im.info


def composite_on_background(im: Image.Image, rgb: tuple[int, int, int] = BACKGROUND_RGB):
    """Flatten an image with transparency onto a plain ``rgb`` background; returns RGB."""
    if im.mode == "La":
        im = im.convert("LA")
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*rgb, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Return ``im`` as an 8-bit RGB image, upright.

    EXIF orientation is applied; transparency (RGBA, LA, PA, palette or colour-key) is
    composited on ``BACKGROUND_RGB``; 16-bit / 32-bit / float greyscale is scaled to 8 bits
    (see ``high_bit_depth_to_l``); greyscale, 1-bit, palette, CMYK, YCbCr, LAB and HSV are
    converted. Pillow already reads 16-bit-per-channel RGB(A) PNGs as 8-bit RGB(A).
    An RGB image without EXIF rotation is returned as is (not copied).
    """
    im = apply_exif_orientation(im)
    if im.mode == "RGB":
        return im
    if im.mode in HIGH_BIT_DEPTH_MODES:
        im = high_bit_depth_to_l(im)
    elif has_alpha(im):
        return composite_on_background(im)
    return im.convert("RGB")


def load_rgb(
    path: str | Path, max_pixels: int | None = MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Open the image at ``path`` and return it as 8-bit RGB (see ``to_rgb``).

    Parameters
    ----------
    path : image file; it is only read, never changed. Anything but a regular file (a named
        pipe, a device) is refused before it is opened.
    max_pixels : refuse images with more pixels than this (see ``open_image``).
    draft_size : when given, a JPEG is decoded at the smallest of 1/1, 1/2, 1/4 or 1/8 scale
        whose sides are both still at least ``draft_size`` pixels (Pillow's draft mode: the
        decoder skips the detail, so a 12-megapixel photo for a 224-pixel model decodes several
        times faster in a fraction of the memory). Training and prediction pass the same size,
        so they see the same pixels.

    Raises
    ------
    DecompressionBombError : the header claims more than ``max_pixels`` pixels; not decoded.
    PIL.UnidentifiedImageError : not an image.
    OSError : not a regular file, truncated or corrupt image data.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"{path}: not a regular file (a pipe, device or folder); not read")
    with warnings.catch_warnings():
        # Pillow warns about the images ``open_image`` refuses anyway (same default limit).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = open_image(path, max_pixels)
    return decode_rgb(im, draft_size)


def decode_rgb(im: Image.Image, draft_size: int | None = None) -> Image.Image:
    """Decode an opened image (see ``open_image``) to 8-bit RGB, closing it; ``draft_size``
    as in ``load_rgb``."""
    with im:
        if draft_size and im.format == "JPEG":
            im.draft(None, (draft_size, draft_size))
        im.load()
        return to_rgb(im)
