"""load_rgb / to_rgb: every readable mode becomes 8-bit RGB, upright; bombs are refused."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from messy_data import bomb_png_bytes, png_bytes
from PIL import Image, UnidentifiedImageError

from utils_cv.common.image_io import (
    BACKGROUND_RGB,
    DecompressionBombError,
    high_bit_depth_to_l,
    load_rgb,
    open_image,
    to_rgb,
)

GREY = np.array(BACKGROUND_RGB)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee()[100:196, 200:328])  # 128 x 96


def quadrants() -> Image.Image:
    """80 x 40 image of four flat colours, to check orientation despite JPEG noise."""
    a = np.zeros((40, 80, 3), np.uint8)
    a[:20, :40] = (255, 0, 0)
    a[:20, 40:] = (0, 255, 0)
    a[20:, :40] = (0, 0, 255)
    a[20:, 40:] = (255, 255, 0)
    return Image.fromarray(a)


def load_saved(tmp_path, im: Image.Image, name: str, **kwargs) -> Image.Image:
    path = tmp_path / name
    im.save(path, **kwargs)
    out = load_rgb(path)
    assert out.mode == "RGB"
    return out


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(int)


def test_rgb_is_returned_as_is(photo):
    assert to_rgb(photo) is photo


def test_jpeg_rgb(tmp_path, photo):
    out = load_saved(tmp_path, photo, "a.jpg", quality=95)
    assert out.size == photo.size
    assert np.abs(pixels(out) - pixels(photo)).mean() < 3


def test_grayscale(tmp_path, photo):
    grey = photo.convert("L")
    out = pixels(load_saved(tmp_path, grey, "g.png"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (out[..., 0] == np.asarray(grey)).all()


def test_bilevel(tmp_path, photo):
    out = pixels(load_saved(tmp_path, photo.convert("1"), "b.png"))
    assert set(np.unique(out)) <= {0, 255}


def test_palette(tmp_path, photo):
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    out = load_saved(tmp_path, palette, "p.png")
    assert (pixels(out) == pixels(palette.convert("RGB"))).all()


def test_palette_gif(tmp_path, photo):
    out = load_saved(tmp_path, photo, "p.gif")
    assert out.size == photo.size


def test_palette_with_transparency_is_composited_on_grey(tmp_path, photo):
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    index = np.asarray(palette)
    transparent = index == index[0, 0]
    out = pixels(load_saved(tmp_path, palette, "pt.png", transparency=int(index[0, 0])))
    assert (out[transparent] == GREY).all()
    assert (out[~transparent] == pixels(palette.convert("RGB"))[~transparent]).all()


def test_rgba_is_composited_on_grey(tmp_path, photo):
    alpha = np.full((photo.height, photo.width), 255, np.uint8)
    alpha[:10] = 0
    alpha[10:20] = 128
    rgba = Image.fromarray(np.dstack([np.asarray(photo), alpha]), "RGBA")
    out = pixels(load_saved(tmp_path, rgba, "a.png"))
    rgb = pixels(photo)
    assert (out[:10] == GREY).all()
    assert np.abs(out[10:20] - (rgb[10:20] + GREY) / 2).max() <= 1
    assert (out[20:] == rgb[20:]).all()


def test_la_is_composited_on_grey(tmp_path, photo):
    grey = np.asarray(photo.convert("L"))
    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[:, :8] = 0
    out = pixels(load_saved(tmp_path, Image.fromarray(np.dstack([grey, alpha]), "LA"), "la.png"))
    assert (out[:, :8] == GREY).all()
    assert (out[:, 8:, 0] == grey[:, 8:]).all()


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # pure red in ink
    out = pixels(load_saved(tmp_path, cmyk, "c.jpg", quality=95))
    assert np.abs(out - (255, 0, 0)).max() < 12


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16).repeat(4, axis=0)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = pixels(load_rgb(path))
    assert (out[0, :, 0] == [0, 64, 128, 255]).all()


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2")])
def test_16_bit_modes_in_memory(mode, dtype):
    im = Image.frombytes(mode, (2, 1), np.array([0, 65535], dtype).tobytes())
    assert pixels(to_rgb(im))[0, :, 0].tolist() == [0, 255]


def test_16_bit_rgb_png(tmp_path):
    rgb16 = np.zeros((6, 8, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1] = 65535, 257 * 128
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(rgb16))
    assert pixels(load_rgb(path))[0, 0].tolist() == [255, 128, 0]


def test_16_bit_rgba_png(tmp_path):
    rgba16 = np.zeros((6, 8, 4), np.uint16)
    rgba16[..., 2] = 65535
    rgba16[:3, :, 3] = 65535  # top half opaque blue, bottom half transparent
    path = tmp_path / "rgba16.png"
    path.write_bytes(png_bytes(rgba16))
    out = pixels(load_rgb(path))
    assert out[0, 0].tolist() == [0, 0, 255]
    assert (out[3:] == GREY).all()


def test_32_bit_int_tiff(tmp_path):
    im = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.int32), "I")
    out = pixels(load_saved(tmp_path, im, "i.tif"))
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_float_tiff(tmp_path):
    im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    out = pixels(load_saved(tmp_path, im, "f.tif"))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_high_bit_depth_out_of_range_is_stretched():
    im = Image.fromarray(np.array([[-1000, 0, 99000]], np.int32), "I")
    assert np.asarray(high_bit_depth_to_l(im)).tolist() == [[0, 3, 255]]
    flat = Image.fromarray(np.full((2, 2), 7.5, np.float32), "F")
    assert np.asarray(high_bit_depth_to_l(flat)).max() == 0


@pytest.mark.parametrize("mode", ["La", "PA", "RGBa", "YCbCr", "LAB", "HSV", "RGBX"])
def test_other_modes_in_memory(mode):
    im = Image.new("RGB", (4, 3), (10, 20, 30)).convert(mode) if mode != "PA" else None
    im = im or Image.new("PA", (4, 3))
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (4, 3)


# The transpose that a camera would have stored for each EXIF orientation.
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(STORED[orientation])
    out = load_saved(tmp_path, stored, "o.jpg", exif=exif, quality=95)
    assert out.size == upright.size
    assert np.abs(pixels(out) - pixels(upright)).mean() < 4


def test_bad_exif_orientation_is_ignored(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 42
    out = load_saved(tmp_path, quadrants(), "o.jpg", exif=exif, quality=95)
    assert out.size == (80, 40)


def test_bomb_is_refused_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png_bytes(12_000))
    start = time.perf_counter()
    with pytest.raises(DecompressionBombError, match="decompression bomb") as info:
        load_rgb(path)
    assert time.perf_counter() - start < 1.0  # 144 Mpx would take seconds and 144 MB to decode
    assert str(path) in str(info.value) and "12000 x 12000" in str(info.value)


def test_max_pixels_is_a_parameter(tmp_path, photo):
    path = tmp_path / "a.png"
    photo.save(path)
    with pytest.raises(DecompressionBombError):
        load_rgb(path, max_pixels=100 * 90)
    assert load_rgb(path, max_pixels=None).size == photo.size
    with open_image(path, max_pixels=photo.width * photo.height) as im:
        assert im.size == photo.size


def test_truncated_image_raises(tmp_path, photo):
    path = tmp_path / "t.jpg"
    photo.save(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(OSError):
        load_rgb(path)


def test_not_an_image_raises(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("hello")
    with pytest.raises(UnidentifiedImageError):
        load_rgb(path)


def test_file_is_not_changed(tmp_path, photo):
    path = tmp_path / "a.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(path, exif=exif)
    before = (hashlib.sha1(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    load_rgb(path)
    assert (hashlib.sha1(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before
