"""utils_cv.common.image on real images (skimage sample photos) saved to disk."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from utils_cv.common.image import (
    base642im,
    im2base64,
    im_height,
    im_width,
    im_width_height,
    ims2strlist,
)
from utils_cv.common.image_io import load_rgb

EXIF_ORIENTATION = 0x0112


@pytest.fixture
def coffee_png(tmp_path):
    """skimage's coffee photo (600 wide, 400 high) saved as PNG."""
    path = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).save(path)
    return path


@pytest.fixture
def camera_jpg(tmp_path):
    """skimage's greyscale camera photo (512 x 512) saved as JPEG."""
    path = tmp_path / "camera.jpg"
    Image.fromarray(skdata.camera()).save(path, quality=90)
    return path


def test_sizes_of_files(coffee_png, camera_jpg):
    assert im_width_height(coffee_png) == (600, 400)
    assert im_width_height(str(coffee_png)) == (600, 400)
    assert im_width(coffee_png) == 600
    assert im_height(coffee_png) == 400
    assert im_width_height(camera_jpg) == (512, 512)


def test_sizes_of_pil_images_and_arrays(coffee_png):
    im = Image.open(coffee_png)
    assert im_width_height(im) == (600, 400)
    chelsea = skdata.chelsea()  # shape (300, 451, 3)
    assert im_width_height(chelsea) == (451, 300)
    assert im_width(chelsea) == 451
    assert im_height(chelsea) == 300
    assert im_width_height(skdata.camera()) == (512, 512)  # 2-D greyscale array
    assert im_width_height(np.zeros((7, 5, 4), dtype=np.uint8)) == (5, 7)


def test_exif_rotation_swaps_width_and_height(tmp_path):
    """An EXIF 'rotate 90' photo is as wide as load_rgb shows it, not as stored."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(skdata.coffee()).save(path, exif=exif)
    assert Image.open(path).size == (600, 400)  # as stored
    assert im_width_height(path) == (400, 600)
    assert im_width_height(path) == load_rgb(path).size


def test_size_rejects_other_inputs():
    with pytest.raises(TypeError, match="list"):
        im_width([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="shape"):
        im_height(np.zeros(5))


def test_im2base64_is_the_file_bytes(coffee_png):
    encoded = im2base64(coffee_png)
    assert isinstance(encoded, str)
    assert encoded.isascii()
    assert base64.b64decode(encoded) == coffee_png.read_bytes()
    assert encoded.startswith("iVBORw0KGgo")  # base64 of the PNG signature


def test_base642im_round_trip(coffee_png, camera_jpg):
    im = base642im(im2base64(coffee_png))
    assert im.format == "PNG"
    np.testing.assert_array_equal(np.asarray(im), skdata.coffee())
    jpg = base642im(im2base64(camera_jpg))
    assert jpg.format == "JPEG"
    np.testing.assert_array_equal(np.asarray(jpg), np.asarray(Image.open(camera_jpg)))


def test_base642im_rejects_non_base64():
    with pytest.raises(ValueError):
        base642im("not base64!")


def test_ims2strlist(coffee_png, camera_jpg):
    strs = ims2strlist([coffee_png, camera_jpg, str(coffee_png)])
    assert strs == [im2base64(coffee_png), im2base64(camera_jpg), im2base64(coffee_png)]
    assert base64.b64decode(strs[1]) == camera_jpg.read_bytes()
    assert ims2strlist([]) == []
