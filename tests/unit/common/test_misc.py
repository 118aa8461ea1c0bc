"""utils_cv.common.misc: seeding, copying files into folders, timing."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from utils_cv.common.misc import Timer, copy_files, set_random_seed


def draws() -> tuple:
    """One random draw from each of Python, numpy and torch."""
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_set_random_seed_repeats_draws():
    set_random_seed(7)
    first = draws()
    set_random_seed(7)
    assert draws() == first
    set_random_seed(8)
    assert draws() != first
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False


@pytest.fixture
def class_files(tmp_path):
    """src/cat/1.jpg, src/cat/2.jpg and src/dog/1.jpg with distinct contents."""
    files = []
    for cls, name in [("cat", "1.jpg"), ("cat", "2.jpg"), ("dog", "1.jpg")]:
        path = tmp_path / "src" / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{cls}/{name}".encode())
        files.append(path)
    return files


def test_copy_files_into_new_folder(class_files, tmp_path):
    dst = tmp_path / "out" / "nested"
    copied = copy_files(class_files[:2], dst)
    assert copied == [dst / "1.jpg", dst / "2.jpg"]
    assert (dst / "1.jpg").read_bytes() == b"cat/1.jpg"
    assert (dst / "2.jpg").read_bytes() == b"cat/2.jpg"
    assert all(p.exists() for p in class_files)  # copied, not moved


def test_copy_files_infer_subdir_keeps_class_folders(class_files, tmp_path):
    dst = tmp_path / "out"
    copied = copy_files(class_files, dst, infer_subdir=True)
    assert copied == [dst / "cat" / "1.jpg", dst / "cat" / "2.jpg", dst / "dog" / "1.jpg"]
    assert [p.read_bytes() for p in copied] == [b"cat/1.jpg", b"cat/2.jpg", b"dog/1.jpg"]


def test_copy_files_remove_moves(class_files, tmp_path):
    dst = tmp_path / "out"
    moved = copy_files(class_files, dst, infer_subdir=True, remove=True)
    assert not any(p.exists() for p in class_files)
    assert (dst / "dog" / "1.jpg").read_bytes() == b"dog/1.jpg"
    assert len(moved) == 3


def test_copy_files_single_path(class_files, tmp_path):
    assert copy_files(str(class_files[2]), tmp_path / "out") == [tmp_path / "out" / "1.jpg"]
    assert (tmp_path / "out" / "1.jpg").read_bytes() == b"dog/1.jpg"


def test_copy_files_identical_existing_file_is_fine(class_files, tmp_path):
    dst = tmp_path / "out"
    copy_files(class_files[:1], dst)
    assert copy_files(class_files[:1], dst) == [dst / "1.jpg"]
    copy_files(class_files[:1], dst, remove=True)
    assert not class_files[0].exists()
    assert (dst / "1.jpg").read_bytes() == b"cat/1.jpg"


def test_copy_files_never_overwrites_a_different_file(class_files, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "2.jpg").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="2.jpg"):
        copy_files(class_files[:2], dst)
    assert (dst / "2.jpg").read_bytes() == b"someone else's"
    assert not (dst / "1.jpg").exists()  # checked before copying anything


def test_copy_files_refuses_two_sources_on_one_destination(class_files, tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(FileExistsError, match="both"):
        copy_files([class_files[0], class_files[2]], dst)  # cat/1.jpg and dog/1.jpg
    assert not dst.exists()


def test_copy_files_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        copy_files([tmp_path / "nope.jpg"], tmp_path / "out")


def test_timer_measures_the_block():
    with Timer() as t:
        time.sleep(0.05)
        assert 0 < t.elapsed < 5
    elapsed = t.elapsed
    assert 0.05 <= elapsed < 5
    time.sleep(0.01)
    assert t.elapsed == elapsed  # frozen once the block ends
    assert str(t) == f"{elapsed:.2f} s"


def test_timer_not_started():
    with pytest.raises(RuntimeError, match="with Timer"):
        _ = Timer().elapsed
