"""Image sizes and base64 text encoding of image files."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
# EXIF orientations that rotate the picture by 90 or 270 degrees (width and height swap).
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}

ImageInput = str | Path | Image.Image | np.ndarray


def im_width_height(input: ImageInput) -> tuple[int, int]:
    """Width and height of an image, in pixels.

    Parameters
    ----------
    input : str, Path, PIL.Image.Image or numpy.ndarray
        An image file (only its header is read; an EXIF rotation by 90 or 270 degrees is
        applied, as ``load_rgb`` does), a PIL image, or an array of shape (height, width[, ...]).

    Returns
    -------
    tuple of int
        ``(width, height)``.
    """
    if isinstance(input, (str, Path)):
        with Image.open(input) as im:
            width, height = im.size
            if im.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return width, height
    if isinstance(input, Image.Image):
        return input.size
    if isinstance(input, np.ndarray):
        if input.ndim < 2:
            raise ValueError(f"An image array needs 2 or more dimensions, got shape {input.shape}")
        return int(input.shape[1]), int(input.shape[0])
    raise TypeError(f"Expected a path, PIL image or numpy array, got {type(input).__name__}")


def im_width(input: ImageInput) -> int:
    """Width of an image in pixels (see ``im_width_height`` for the accepted inputs)."""
    return im_width_height(input)[0]


def im_height(input: ImageInput) -> int:
    """Height of an image in pixels (see ``im_width_height`` for the accepted inputs)."""
    return im_width_height(input)[1]


def im2base64(im_path: str | Path) -> str:
    """The bytes of the file at ``im_path``, base64-encoded, as an ASCII string.

    The file is not decoded, so the string is the exact file (e.g. for a JSON web request).
    """
    return base64.b64encode(Path(im_path).read_bytes()).decode("ascii")


def ims2strlist(im_paths: Iterable[str | Path]) -> list[str]:
    """``im2base64`` of each file in ``im_paths``, in order."""
    return [im2base64(p) for p in im_paths]


def base642im(im_str: str) -> Image.Image:
    """Decode a base64 string made by ``im2base64`` back into a (fully loaded) PIL image."""
    im = Image.open(io.BytesIO(base64.b64decode(im_str, validate=True)))
    im.load()
    return im
