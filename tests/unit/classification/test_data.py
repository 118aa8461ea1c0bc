"""Classification data: sample sets, dataset URLs, image listing, splits, resizing, loaders."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from utils_cv.classification.data import (
    SAMPLE_DATA_DIR,
    SAMPLE_DATASETS,
    Urls,
    describe_split,
    downsize_imagelist,
    get_image_files,
    imagenet_labels,
    is_data_multilabel,
    sample_data_path,
)
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import is_multilabel_dls

CLASSES = ["apple", "citrus", "flower", "tool"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def item_paths(dataset) -> list[Path]:
    """The image paths of a fastai Datasets, whether its items are paths or DataFrame rows."""
    items = dataset.items
    if isinstance(items, pd.DataFrame):
        return sorted(Path(p) for p in items["path"])
    return sorted(Path(p) for p in items)


def write_image(path: Path, size=(40, 30), color=(200, 30, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


# --- sample sets, URLs, ImageNet labels -------------------------------------------------------


def test_sample_data_path_for_every_set():
    for name, folder in SAMPLE_DATASETS.items():
        path = sample_data_path(name)
        assert path == SAMPLE_DATA_DIR / folder
        assert path.is_dir()
    assert sample_data_path() == SAMPLE_DATA_DIR / "objects"


def test_sample_data_path_unknown_name_lists_the_sets():
    with pytest.raises(ValueError, match="Unknown sample set 'fridge'") as info:
        sample_data_path("fridge")
    for name in SAMPLE_DATASETS:
        assert name in str(info.value)


def test_urls_are_the_public_zip_archives():
    urls = Urls.all()
    assert len(urls) == 15
    assert len(set(urls)) == len(urls)
    assert all(u.startswith(Urls.base + "/") and u.endswith(".zip") for u in urls)
    assert Urls.fridge_objects_path in urls
    assert Urls.multilabel_fridge_objects_tiny_path.endswith("/multilabelFridgeObjectsTiny.zip")
    assert Urls.base not in urls


def test_imagenet_labels_in_model_output_order():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[:3] == ["tench", "goldfish", "great white shark"]
    assert labels[967] == "espresso"
    assert labels[281] == "tabby"


# --- listing images ----------------------------------------------------------------------------


def test_get_image_files_skips_hidden_and_non_images(tmp_path):
    keep = [
        write_image(tmp_path / "a" / "1.jpg"),
        write_image(tmp_path / "a" / "2.PNG"),
        write_image(tmp_path / "b" / "sub" / "3.jpeg"),
    ]
    write_image(tmp_path / "a" / ".hidden.jpg")
    write_image(tmp_path / ".ipynb_checkpoints" / "4.jpg")
    write_image(tmp_path / "b" / ".cache" / "5.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "folder.jpg").mkdir()
    assert get_image_files(tmp_path) == sorted(keep)
    assert get_image_files(tmp_path / "a") == keep[:2]
    assert get_image_files(tmp_path, recurse=False) == []
    assert get_image_files(tmp_path / "a", recurse=False) == keep[:2]


def test_get_image_files_of_a_sample_set(objects_tiny):
    files = get_image_files(objects_tiny)
    assert len(files) == 24
    assert files == sorted(files)
    assert all(f.suffix == ".jpg" and f.is_absolute() for f in files)


# --- layouts ---------------------------------------------------------------------------------


def test_is_data_multilabel(objects_tiny, multilabel_tiny, tmp_path):
    assert is_data_multilabel(multilabel_tiny)
    assert is_data_multilabel(multilabel_tiny / "labels.csv")
    assert not is_data_multilabel(objects_tiny)
    assert not is_data_multilabel(tmp_path / "missing")
    (tmp_path / "labels.csv").write_text("filename,labels\na.jpg,apple\nb.jpg,tool\n")
    assert not is_data_multilabel(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,labels\na.jpg,apple\nb.jpg,tool apple\n")
    assert is_data_multilabel(tmp_path)


def test_describe_split(objects_tiny, multilabel_tiny, tmp_path):
    assert describe_split(objects_tiny) == "folders"
    assert describe_split(multilabel_tiny) == "column"
    assert describe_split(tmp_path) == "random"
    (tmp_path / "labels.csv").write_text("filename,labels\na.jpg,apple\n")
    assert describe_split(tmp_path) == "random"
    (tmp_path / "train").mkdir()
    assert describe_split(tmp_path) == "random"  # valid/ is missing
    (tmp_path / "valid").mkdir()
    assert describe_split(tmp_path) == "folders"


# --- downsize_imagelist ------------------------------------------------------------------------


def test_downsize_keeps_structure_and_never_touches_originals(objects_tiny, tmp_path):
    sources = [
        objects_tiny / "valid" / "tool" / "tool_0031.jpg",
        objects_tiny / "train" / "apple" / "apple_0001.jpg",
        objects_tiny / "train" / "citrus" / "citrus_0002.jpg",
    ]
    before = {p: sha256(p) for p in sources}
    out = downsize_imagelist(sources, tmp_path / "small", dim=100)
    assert out == [
        tmp_path / "small" / "valid" / "tool" / "tool_0031.jpg",
        tmp_path / "small" / "train" / "apple" / "apple_0001.jpg",
        tmp_path / "small" / "train" / "citrus" / "citrus_0002.jpg",
    ]
    for path in out:
        with Image.open(path) as im:
            assert im.size == (100, 75)  # 320x240, longer side to 100
            assert im.format == "JPEG" and im.mode == "RGB"
    assert {p: sha256(p) for p in sources} == before


def test_downsize_with_root_png_and_small_images(tmp_path):
    big = write_image(tmp_path / "data" / "cats" / "big.png", size=(300, 600), mode="RGBA")
    small = write_image(tmp_path / "data" / "dogs" / "small.png", size=(20, 10))
    out = downsize_imagelist([big, small], tmp_path / "out", dim=50, root=tmp_path)
    assert out == [
        tmp_path / "out" / "data" / "cats" / "big.png",
        tmp_path / "out" / "data" / "dogs" / "small.png",
    ]
    with Image.open(out[0]) as im:
        assert (im.format, im.size, im.mode) == ("PNG", (25, 50), "RGB")
    with Image.open(out[1]) as im:
        assert im.size == (20, 10)  # never enlarged
    with Image.open(big) as im:
        assert (im.size, im.mode) == ((300, 600), "RGBA")


def test_downsize_refuses_to_write_over_the_originals(objects_tiny):
    sources = sorted((objects_tiny / "train" / "apple").glob("*.jpg"))
    before = {p: sha256(p) for p in sources}
    with pytest.raises(ValueError, match="out_dir must differ"):
        downsize_imagelist(sources, objects_tiny / "train" / "apple", dim=50)
    with pytest.raises(ValueError, match="out_dir must differ"):
        downsize_imagelist(
            sources, objects_tiny / "train" / ".." / "train", root=objects_tiny / "train"
        )
    assert {p: sha256(p) for p in sources} == before
    assert sorted((objects_tiny / "train" / "apple").iterdir()) == sources


# --- get_dls --------------------------------------------------------------------------------


def test_get_dls_train_valid_folders(objects_tiny, make_dls):
    dls = make_dls(objects_tiny)
    assert len(dls.train_ds) == 16
    assert len(dls.valid_ds) == 8
    assert list(dls.vocab) == CLASSES
    assert dls.c == 4
    assert not is_multilabel_dls(dls)
    assert item_paths(dls.train_ds) == sorted((objects_tiny / "train").rglob("*.jpg"))
    assert item_paths(dls.valid_ds) == sorted((objects_tiny / "valid").rglob("*.jpg"))
    # Labels come from the class folder.
    for path, (_, label) in zip(dls.valid_ds.items, dls.valid_ds):
        assert dls.vocab[int(label)] == Path(path).parent.name
    x, y = dls.valid.one_batch()
    assert x.shape == (8, 3, 64, 64)
    assert y.shape == (8,)
    # Normalised with mean 0.5, std 0.5: pixel values 0..1 become -1..1.
    assert -1.0 <= float(x.min()) < 0 < float(x.max()) <= 1.0


def test_get_dls_labels_csv_with_is_valid_column(multilabel_tiny, make_dls):
    df = pd.read_csv(multilabel_tiny / "labels.csv")
    dls = make_dls(multilabel_tiny)
    assert is_multilabel_dls(dls)
    assert len(dls.train_ds) == int((~df["is_valid"]).sum()) == 15
    assert len(dls.valid_ds) == int(df["is_valid"].sum()) == 5
    assert list(dls.vocab) == CLASSES
    valid_files = sorted(multilabel_tiny / "images" / f for f in df.loc[df["is_valid"], "filename"])
    assert item_paths(dls.valid_ds) == valid_files
    # Targets are multi-hot rows matching labels.csv.
    expected = {row.filename: set(row.labels.split()) for row in df.itertuples()}
    for path, (_, target) in zip(dls.valid_ds.items["path"], dls.valid_ds):
        labels = {dls.vocab[i] for i in torch.nonzero(target).flatten().tolist()}
        assert labels == expected[Path(path).name]
    x, y = dls.valid.one_batch()
    assert x.shape == (5, 3, 64, 64)
    assert y.shape == (5, 4)


def test_get_dls_single_label_csv_and_forced_multilabel(tmp_path, objects_tiny, make_dls):
    rows = []
    for i, src in enumerate(sorted((objects_tiny / "train").rglob("*.jpg"))):
        shutil.copy(src, tmp_path / src.name)
        rows.append(f"{src.name},{src.parent.name},{i % 4 == 0}")
    (tmp_path / "labels.csv").write_text("filename,labels,is_valid\n" + "\n".join(rows) + "\n")
    dls = make_dls(tmp_path)
    assert not is_multilabel_dls(dls)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (12, 4)
    assert list(dls.vocab) == CLASSES
    forced = make_dls(tmp_path, multilabel=True)
    assert is_multilabel_dls(forced)
    assert forced.valid.one_batch()[1].shape == (4, 4)


def make_class_folders(src: Path, dst: Path) -> list[Path]:
    """A plain class-folder set (no train/valid split): copies of objects_tiny/train."""
    out = []
    for path in sorted((src / "train").rglob("*.jpg")):
        target = dst / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        out.append(target)
    return out


def test_get_dls_random_split_of_class_folders(objects_tiny, tmp_path, make_dls):
    files = make_class_folders(objects_tiny, tmp_path / "data")
    dls = make_dls(tmp_path / "data", valid_pct=0.25, seed=1)
    train, valid = item_paths(dls.train_ds), item_paths(dls.valid_ds)
    assert (len(train), len(valid)) == (12, 4)
    assert sorted(train + valid) == files
    assert list(dls.vocab) == CLASSES
    again = make_dls(tmp_path / "data", valid_pct=0.25, seed=1)
    assert item_paths(again.valid_ds) == valid
    other = make_dls(tmp_path / "data", valid_pct=0.25, seed=2)
    assert item_paths(other.valid_ds) != valid
    half = make_dls(tmp_path / "data", valid_pct=0.5, seed=1)
    assert len(half.valid_ds) == 8


def test_get_dls_files_absolute_paths(objects_tiny, make_dls):
    files = [
        objects_tiny / "train" / cls / f"{cls}_000{i}.jpg" for cls in CLASSES for i in (1, 2)
    ] + [objects_tiny / "valid" / cls / f"{cls}_0031.jpg" for cls in CLASSES]
    dls = make_dls(objects_tiny, files=files)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (8, 4)
    assert item_paths(dls.train_ds) + item_paths(dls.valid_ds) == sorted(files)


def test_get_dls_files_relative_to_the_working_directory(objects_tiny, make_dls, monkeypatch):
    monkeypatch.chdir(objects_tiny)
    files = [
        "train/apple/apple_0001.jpg",
        "train/tool/tool_0004.jpg",
        "valid/citrus/citrus_0032.jpg",
    ]
    dls = make_dls(objects_tiny, files=files)
    assert item_paths(dls.train_ds) == [objects_tiny / f for f in files[:2]]
    assert item_paths(dls.valid_ds) == [objects_tiny / files[2]]


def test_get_dls_files_with_labels_csv(multilabel_tiny, make_dls, monkeypatch):
    df = pd.read_csv(multilabel_tiny / "labels.csv")
    keep = df.iloc[::2]  # 10 of the 20 images
    files = [multilabel_tiny / "images" / f for f in keep["filename"]]
    dls = make_dls(multilabel_tiny, files=files)
    assert len(dls.train_ds) == int((~keep["is_valid"]).sum())
    assert len(dls.valid_ds) == int(keep["is_valid"].sum())
    assert item_paths(dls.train_ds) + item_paths(dls.valid_ds) == sorted(files)
    monkeypatch.chdir(multilabel_tiny)
    relative = make_dls(multilabel_tiny, files=[f"images/{f}" for f in keep["filename"]])
    assert item_paths(relative.valid_ds) == item_paths(dls.valid_ds)


def test_get_dls_missing_folder(tmp_path, make_dls):
    with pytest.raises(FileNotFoundError, match="Data folder not found: .*no_such_folder"):
        make_dls(tmp_path / "no_such_folder")


def test_get_dls_files_outside_the_data_folder(objects_tiny, make_dls):
    outside = sample_data_path("negatives_tiny") / "negative_0001.jpg"
    with pytest.raises(
        ValueError,
        match=r"files: 1 of the given paths are not in .*objects_tiny \(for example .*negative_0001",
    ):
        make_dls(objects_tiny, files=[objects_tiny / "train" / "apple" / "apple_0001.jpg", outside])


def test_get_dls_files_none_in_labels_csv(multilabel_tiny, make_dls):
    outside = sample_data_path("negatives_tiny") / "negative_0001.jpg"
    with pytest.raises(
        ValueError,
        match=r"files: none of the 1 given paths is listed in .*labels.csv \(for example .*negative_0001",
    ):
        make_dls(multilabel_tiny, files=[outside])


def test_get_dls_empty_files_or_folder(objects_tiny, tmp_path, make_dls):
    with pytest.raises(ValueError, match="No images"):
        make_dls(objects_tiny, files=[])
    (tmp_path / "empty" / "apple").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images"):
        make_dls(tmp_path / "empty")


def write_non_square_set(root: Path) -> list[Path]:
    """train/ and valid/ with two classes of random-noise images, wide and tall (odd sides)."""
    rng = np.random.default_rng(0)
    paths = []
    for split in ("train", "valid"):
        for cls in ("red", "blue"):
            for i, (w, h) in enumerate([(97, 41), (37, 83), (230, 100)]):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
                paths.append(path)
    return paths


@pytest.mark.parametrize("resize", ["squish", "crop", "pad"])
def test_validation_batches_are_exactly_spec_preprocess(resize, tmp_path, make_dls):
    # What prediction computes is what the model was validated on: bit for bit, with
    # training augmentation on (it must not touch validation batches).
    write_non_square_set(tmp_path)
    spec = ModelSpec("resnet18", im_size=32, resize=resize, pad_color=(10, 200, 30))
    dls = make_dls(tmp_path, spec, transform=True)
    xb, _ = dls.valid.one_batch()
    assert xb.shape == (6, 3, 32, 32)
    expected = spec.preprocess(list(dls.valid_ds.items))
    assert np.array_equal(xb.cpu().numpy(), expected)


@pytest.mark.parametrize("resize", ["squish", "crop", "pad"])
def test_get_dls_resize_methods_give_square_batches(resize, tmp_path, make_dls):
    # One wide image (4:1) per class: squish keeps all of it, crop cuts the sides, pad adds
    # bars of the pad colour above and below.
    for split in ("train", "valid"):
        for cls, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            im = Image.new("RGB", (128, 32), colour)
            im.paste((255, 255, 255), (0, 0, 16, 32))  # white left edge
            im.save(folder / "im.png")
    spec = ModelSpec(im_size=32, resize=resize, pad_color=(0, 255, 0))
    dls = make_dls(tmp_path, spec, batch_size=2, transform=False)
    xb, _ = dls.valid.one_batch()
    assert xb.shape[-2:] == (32, 32)
    im = xb[0] * 0.5 + 0.5  # undo the normalisation (mean = std = 0.5)
    left, top = im[:, 16, 0], im[:, 0, 16]
    if resize == "squish":
        assert left.min() > 0.9  # the white edge survives
    if resize == "crop":
        assert left.min() < 0.1 or left.max() < 0.99  # the white edge is cut away
    if resize == "pad":
        assert top.tolist() == pytest.approx([0, 1, 0], abs=1e-6)  # a green bar


def test_training_crops_move_validation_crops_do_not(tmp_path, make_dls):
    from fastai.vision.all import set_seed

    write_non_square_set(tmp_path)
    spec = ModelSpec(im_size=32, resize="crop")
    dls = make_dls(tmp_path, spec, transform=False)
    set_seed(1)
    train = [
        dls.train.new(shuffle=False, drop_last=False).one_batch()[0].cpu().numpy() for _ in range(2)
    ]
    assert not np.array_equal(*train)  # random crop positions
    valid = [dls.valid.one_batch()[0].cpu().numpy() for _ in range(2)]
    assert np.array_equal(*valid)


def test_get_dls_takes_its_settings_from_the_spec(objects_tiny, multilabel_tiny, make_dls):
    spec = ModelSpec("resnet18", im_size=48)
    dls = make_dls(objects_tiny, spec)
    assert dls.valid.one_batch()[0].shape == (8, 3, 48, 48)
    norm = dls.after_batch.fs[-1]
    assert type(norm).__name__ == "Normalize"
    assert norm.mean.flatten().tolist() == pytest.approx(list(spec.mean))
    assert norm.std.flatten().tolist() == pytest.approx(list(spec.std))
    # The spec's multilabel flag decides when the argument is not given.
    assert is_multilabel_dls(make_dls(multilabel_tiny, spec.with_data(CLASSES, True)))
    assert not is_multilabel_dls(make_dls(multilabel_tiny, spec.with_data(CLASSES, False)))
    with pytest.raises(TypeError, match="spec should be a ModelSpec, got int"):
        make_dls(objects_tiny, 64)


def test_class_folders_as_multilabel_targets(objects_tiny, make_dls):
    """spec.multilabel=True on class folders: each image's folder is its one label, as a
    one-hot multi-label target (what notebook 02 trains on class folders)."""
    dls = make_dls(objects_tiny, ModelSpec(im_size=64, multilabel=True))
    assert is_multilabel_dls(dls)
    assert list(dls.vocab) == ["apple", "citrus", "flower", "tool"]
    _, y = dls.valid.one_batch()
    assert y.shape[1] == 4 and torch.equal(y.sum(dim=1), torch.ones(len(y)))
    names = [Path(p).parent.name for p in dls.valid_ds.items[: len(y)]]
    assert [dls.vocab[int(i)] for i in y.argmax(dim=1)] == names
    assert not is_multilabel_dls(make_dls(objects_tiny))  # single-label by default
