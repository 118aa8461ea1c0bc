"""Reading images from disk into RGB, whatever mode or orientation they were saved in."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

# Neutral grey that transparent pixels are composited onto.
BACKGROUND_RGB = (128, 128, 128)


def to_rgb(im: Image.Image) -> Image.Image:
    """Return ``im`` as an 8-bit RGB image: EXIF orientation applied, alpha composited on grey."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 0..255 instead of clipping.
        im = im.point(lambda v: v * (1 / 256)).convert("L")
    return im.convert("RGB") if im.mode != "RGB" else im


def load_rgb(path: str | Path) -> Image.Image:
    """Open the image at ``path`` and return it as RGB (see ``to_rgb``); the file is not changed."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)
