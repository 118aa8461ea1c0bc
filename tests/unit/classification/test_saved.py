"""Saved models: weights + model.json written safely, read back strictly, never unpickled."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from utils_cv.classification.predict import TorchPredictor
from utils_cv.classification.saved import (
    META_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    load_model,
    load_network,
    model_size_mb,
    read_spec,
    save_model,
    sha256_file,
    write_file,
)
from utils_cv.classification.spec import FORMAT_VERSION, MAX_META_BYTES, spec_to_json

CLASSES = ["apple", "citrus", "flower", "tool"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def edit_meta(model_dir: Path, **changes) -> dict:
    """Change fields of model.json (KeyError deletes a field); return the new content."""
    path = model_dir / META_FILE
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is KeyError:
            meta.pop(key)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))
    return meta


def as_version_1(model_dir: Path) -> dict:
    """Rewrite model.json as the release before the specification wrote it."""
    spec, sha = read_spec(model_dir)
    meta = {
        "architecture": spec.backbone,
        "classes": list(spec.classes),
        "im_size": spec.im_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "multilabel": spec.multilabel,
        "threshold": spec.threshold,
        "dropout": spec.dropout,
        "head": spec.head,
        "format_version": 1,
        "weights_sha256": sha,
        "extra": {},
    }
    (model_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the saved tiny model, safe to tamper with."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model_dir) -> TorchPredictor:
    return load_model(tiny_model_dir)


# --- saving ------------------------------------------------------------------------------------


def test_save_model_writes_weights_and_the_specification(tiny_model_dir, tiny_learner, tiny_spec):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [META_FILE, WEIGHTS_FILE]
    meta = json.loads((tiny_model_dir / META_FILE).read_text())
    assert meta == {
        "format_version": FORMAT_VERSION,
        "backbone": "efficientnet_lite0",
        "im_size": 64,
        "resize": "squish",
        "pad_color": [0, 0, 0],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "classes": CLASSES,
        "multilabel": False,
        "threshold": 0.5,
        "head": "mlp",
        "dropout": 0.2,
        "feature_stages": 0,
        "weights_sha256": sha256(tiny_model_dir / WEIGHTS_FILE),
    }
    spec, sha = read_spec(tiny_model_dir)
    assert spec == tiny_learner.spec == tiny_spec.with_data(CLASSES, False)
    assert sha == sha256_file(tiny_model_dir / WEIGHTS_FILE) == meta["weights_sha256"]


def test_save_model_threshold_and_deterministic_weights(tiny_learner, tiny_model_dir, tmp_path):
    model_dir = save_model(tiny_learner, tmp_path / "a" / "b", threshold=0.7)
    assert model_dir == tmp_path / "a" / "b"
    spec, sha = read_spec(model_dir)
    assert spec.threshold == 0.7 and tiny_learner.spec.threshold == 0.5
    # Same learner, same bytes: the hash identifies the weights.
    assert sha == read_spec(tiny_model_dir)[1]
    with pytest.raises(ValueError, match="'threshold'"):
        save_model(tiny_learner, tmp_path / "c", threshold=1.5)
    assert not (tmp_path / "c").exists()


def test_save_model_multilabel_threshold(multilabel_model_dir):
    spec, _ = read_spec(multilabel_model_dir)
    assert (spec.multilabel, spec.threshold, spec.classes) == (True, 0.4, tuple(CLASSES))


def test_saved_weights_are_the_learner_weights(tiny_model_dir, tiny_learner):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_model_dir / WEIGHTS_FILE))
    own = tiny_learner.model.state_dict()
    assert set(saved) == set(own)
    for key, tensor in own.items():
        assert torch.equal(saved[key], tensor.float().cpu()), key


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_written_with_the_umask(tiny_learner, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        model_dir = save_model(tiny_learner, tmp_path / "model")
    finally:
        os.umask(old)
    for name in (WEIGHTS_FILE, META_FILE):
        assert stat.S_IMODE((model_dir / name).stat().st_mode) == mode, name
    assert stat.S_IMODE(model_dir.stat().st_mode) == 0o777 & ~umask
    assert sorted(p.name for p in model_dir.iterdir()) == [META_FILE, WEIGHTS_FILE]


def test_write_file_replaces_whole_files_and_leaves_no_temporary_file(tmp_path):
    path = write_file(tmp_path / "f.bin", b"first")
    assert path.read_bytes() == b"first"
    write_file(path, b"2")
    assert path.read_bytes() == b"2"
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):
        write_file(tmp_path / "folder", b"cannot replace a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "folder"]


def test_model_size_mb(tiny_model_dir):
    expected = sum(p.stat().st_size for p in tiny_model_dir.iterdir()) / 1e6
    assert model_size_mb(tiny_model_dir) == expected
    assert 5 < expected < 30  # EfficientNet-Lite0 with a small head, float32


# --- loading -------------------------------------------------------------------------------------


def test_round_trip_gives_the_same_predictions(tiny_learner, tiny_predictor, tiny_valid_images):
    x = torch.from_numpy(tiny_learner.spec.preprocess(tiny_valid_images))
    device = next(tiny_learner.model.parameters()).device
    with torch.no_grad():
        before = tiny_learner.model.eval()(x.to(device)).softmax(dim=1).cpu().numpy()
    after = tiny_predictor.predict_proba(tiny_valid_images)
    assert after.shape == (8, 4)
    assert np.abs(before - after).max() < 1e-5
    assert tiny_predictor.classes == CLASSES
    assert tiny_predictor.im_size == 64 and not tiny_predictor.multilabel
    assert tiny_predictor.spec == tiny_learner.spec


def test_predictor_matches_the_training_loader(tiny_learner, tiny_predictor, tiny_valid_images):
    from utils_cv.classification.train import get_preds

    y_score, _ = get_preds(tiny_learner)  # fastai's validation pipeline, same image order
    assert np.abs(y_score - tiny_predictor.predict_proba(tiny_valid_images)).max() < 1e-5


def test_load_network(tiny_model_dir, tiny_learner):
    spec, model = load_network(tiny_model_dir)
    assert spec == tiny_learner.spec
    assert not model.training and next(model.parameters()).device.type == "cpu"
    own = tiny_learner.model.state_dict()
    assert all(torch.equal(v, own[k].cpu()) for k, v in model.state_dict().items())


def test_resize_method_travels_with_the_model(model_copy, tiny_predictor, tiny_valid_images):
    edit_meta(model_copy, resize="pad", pad_color=[255, 255, 255])
    padded = load_model(model_copy)
    assert (padded.spec.resize, padded.spec.pad_color) == ("pad", (255, 255, 255))
    x = padded.spec.preprocess(tiny_valid_images)  # the 320 x 240 photos, letterboxed in white
    assert (x[:, :, :4, :] == 1).all() and (x[:, :, -4:, :] == 1).all()
    expected = tiny_predictor.run(x)
    np.testing.assert_allclose(padded.predict_proba(tiny_valid_images), expected, atol=1e-6)
    assert np.abs(expected - tiny_predictor.predict_proba(tiny_valid_images)).max() > 1e-3


def test_version_1_model_json_still_loads(model_copy, tiny_predictor, tiny_valid_images):
    assert tiny_predictor.spec.feature_stages == 0  # single-label: the final maps only
    as_version_1(model_copy)
    predictor = load_model(model_copy)
    assert predictor.spec == tiny_predictor.spec
    expected = tiny_predictor.predict_proba(tiny_valid_images)
    assert np.array_equal(predictor.predict_proba(tiny_valid_images), expected)
    # Files from before the head field existed have fastai's MLP head.
    edit_meta(model_copy, head=KeyError)
    assert load_model(model_copy).spec.head == "mlp"


def test_version_2_model_json_still_loads(model_copy, tiny_predictor, tiny_valid_images):
    edit_meta(model_copy, format_version=2, feature_stages=KeyError)
    predictor = load_model(model_copy)
    assert predictor.spec == tiny_predictor.spec
    expected = tiny_predictor.predict_proba(tiny_valid_images)
    assert np.array_equal(predictor.predict_proba(tiny_valid_images), expected)


def test_feature_stages_must_match_the_weights(model_copy):
    edit_meta(model_copy, feature_stages=2)
    with pytest.raises(ModelFileError, match="does not fit a efficientnet_lite0 with 4 classes"):
        load_model(model_copy)


def test_linear_head_round_trip(objects_tiny, make_dls, tiny_spec, tmp_path, tiny_valid_images):
    from utils_cv.classification.train import create_learner, fit_head_cached, get_preds

    learn = create_learner(make_dls(objects_tiny), tiny_spec.replace(head="linear"))
    fit_head_cached(learn, epochs=2, progress=False)
    model_dir = save_model(learn, tmp_path / "linear")
    assert json.loads((model_dir / META_FILE).read_text())["head"] == "linear"
    predictor = load_model(model_dir)
    assert len([m for m in predictor.model[1].modules() if isinstance(m, torch.nn.Linear)]) == 1
    y_score, _ = get_preds(learn, learn.dls.test_dl(tiny_valid_images))
    assert np.abs(predictor.predict_proba(tiny_valid_images) - y_score).max() < 1e-5


# --- loading bad folders ------------------------------------------------------------------------


def test_flipped_byte_in_weights_is_detected(model_copy):
    weights = model_copy / WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        load_model(model_copy)


def test_truncated_weights(model_copy):
    weights = model_copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="SHA-256.*changed or truncated"):
        load_model(model_copy)
    # Even with a matching hash, a truncated file is refused by the safetensors reader.
    edit_meta(model_copy, weights_sha256=sha256(weights))
    with pytest.raises(ModelFileError, match=f"{WEIGHTS_FILE} could not be read"):
        load_model(model_copy)


def test_missing_files(model_copy):
    (model_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelFileError, match=f"No {WEIGHTS_FILE} in"):
        load_model(model_copy)
    (model_copy / META_FILE).unlink()
    with pytest.raises(ModelFileError, match=f"No {META_FILE} in .*is this a folder saved"):
        load_model(model_copy)


@pytest.mark.parametrize("text", ['{"backbone": "efficientnet_lite0", "clas', "not json", ""])
def test_truncated_or_invalid_json(model_copy, text):
    (model_copy / META_FILE).write_text(text)
    with pytest.raises(ModelFileError, match="is not valid JSON.*may be truncated"):
        load_model(model_copy)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_numbers_that_are_not_numbers(model_copy, constant):
    text = (
        (model_copy / META_FILE).read_text().replace('"threshold": 0.5', f'"threshold": {constant}')
    )
    assert constant in text
    (model_copy / META_FILE).write_text(text)
    with pytest.raises(ModelFileError, match=f"{constant} is not a number JSON allows"):
        load_model(model_copy)


def test_json_that_is_not_an_object(model_copy):
    (model_copy / META_FILE).write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="expected a JSON object"):
        load_model(model_copy)


def test_oversized_model_json_is_refused_unread(model_copy):
    with open(model_copy / META_FILE, "wb") as f:
        f.truncate(MAX_META_BYTES + 1)
    with pytest.raises(ModelFileError, match=f"has {MAX_META_BYTES + 1} bytes; a model.json has"):
        load_model(model_copy)


@pytest.mark.parametrize("field", ["backbone", "classes", "im_size", "mean", "std", "resize"])
def test_missing_field(model_copy, field):
    edit_meta(model_copy, **{field: KeyError})
    with pytest.raises(ModelFileError, match=f"missing field\\(s\\) '{field}'"):
        load_model(model_copy)


def test_invalid_fields_are_named_with_the_file(model_copy):
    path = model_copy / META_FILE
    for changes, message in [
        ({"im_size": "64"}, "field 'im_size' should be an int, got str"),
        ({"classes": []}, "field 'classes' is empty"),
        ({"classes": [1, 2, 3, 4]}, "field 'classes': 1 is not valid"),
        ({"classes": ["a", "b", "a", "c"]}, "field 'classes': 'a' appears more than once"),
        ({"multilabel": "false"}, "field 'multilabel' should be a bool"),
        ({"head": "transformer"}, "field 'head': 'transformer' is not valid"),
        ({"weights_sha256": ""}, "field 'weights_sha256' should be the 64-character hex"),
        ({"format_version": FORMAT_VERSION + 1}, "format_version 4 is newer than this utils_cv"),
        ({"backbone": "resnet1000"}, "field 'backbone': Unknown backbone 'resnet1000'"),
        ({"extra": {}}, "unknown field\\(s\\) 'extra'"),
    ]:
        original = path.read_text()
        edit_meta(model_copy, **changes)
        with pytest.raises(ModelFileError, match=f"^{path}: {message}"):
            load_model(model_copy)
        path.write_text(original)


def test_wrong_number_of_classes(model_copy):
    edit_meta(model_copy, classes=["apple", "citrus", "flower"])
    with pytest.raises(ModelFileError, match="does not fit a efficientnet_lite0 with 3 classes"):
        load_model(model_copy)


def test_weights_of_another_architecture(model_copy):
    edit_meta(model_copy, backbone="efficientnet_lite1")
    with pytest.raises(ModelFileError, match="does not fit a efficientnet_lite1 with 4 classes"):
        load_model(model_copy)


def test_a_refused_save_leaves_the_saved_model_intact(tiny_learner, model_copy):
    import copy

    before = {name: (model_copy / name).read_bytes() for name in (WEIGHTS_FILE, META_FILE)}
    incomplete = copy.copy(tiny_learner)
    incomplete.spec = tiny_learner.spec.replace(multilabel=None)
    incomplete.model = torch.nn.Sequential(torch.nn.Linear(2, 2))  # other weights
    with pytest.raises(ValueError, match="needs its classes and multilabel flag"):
        save_model(incomplete, model_copy)
    assert {name: (model_copy / name).read_bytes() for name in before} == before
    load_model(model_copy)


class _CreatesFile:
    """Unpickling this object creates the file ``path`` (stands in for any code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_renamed_to_safetensors_is_never_unpickled(model_copy, tmp_path):
    # The payload works: unpickling a copy made for another marker creates that marker.
    probe = tmp_path / "probe_marker"
    pickle.loads(pickle.dumps({"w": _CreatesFile(probe)}))
    assert probe.exists()

    marker = tmp_path / "marker"
    weights = model_copy / WEIGHTS_FILE
    torch.save({"state": _CreatesFile(marker)}, weights)  # a legacy PyTorch checkpoint
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        load_model(model_copy)
    # With the hash updated the file reaches the reader, which does not unpickle it.
    edit_meta(model_copy, weights_sha256=sha256(weights))
    with pytest.raises(ModelFileError, match=f"{WEIGHTS_FILE} could not be read"):
        load_model(model_copy)
    weights.write_bytes(pickle.dumps({"state": _CreatesFile(marker)}))
    edit_meta(model_copy, weights_sha256=sha256(weights))
    with pytest.raises(ModelFileError, match=f"{WEIGHTS_FILE} could not be read"):
        load_model(model_copy)
    assert not marker.exists()


def test_spec_to_json_is_what_save_model_writes(tiny_model_dir, tiny_learner):
    meta = json.loads((tiny_model_dir / META_FILE).read_text())
    assert meta == spec_to_json(tiny_learner.spec, meta["weights_sha256"])
