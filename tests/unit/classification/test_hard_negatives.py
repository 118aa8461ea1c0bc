"""Hard negative mining: splitting, the working folder and selecting hard negatives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils_cv.classification.hard_negatives import (
    WORKDIR_MARKER,
    NegativeSplit,
    add_negatives,
    check_negatives,
    count_false_positives,
    make_working_set,
    rank_false_positives,
    select_hard_negatives,
    split_negatives,
)

CLASSES = ["apple", "negative", "tool"]


# --- select_hard_negatives / rank_false_positives ------------------------------------------


def test_select_orders_false_positives_by_confidence():
    probs = np.array(
        [
            [0.6, 0.3, 0.1],  # apple 0.6
            [0.1, 0.8, 0.1],  # correctly negative: never selected
            [0.05, 0.05, 0.9],  # tool 0.9
            [0.2, 0.1, 0.7],  # tool 0.7
        ]
    )
    ids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert select_hard_negatives(probs, CLASSES, "negative", ids, 2) == ["c.jpg", "d.jpg"]
    assert select_hard_negatives(probs, CLASSES, "negative", ids, 10) == ["c.jpg", "d.jpg", "a.jpg"]
    assert select_hard_negatives(probs, CLASSES, "negative", ids, 0) == []


def test_select_none_when_all_rejected():
    probs = np.array([[0.1, 0.8, 0.1], [0.3, 0.4, 0.3]])
    assert select_hard_negatives(probs, CLASSES, "negative", [1, 2], 5) == []


def test_select_ties_keep_input_order_and_ids_any_type():
    probs = np.array([[0.5, 0.0, 0.5], [0.7, 0.2, 0.1], [0.7, 0.1, 0.2]])
    # Row 0 ties apple/tool: argmax takes the first (apple) with confidence 0.5.
    assert select_hard_negatives(probs, CLASSES, "negative", [10, 11, 12], 3) == [11, 12, 10]


def test_select_empty_pool():
    assert select_hard_negatives(np.zeros((0, 3)), CLASSES, "negative", [], 2) == []


def test_rank_reports_class_and_confidence():
    probs = np.array([[0.2, 0.1, 0.7], [0.9, 0.05, 0.05]])
    ranked = rank_false_positives(probs, CLASSES, "negative", ["x", "y"])
    assert ranked["id"].tolist() == ["y", "x"]
    assert ranked["predicted"].tolist() == ["apple", "tool"]
    assert ranked["confidence"].tolist() == pytest.approx([0.9, 0.7])


def test_select_rejects_bad_inputs():
    probs = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="shape"):
        select_hard_negatives(probs, CLASSES, "negative", ["a"], 1)
    with pytest.raises(ValueError, match="shape"):
        select_hard_negatives(probs, ["apple", "negative"], "negative", ["a", "b"], 1)
    with pytest.raises(ValueError, match="not one of"):
        select_hard_negatives(probs, CLASSES, "background", ["a", "b"], 1)
    with pytest.raises(ValueError, match="n must be"):
        select_hard_negatives(probs, CLASSES, "negative", ["a", "b"], -1)


def test_count_false_positives_only_counts_negatives():
    y_true = np.array([0, 1, 1, 1, 2])
    y_score = np.array(
        [
            [0.1, 0.8, 0.1],  # an apple called negative: not a false positive of a negative
            [0.1, 0.8, 0.1],
            [0.7, 0.2, 0.1],  # false positive
            [0.1, 0.2, 0.7],  # false positive
            [0.1, 0.1, 0.8],
        ]
    )
    assert count_false_positives(y_true, y_score, CLASSES, "negative") == (2, 3)
    assert count_false_positives(y_true[:1], y_score[:1], CLASSES, "negative") == (0, 0)


# --- split_negatives ------------------------------------------------------------------------


def _names(paths):
    return [p.name for p in paths]


def test_split_is_disjoint_complete_and_seeded():
    files = [f"neg/{i:02d}.jpg" for i in range(20)]
    split = split_negatives(files, n_initial=3, valid_pct=0.3, seed=1)
    assert (len(split.initial), len(split.valid), len(split.pool)) == (3, 6, 11)
    together = split.initial + split.pool + split.valid
    assert sorted(_names(together)) == sorted(f"{i:02d}.jpg" for i in range(20))
    assert split == split_negatives(reversed(files), n_initial=3, valid_pct=0.3, seed=1)
    assert split != split_negatives(files, n_initial=3, valid_pct=0.3, seed=2)


def test_split_needs_a_pool():
    with pytest.raises(ValueError, match="no mining pool"):
        split_negatives(["a.jpg", "b.jpg", "c.jpg"], n_initial=2, valid_pct=0.3)
    with pytest.raises(ValueError, match="valid_pct"):
        split_negatives(["a.jpg", "b.jpg"], n_initial=0, valid_pct=1.0)


# --- the working folder ---------------------------------------------------------------------


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


@pytest.fixture
def data(tmp_path):
    """train/ + valid/ positives (2 classes) and a flat folder of 6 negatives."""
    for split, n in (("train", 2), ("valid", 1)):
        for cls in ("apple", "tool"):
            for i in range(n):
                _image(tmp_path / "objects" / split / cls / f"{cls}_{i}.jpg")
    negatives = [_image(tmp_path / "negatives" / f"neg_{i}.jpg") for i in range(6)]
    return tmp_path / "objects", negatives


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))


def test_make_working_set_copies_without_touching_data(data, tmp_path):
    objects, negatives = data
    before = _tree(objects), _tree(negatives[0].parent)
    split = NegativeSplit(initial=negatives[:1], pool=negatives[1:4], valid=negatives[4:])
    work = make_working_set(objects, tmp_path / "work", split)
    assert _tree(work) == sorted(
        [f"train/{c}/{c}_{i}.jpg" for c in ("apple", "tool") for i in range(2)]
        + [f"valid/{c}/{c}_0.jpg" for c in ("apple", "tool")]
        + ["train/negative/neg_0.jpg", "valid/negative/neg_4.jpg", "valid/negative/neg_5.jpg"]
    )
    assert (_tree(objects), _tree(negatives[0].parent)) == before

    copies = add_negatives(negatives[1:3], work)
    assert [p.relative_to(work).as_posix() for p in copies] == [
        "train/negative/neg_1.jpg",
        "train/negative/neg_2.jpg",
    ]
    assert all(p.is_file() for p in negatives)
    with pytest.raises(FileExistsError):
        add_negatives(negatives[1:2], work)


def test_make_working_set_replaces_only_its_own_folder(data, tmp_path):
    objects, negatives = data
    split = NegativeSplit(initial=[], pool=negatives[:4], valid=negatives[4:])
    work = make_working_set(objects, tmp_path / "work", split)
    add_negatives(negatives[:2], work)
    make_working_set(objects, work, split)  # a rerun starts afresh
    assert not (work / "train" / "negative").exists()
    assert (work / WORKDIR_MARKER).is_file()

    other = tmp_path / "mine"
    _image(other / "keep.jpg")
    with pytest.raises(FileExistsError, match="not made by"):
        make_working_set(objects, other, split)
    assert (other / "keep.jpg").is_file()
    with pytest.raises(ValueError, match="outside"):
        make_working_set(objects, objects / "work", split)


def test_make_working_set_splits_class_folders(tmp_path):
    for cls in ("apple", "tool"):
        for i in range(5):
            _image(tmp_path / "flat" / cls / f"{cls}_{i}.jpg")
    negatives = [_image(tmp_path / "neg" / f"n{i}.jpg") for i in range(3)]
    split = NegativeSplit(initial=negatives[:1], pool=negatives[1:2], valid=negatives[2:])
    work = make_working_set(tmp_path / "flat", tmp_path / "work", split, valid_pct=0.2)
    for cls in ("apple", "tool"):
        assert len(list((work / "valid" / cls).iterdir())) == 1
        assert len(list((work / "train" / cls).iterdir())) == 4


def _labels_csv(root, rows, is_valid=True):
    header = "filename,labels,is_valid" if is_valid else "filename,labels"
    lines = [header] + [",".join(map(str, r if is_valid else r[:2])) for r in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_make_working_set_from_labels_csv(tmp_path):
    """images/ + labels.csv: each image goes to its label's folder, split by is_valid (names
    relative to images/ or to the data folder), or per class without the column."""
    root = tmp_path / "data"
    rows = []
    for cls in ("apple", "tool"):
        for i in range(5):
            _image(root / "images" / f"{cls}_{i}.jpg")
            name = f"{cls}_{i}.jpg" if i % 2 else f"images/{cls}_{i}.jpg"
            rows.append((name, cls, i == 0))
    negatives = [_image(tmp_path / "neg" / f"n{i}.jpg") for i in range(3)]
    split = NegativeSplit(initial=negatives[:1], pool=negatives[1:2], valid=negatives[2:])
    _labels_csv(root, rows)
    work = make_working_set(root, tmp_path / "work", split)
    assert _tree(work) == sorted(
        [f"train/{c}/{c}_{i}.jpg" for c in ("apple", "tool") for i in range(1, 5)]
        + [f"valid/{c}/{c}_0.jpg" for c in ("apple", "tool")]
        + ["train/negative/n0.jpg", "valid/negative/n2.jpg"]
    )

    _labels_csv(root, rows, is_valid=False)
    work = make_working_set(root, tmp_path / "work", split, valid_pct=0.4)
    for cls in ("apple", "tool"):
        assert len(list((work / "valid" / cls).iterdir())) == 2
        assert len(list((work / "train" / cls).iterdir())) == 3

    # only the given files (a data check's good ones)
    keep = [root / "images" / "apple_1.jpg", root / "images" / "tool_2.jpg"]
    _labels_csv(root, rows)
    work = make_working_set(root, tmp_path / "work", split, files=keep)
    assert [p for p in _tree(work) if "negative" not in p] == [
        "train/apple/apple_1.jpg",
        "train/tool/tool_2.jpg",
    ]


def test_make_working_set_refuses_multilabel_and_bad_rows(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        _image(root / "images" / f"x_{i}.jpg")
    negatives = [_image(tmp_path / "neg" / f"n{i}.jpg") for i in range(2)]
    split = NegativeSplit(initial=[], pool=negatives[:1], valid=negatives[1:])
    _labels_csv(root, [("x_0.jpg", "apple", False), ("x_1.jpg", "apple tool", True)])
    with pytest.raises(ValueError, match="single-label.*x_1.jpg"):
        make_working_set(root, tmp_path / "work", split)
    _labels_csv(root, [("x_0.jpg", "apple", False), ("missing.jpg", "tool", True)])
    with pytest.raises(ValueError, match="missing.jpg.*good_files"):
        make_working_set(root, tmp_path / "work", split)
    assert not (tmp_path / "work").exists()


def test_check_negatives_leaves_out_unusable_files_by_name(tmp_path):
    good = [_image(tmp_path / "neg" / f"n{i}.jpg") for i in range(2)]
    (tmp_path / "neg" / "empty.jpg").write_bytes(b"")
    (tmp_path / "neg" / "sub").mkdir()
    (tmp_path / "neg" / "sub" / "page.png").write_text("<html>not an image</html>")
    with pytest.warns(
        UserWarning, match=r"(?s)2 of 4 files.*empty.jpg: zero_bytes.*page.png: not_an_image"
    ):
        assert check_negatives(tmp_path / "neg", progress=False) == good
    for name in ("n0.jpg", "n1.jpg"):
        (tmp_path / "neg" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="No usable negative image"):
        check_negatives(tmp_path / "neg", progress=False)


def test_make_working_set_refuses_negative_named_class(tmp_path):
    _image(tmp_path / "data" / "train" / "negative" / "a.jpg")
    _image(tmp_path / "data" / "valid" / "negative" / "b.jpg")
    negatives = [_image(tmp_path / "neg" / f"n{i}.jpg") for i in range(2)]
    split = NegativeSplit(initial=[], pool=negatives[:1], valid=negatives[1:])
    with pytest.raises(ValueError, match="already has a class"):
        make_working_set(tmp_path / "data", tmp_path / "work", split)


# --- training and scoring (a real tiny model) ------------------------------------------------


def test_train_classifier_trains_through_train_and_scores_files(tmp_path, monkeypatch):
    from utils_cv.classification import train as train_module
    from utils_cv.classification.data import get_image_files, sample_data_path
    from utils_cv.classification.hard_negatives import score_files, train_classifier
    from utils_cv.classification.spec import ModelSpec
    from utils_cv.classification.train import TrainConfig, TrainMetricsRecorder

    negatives = split_negatives(get_image_files(sample_data_path("negatives_tiny")), 2, seed=0)
    work = make_working_set(sample_data_path("objects_tiny"), tmp_path / "work", negatives)
    calls = []
    real_train = train_module.train

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    spec = ModelSpec(im_size=64, resize="pad")
    config = TrainConfig(epochs_head=2, aug_passes=1, batch_size=8, seed=3)
    learn = train_classifier(work, spec, config, progress=False)

    assert len(calls) == 1 and calls[0][0] == (work, spec, config)
    assert learn.spec == spec.with_data(["apple", "citrus", "flower", "negative", "tool"], False)
    assert learn.config == config and learn.training_seconds > 0
    recorder = next(cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder))
    assert len(recorder.train_metrics) == len(recorder.valid_metrics) == 2  # one row per epoch

    probs = score_files(learn, negatives.pool)
    assert probs.shape == (len(negatives.pool), 5)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # the same images through the specification's preprocessing give the same probabilities
    import torch

    with torch.no_grad():
        x = torch.from_numpy(learn.spec.preprocess(negatives.pool))
        direct = torch.softmax(learn.model.eval().cpu()(x), dim=1).numpy()
    assert np.abs(direct - probs).max() < 1e-4
    assert score_files(learn, []).shape == (0, 5)
