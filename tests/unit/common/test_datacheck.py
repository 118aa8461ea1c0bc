"""File-level checks: one test per reason code, the perceptual hash and duplicate grouping."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pytest
from messy_data import HEIC, HTML, PDF, TEXT, bomb_png_bytes, encode
from PIL import Image

from utils_cv.common.datacheck import (
    check_image_file,
    check_image_files,
    describe_content,
    dhash,
    group_exact_duplicates,
    group_near_duplicates,
    group_pairs,
    hamming_distance,
    near_duplicate_pairs,
)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    from skimage import data

    return [
        Image.fromarray(data.coffee()[50:250, 100:400]),
        Image.fromarray(data.chelsea()[:200, 100:400]),
        Image.fromarray(data.astronaut()[:200, :300]),
        Image.fromarray(data.rocket()[100:300, 200:500]),
    ]


@pytest.fixture
def photo(photos) -> Image.Image:
    return photos[0]


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def check_bytes(tmp_path, name: str, data: bytes, **kwargs):
    return check_image_file(write(tmp_path, name, data), **kwargs)


# --- good files ---------------------------------------------------------------------------------


def test_good_jpeg_has_all_fields(tmp_path, photo):
    data = encode(photo, quality=90)
    check = check_bytes(tmp_path, "a.jpg", data)
    assert check.ok and check.reason == "" and check.detail == ""
    assert (check.width, check.height, check.format) == (300, 200, "JPEG")
    assert check.sha1 == hashlib.sha1(data).hexdigest()
    assert 0 <= check.dhash < 2**64 and 0 <= check.mean <= 255


@pytest.mark.parametrize(
    "name, format", [("png_named.jpg", "PNG"), ("UPPER.JPG", "JPEG"), ("café_猫.PNG", "PNG")]
)
def test_content_decides_not_the_extension_case_or_name(tmp_path, photo, name, format):
    check = check_bytes(tmp_path, name, encode(photo, format))
    assert check.ok and check.format == format


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_readable_modes_are_ok(tmp_path, photo, mode):
    format = "JPEG" if mode == "CMYK" else "PNG"
    check = check_bytes(tmp_path, f"m.{format.lower()}", encode(photo.convert(mode), format))
    assert check.ok


def test_min_size_is_inclusive(tmp_path, photo):
    path = write(tmp_path, "a.png", encode(photo.resize((40, 32)), "PNG"))
    assert check_image_file(path, min_size=32).ok
    assert not check_image_file(path, min_size=33).ok


# --- bad files, one per reason ------------------------------------------------------------------


def test_zero_bytes(tmp_path):
    check = check_bytes(tmp_path, "empty.jpg", b"")
    assert (check.ok, check.reason) == (False, "zero_bytes")


def test_unreadable(tmp_path):
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    check = check_image_file(link)
    assert (check.ok, check.reason) == (False, "unreadable")
    assert check_image_file(tmp_path).reason == "not_a_file"  # a folder


@pytest.mark.parametrize(
    "name, data, content",
    [
        ("notes.txt", TEXT, "text"),
        ("photo.heic", HEIC, "HEIC"),
        ("no_extension", TEXT, "text"),
        ("picture.jfif", None, "a JPEG image of 300 x 200 px"),
    ],
)
def test_unsupported_extension(tmp_path, photo, name, data, content):
    check = check_bytes(tmp_path, name, data or encode(photo))
    assert (check.ok, check.reason) == (False, "unsupported_extension")
    assert content in check.detail


def test_extensions_can_be_chosen(tmp_path, photo):
    path = write(tmp_path, "picture.jfif", encode(photo))
    assert check_image_file(path, extensions=(".jfif",)).ok
    assert not check_image_file(path, extensions=(".png",)).ok


@pytest.mark.parametrize(
    "data, content",
    [
        (TEXT, "text"),
        (PDF, "a PDF document"),
        (HTML, "an HTML page"),
        (b"<?xml version='1.0'?><svg></svg>", "SVG"),
        (b"PK\x03\x04" + bytes(100), "ZIP"),
        (bytes(range(256)) * 4, "binary"),
    ],
)
def test_not_an_image(tmp_path, data, content):
    check = check_bytes(tmp_path, "fake.jpg", data)
    assert (check.ok, check.reason) == (False, "not_an_image")
    assert content in check.detail


def test_describe_content_handles_cut_utf8():
    assert describe_content(("é" * 600).encode()[:1023] + b"...") == "text"


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated(tmp_path, photo, format):
    data = encode(photo, format)
    check = check_bytes(tmp_path, f"t.{format.lower()}", data[: len(data) // 2])
    assert (check.ok, check.reason) == (False, "corrupt")
    assert "truncated" in check.detail
    assert check.width == 300  # the header was still read


def test_corrupt_jpeg_data(tmp_path, photo):
    data = encode(photo)
    start = data.index(b"\xff\xda") + 20
    noise = np.random.default_rng(0).integers(0, 256, 8000, dtype=np.uint8).tobytes()
    check = check_bytes(tmp_path, "g.jpg", data[:start] + noise)
    assert (check.ok, check.reason) == (False, "corrupt")


def test_degenerate_images_are_refused_small_ones_kept(tmp_path, photo):
    check = check_bytes(tmp_path, "tiny.jpg", encode(photo.resize((7, 40))))
    assert (check.ok, check.reason) == (False, "too_small")
    assert "7 x 40" in check.detail
    strip = check_bytes(tmp_path, "strip.png", encode(photo.resize((420, 20)), "PNG"))
    assert (strip.ok, strip.reason) == (False, "extreme_aspect")
    assert "420 x 20" in strip.detail
    # small images are upscaled when training: a 28 x 28 greyscale digit is fine
    small = check_bytes(tmp_path, "digit.png", encode(photo.resize((28, 28)).convert("L"), "PNG"))
    assert small.ok and (small.width, small.height) == (28, 28)
    assert check_bytes(tmp_path, "wide.png", encode(photo.resize((400, 20)), "PNG")).ok


def test_pipes_and_devices_are_refused_before_any_read(tmp_path):
    import os
    import threading

    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    result = []
    worker = threading.Thread(target=lambda: result.append(check_image_file(fifo)), daemon=True)
    worker.start()
    worker.join(10)  # on the old code the read blocks forever
    assert result, "check_image_file blocked on a named pipe"
    assert (result[0].ok, result[0].reason) == (False, "not_a_file")
    assert "named pipe" in result[0].detail
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    check = check_image_file(zero)
    assert (check.ok, check.reason) == (False, "not_a_file")
    assert "character device" in check.detail
    assert check_image_file(tmp_path).reason == "not_a_file"


def test_oversized_files_are_not_read(tmp_path, monkeypatch):
    from utils_cv.common import datacheck

    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff\xd8" + b"\x00" * 5000)
    monkeypatch.setattr(datacheck, "MAX_FILE_BYTES", 1000)
    check = datacheck.check_image_file(path)
    assert (check.ok, check.reason) == (False, "too_large")


def test_decompression_bomb_is_refused_fast(tmp_path):
    path = write(tmp_path, "bomb.png", bomb_png_bytes(12_000))
    start = time.perf_counter()
    check = check_image_file(path)
    assert time.perf_counter() - start < 1.0
    assert (check.ok, check.reason) == (False, "decompression_bomb")
    assert "144,000,000 pixels" in check.detail


def test_max_pixels(tmp_path, photo):
    path = write(tmp_path, "a.jpg", encode(photo))
    assert check_image_file(path, max_pixels=300 * 200).ok
    assert check_image_file(path, max_pixels=300 * 200 - 1).reason == "decompression_bomb"


# --- perceptual hash ------------------------------------------------------------------------------


def test_dhash_survives_reencoding_resizing_and_brightness(photo):
    h = dhash(photo)
    recoded = Image.open(io.BytesIO(encode(photo, quality=30)))
    brighter = Image.fromarray(np.clip(np.asarray(photo).astype(int) + 40, 0, 255).astype(np.uint8))
    assert hamming_distance(h, dhash(recoded)) <= 3
    assert hamming_distance(h, dhash(photo.resize((150, 100)))) <= 3
    assert hamming_distance(h, dhash(brighter)) <= 3


def test_dhash_tells_different_photos_apart(photos):
    hashes = [dhash(p) for p in photos]
    distances = [hamming_distance(a, b) for i, a in enumerate(hashes) for b in hashes[:i]]
    assert min(distances) > 12


def test_dhash_size():
    im = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
    assert dhash(im) == 2**64 - 1  # brighter to the right everywhere
    assert dhash(im, hash_size=16) == 2**256 - 1


def test_exif_rotated_copy_hashes_like_the_upright_image(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(photo.transpose(Image.Transpose.ROTATE_90), exif=exif, quality=95)
    upright = check_bytes(tmp_path, "u.jpg", encode(photo, quality=95))
    turned = check_bytes(tmp_path, "r.jpg", rotated)
    assert hamming_distance(upright.dhash, turned.dhash) <= 3


def test_hamming_distance():
    assert hamming_distance(0, 0) == 0
    assert hamming_distance(0b1011, 0b0001) == 2
    assert hamming_distance(2**64 - 1, 0) == 64


# --- duplicates -----------------------------------------------------------------------------------


def test_group_exact_duplicates():
    assert group_exact_duplicates(["a", "b", "a", None, None, "c", "a", "b"]) == [[0, 2, 6], [1, 7]]
    assert group_exact_duplicates(["a", "b"]) == []


def test_near_duplicate_pairs():
    hashes = [0b0000, 0b0011, 2**64 - 1, 0b1111, 2**64 - 2]
    assert near_duplicate_pairs(hashes, max_distance=2) == [(0, 1, 2), (1, 3, 2), (2, 4, 1)]
    assert near_duplicate_pairs(hashes, max_distance=0) == []


def test_near_duplicate_pairs_blocks_agree_with_brute_force():
    hashes = [int(h) for h in np.random.default_rng(0).integers(0, 2**16, 3000)]  # 48 zero bits
    pairs = near_duplicate_pairs(hashes, max_distance=1)
    brute = [
        (i, j)
        for i in range(300)
        for j in range(i + 1, 3000)
        if (hashes[i] ^ hashes[j]).bit_count() <= 1
    ]
    assert [(i, j) for i, j, _ in pairs if i < 300] == brute


def test_means_separate_flat_black_from_flat_white():
    hashes, means = [0, 0, 0], [0.0, 255.0, 10.0]
    assert near_duplicate_pairs(hashes) == [(0, 1, 0), (0, 2, 0), (1, 2, 0)]
    assert near_duplicate_pairs(hashes, means=means) == [(0, 2, 0)]


def test_groups_are_transitive():
    assert group_pairs(6, [(0, 1, 1), (1, 4, 2), (2, 5, 0)]) == [[0, 1, 4], [2, 5]]
    assert group_near_duplicates([0b0, 0b1, 0b11, 2**40 - 1]) == [[0, 1, 2]]


# --- many files ----------------------------------------------------------------------------------


def test_check_image_files_keeps_order_with_threads(tmp_path, photos):
    paths = [write(tmp_path, f"{i}.jpg", encode(p.rotate(i))) for i, p in enumerate(photos * 3)]
    paths.insert(3, write(tmp_path, "empty.jpg", b""))
    one = check_image_files(paths, workers=1)
    two = check_image_files(paths, workers=2, progress=True)
    assert [c.path for c in two] == paths
    assert one == two
    assert [c.ok for c in two].count(False) == 1 and two[3].reason == "zero_bytes"


def test_check_image_files_does_not_warn_about_bombs(tmp_path, recwarn):
    check_image_files([write(tmp_path, "bomb.png", bomb_png_bytes(12_000))])
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
