"""Saving and loading classifiers safely, inference, ImageNet predictions, ONNX export."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from utils_cv.classification.backbones import get_backbone
from utils_cv.classification.data import sample_data_path
from utils_cv.classification.export import (
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    Classifier,
    ModelFileError,
    ModelMeta,
    OnnxClassifier,
    export_onnx,
    imagenet_classifier,
    load_model,
    measure_speed,
    model_size_mb,
    preprocess_ims,
    probs_to_predictions,
    read_meta,
    save_model,
)
from utils_cv.classification.model import DROPOUT

CLASSES = ["apple", "citrus", "flower", "tool"]
COFFEE = {"espresso", "cup", "coffee mug"}
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def edit_meta(model_dir: Path, **changes) -> dict:
    """Change fields of model.json (None deletes a field); return the new content."""
    path = model_dir / META_FILE
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))
    return meta


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the saved tiny model, safe to tamper with."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture(scope="module")
def tiny_classifier(tiny_model_dir) -> Classifier:
    return load_model(tiny_model_dir)


# --- saving ------------------------------------------------------------------------------------


def test_save_model_writes_weights_and_metadata(tiny_model_dir, tiny_learner):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [META_FILE, WEIGHTS_FILE]
    meta = json.loads((tiny_model_dir / META_FILE).read_text())
    assert meta == {
        "architecture": "efficientnet_lite0",
        "classes": CLASSES,
        "im_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "multilabel": False,
        "threshold": 0.5,
        "dropout": DROPOUT,  # create_learner's default
        "head": "mlp",
        "format_version": FORMAT_VERSION,
        "weights_sha256": sha256(tiny_model_dir / WEIGHTS_FILE),
        "extra": {},
    }
    assert read_meta(tiny_model_dir) == ModelMeta(**meta)


def test_save_model_options_and_deterministic_weights(tiny_learner, tiny_model_dir, tmp_path):
    model_dir = save_model(tiny_learner, tmp_path / "a" / "b", threshold=0.7, im_size=80)
    assert model_dir == tmp_path / "a" / "b"
    meta = read_meta(model_dir)
    assert (meta.threshold, meta.im_size) == (0.7, 80)
    # Same learner, same bytes: the hash identifies the weights.
    assert meta.weights_sha256 == read_meta(tiny_model_dir).weights_sha256
    assert load_model(model_dir).preprocess([Image.new("RGB", (9, 9))]).shape == (1, 3, 80, 80)


def test_save_model_multilabel_threshold(multilabel_model_dir):
    meta = read_meta(multilabel_model_dir)
    assert meta.multilabel is True
    assert meta.threshold == 0.4
    assert meta.classes == CLASSES


def test_saved_weights_are_the_learner_weights(tiny_model_dir, tiny_learner):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_model_dir / WEIGHTS_FILE))
    own = tiny_learner.model.state_dict()
    assert set(saved) == set(own)
    for key, tensor in own.items():
        assert torch.equal(saved[key], tensor.float().cpu()), key


def test_round_trip_gives_the_same_predictions(tiny_learner, tiny_classifier, tiny_valid_images):
    x = preprocess_ims(tiny_valid_images, 64, [0.5] * 3, [0.5] * 3)
    with torch.no_grad():
        before = tiny_learner.model.eval()(x).softmax(dim=1).numpy()
    after = tiny_classifier.predict_proba(tiny_valid_images)
    assert after.shape == (8, 4)
    assert np.abs(before - after).max() < 1e-5
    assert tiny_classifier.classes == CLASSES
    assert tiny_classifier.im_size == 64 and not tiny_classifier.multilabel


def test_classifier_matches_the_training_loader(tiny_learner, tiny_classifier, tiny_valid_images):
    from utils_cv.classification.model import get_preds

    y_score, _ = get_preds(tiny_learner)  # fastai's validation pipeline, same image order
    assert np.abs(y_score - tiny_classifier.predict_proba(tiny_valid_images)).max() < 1e-3


def test_model_size_mb(tiny_model_dir):
    expected = sum(p.stat().st_size for p in tiny_model_dir.iterdir()) / 1e6
    assert model_size_mb(tiny_model_dir) == expected
    assert 5 < expected < 30  # EfficientNet-Lite0 with a small head, float32


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


@pytest.mark.parametrize("text", ['{"architecture": "efficientnet_lite0", "clas', "not json", ""])
def test_truncated_or_invalid_json(model_copy, text):
    (model_copy / META_FILE).write_text(text)
    with pytest.raises(ModelFileError, match="is not valid JSON.*may be truncated"):
        load_model(model_copy)


def test_json_that_is_not_an_object(model_copy):
    (model_copy / META_FILE).write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="expected a JSON object"):
        load_model(model_copy)


@pytest.mark.parametrize("field", ["architecture", "classes", "im_size", "mean", "std"])
def test_missing_field(model_copy, field):
    edit_meta(model_copy, **{field: None})
    with pytest.raises(ModelFileError, match=f"missing field '{field}'"):
        load_model(model_copy)


def test_field_of_the_wrong_type(model_copy):
    edit_meta(model_copy, im_size="64")
    with pytest.raises(ModelFileError, match="field 'im_size' should be a int"):
        load_model(model_copy)


def test_empty_or_non_string_classes(model_copy):
    edit_meta(model_copy, classes=[])
    with pytest.raises(ModelFileError, match="'classes' should be a non-empty list of strings"):
        read_meta(model_copy)
    edit_meta(model_copy, classes=[1, 2, 3, 4])
    with pytest.raises(ModelFileError, match="'classes' should be a non-empty list of strings"):
        read_meta(model_copy)


def test_newer_format_version(model_copy):
    edit_meta(model_copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelFileError, match="newer than this utils_cv understands.*upgrade"):
        load_model(model_copy)


def test_unknown_architecture(model_copy):
    edit_meta(model_copy, architecture="resnet1000")
    with pytest.raises(ValueError, match="Unknown architecture 'resnet1000'"):
        load_model(model_copy)


def test_wrong_number_of_classes(model_copy):
    edit_meta(model_copy, classes=["apple", "citrus", "flower"])
    with pytest.raises(ModelFileError, match="does not fit a efficientnet_lite0 with 3 classes"):
        load_model(model_copy)


def test_weights_of_another_architecture(model_copy):
    edit_meta(model_copy, architecture="efficientnet_lite1")
    with pytest.raises(ModelFileError, match="does not fit a efficientnet_lite1 with 4 classes"):
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


# --- inference ------------------------------------------------------------------------------------


def test_predict_returns_sorted_top_k(tiny_classifier, tiny_valid_images):
    probs = tiny_classifier.predict_proba(tiny_valid_images)
    for top_k in (1, 2, 10):
        predictions = tiny_classifier.predict(tiny_valid_images, top_k=top_k)
        assert len(predictions) == 8
        for row, prediction in zip(probs, predictions):
            assert len(prediction) == min(top_k, 4)
            values = [p["probability"] for p in prediction]
            assert values == sorted(values, reverse=True)
            assert prediction[0]["label"] == CLASSES[int(row.argmax())]
            for p in prediction:
                assert set(p) == {"label", "probability"}
                assert p["probability"] == pytest.approx(row[CLASSES.index(p["label"])])


def test_predict_accepts_paths_pil_images_and_arrays(tiny_classifier, tiny_valid_images):
    paths = tiny_valid_images[:3]
    pil = [Image.open(p).convert("RGB") for p in paths]
    arrays = [np.asarray(im) for im in pil]
    from_paths = tiny_classifier.predict_proba(paths)
    np.testing.assert_allclose(tiny_classifier.predict_proba(pil), from_paths, atol=1e-6)
    np.testing.assert_allclose(tiny_classifier.predict_proba(arrays), from_paths, atol=1e-6)
    np.testing.assert_allclose(tiny_classifier.predict_proba([str(p) for p in paths]), from_paths)
    # Batching does not change the result (beyond float rounding).
    np.testing.assert_allclose(
        tiny_classifier.predict_proba(paths, batch_size=1), from_paths, atol=1e-5
    )
    assert tiny_classifier.predict_proba([]).shape == (0, 4)


def test_predict_rejects_other_inputs(tiny_classifier):
    with pytest.raises(TypeError, match="Expected a PIL image, numpy array or path, got int"):
        tiny_classifier.predict_proba([42])


def test_multilabel_predict_returns_labels_above_the_threshold(multilabel_model_dir):
    classifier = load_model(multilabel_model_dir)
    images = sorted((sample_data_path("objects_multilabel_tiny") / "images").glob("*.jpg"))[:6]
    probs = classifier.predict_proba(images)
    assert probs.shape == (6, 4)
    assert ((probs > 0) & (probs < 1)).all()
    assert not np.allclose(probs.sum(axis=1), 1)  # sigmoid, not softmax
    for row, prediction in zip(probs, classifier.predict(images, top_k=1)):
        expected = {CLASSES[i] for i in np.flatnonzero(row >= 0.4)}
        assert {p["label"] for p in prediction} == expected
        values = [p["probability"] for p in prediction]
        assert values == sorted(values, reverse=True)


def test_probs_to_predictions_hand_computed():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.4]], dtype=np.float32)
    classes = ["a", "b", "c"]
    single = ModelMeta("efficientnet_lite0", classes, 64, [0.5] * 3, [0.5] * 3)
    assert probs_to_predictions(probs, classes, single, top_k=2) == [
        [
            {"label": "b", "probability": pytest.approx(0.6)},
            {"label": "c", "probability": pytest.approx(0.3)},
        ],
        [
            {"label": "a", "probability": pytest.approx(0.5)},
            {"label": "c", "probability": pytest.approx(0.4)},
        ],
    ]
    multi = ModelMeta("efficientnet_lite0", classes, 64, [0.5] * 3, [0.5] * 3, True, 0.4)
    predictions = probs_to_predictions(probs, classes, multi, top_k=1)
    assert [[p["label"] for p in row] for row in predictions] == [["b"], ["a", "c"]]
    multi.threshold = 0.7
    assert probs_to_predictions(probs, classes, multi) == [[], []]


def test_preprocess_ims_scales_normalises_and_converts():
    white = Image.new("RGB", (40, 20), (255, 255, 255))
    black_gray = Image.new("L", (10, 10), 0)
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    x = preprocess_ims([white, black_gray, rgba], 16, [0.5] * 3, [0.5] * 3)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(3, 16, 16))
    assert torch.allclose(x[1], -torch.ones(3, 16, 16))
    assert torch.allclose(x[2, 0], torch.ones(16, 16)) and torch.allclose(
        x[2, 1], -torch.ones(16, 16)
    )
    imagenet = preprocess_ims([white], 8, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(imagenet[0, :, 0, 0], expected)


# --- ImageNet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_imagenet_classifier_recognises_coffee_and_a_cat(arch):
    classifier = imagenet_classifier(arch)
    assert len(classifier.classes) == 1000
    assert classifier.im_size == get_backbone(arch).im_size
    coffee, cat = classifier.predict([skdata.coffee(), skdata.chelsea()], top_k=1)
    assert coffee[0]["label"] in COFFEE, coffee
    assert cat[0]["label"] in CATS, cat
    assert coffee[0]["probability"] > 0.5 and cat[0]["probability"] > 0.5


# --- ONNX ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir, tmp_path_factory) -> tuple[Classifier, OnnxClassifier]:
    classifier = load_model(tiny_model_dir)
    path = export_onnx(classifier, tmp_path_factory.mktemp("onnx") / "sub" / "tiny.onnx")
    assert path.is_file()
    return classifier, OnnxClassifier(path, classifier.meta, threads=1)


def test_onnx_matches_pytorch(tiny_onnx, tiny_valid_images):
    classifier, onnx_classifier = tiny_onnx
    p_torch = classifier.predict_proba(tiny_valid_images)
    p_onnx = onnx_classifier.predict_proba(tiny_valid_images)
    assert p_onnx.shape == (8, 4)
    assert np.abs(p_torch - p_onnx).max() < 1e-4
    assert (p_torch.argmax(1) == p_onnx.argmax(1)).all()
    np.testing.assert_allclose(p_onnx.sum(axis=1), 1, atol=1e-5)  # softmax inside the file
    # Dynamic batch size: one image at a time gives the same.
    np.testing.assert_allclose(
        onnx_classifier.predict_proba(tiny_valid_images, batch_size=1), p_onnx, atol=1e-5
    )
    assert [p[0]["label"] for p in onnx_classifier.predict(tiny_valid_images, top_k=1)] == [
        p[0]["label"] for p in classifier.predict(tiny_valid_images, top_k=1)
    ]
    assert onnx_classifier.predict_proba([]).shape == (0, 4)


def test_onnx_file_declares_its_inputs_and_outputs(tiny_onnx):
    _, onnx_classifier = tiny_onnx
    (inp,) = onnx_classifier.session.get_inputs()
    (out,) = onnx_classifier.session.get_outputs()
    assert (inp.name, out.name) == ("image", "probabilities")
    assert inp.shape[1:] == [3, 64, 64]
    assert isinstance(inp.shape[0], str)  # dynamic batch axis


def test_export_leaves_the_classifier_usable(tiny_onnx, tiny_valid_images, tiny_classifier):
    classifier, _ = tiny_onnx
    np.testing.assert_allclose(
        classifier.predict_proba(tiny_valid_images),
        tiny_classifier.predict_proba(tiny_valid_images),
        atol=1e-6,
    )
    assert not classifier.model.training


def test_multilabel_onnx_exports_sigmoid_outputs(multilabel_model_dir, tmp_path):
    images = sorted((sample_data_path("objects_multilabel_tiny") / "images").glob("*.jpg"))[:5]
    classifier = load_model(multilabel_model_dir)
    onnx_classifier = OnnxClassifier(export_onnx(classifier, tmp_path / "m.onnx"), classifier.meta)
    p_torch = classifier.predict_proba(images)
    p_onnx = onnx_classifier.predict_proba(images)
    assert np.abs(p_torch - p_onnx).max() < 1e-4
    x = classifier.preprocess(images)
    with torch.no_grad():
        sigmoid = classifier.model(x).sigmoid().numpy()
    assert np.abs(p_onnx - sigmoid).max() < 1e-4
    assert not np.allclose(p_onnx.sum(axis=1), 1, atol=1e-3)
    assert [{p["label"] for p in row} for row in onnx_classifier.predict(images)] == [
        {p["label"] for p in row} for row in classifier.predict(images)
    ]


def test_measure_speed_for_pytorch_and_onnx(tiny_onnx):
    for classifier in tiny_onnx:
        speed = measure_speed(classifier, batch_size=4, repeats=1)
        assert set(speed) == {"latency_ms", "throughput"}
        assert 0 < speed["latency_ms"] < 10_000
        assert speed["throughput"] > 0


def test_linear_head_round_trip(objects_tiny, make_dls, tmp_path, tiny_valid_images):
    from utils_cv.classification.model import create_learner, fit_head_cached, get_preds

    learn = create_learner(make_dls(objects_tiny), "efficientnet_lite0", head="linear")
    fit_head_cached(learn, epochs=2, progress=False)
    model_dir = save_model(learn, tmp_path / "linear")
    assert json.loads((model_dir / META_FILE).read_text())["head"] == "linear"
    clf = load_model(model_dir)
    assert len([m for m in clf.model[1].modules() if isinstance(m, torch.nn.Linear)]) == 1
    y_score, _ = get_preds(learn, learn.dls.test_dl(tiny_valid_images))
    assert np.abs(clf.predict_proba(tiny_valid_images) - y_score).max() < 1e-4


def test_unknown_head_in_json(model_copy):
    meta = json.loads((model_copy / META_FILE).read_text())
    meta["head"] = "transformer"
    (model_copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="'head' should be one of mlp, linear"):
        load_model(model_copy)


def test_model_json_without_head_loads_as_mlp(model_copy, tiny_valid_images, tiny_classifier):
    # Models saved before the head field existed have fastai's MLP head.
    meta = json.loads((model_copy / META_FILE).read_text())
    del meta["head"]
    (model_copy / META_FILE).write_text(json.dumps(meta))
    clf = load_model(model_copy)
    assert clf.meta.head == "mlp"
    expected = tiny_classifier.predict_proba(tiny_valid_images)
    assert np.abs(clf.predict_proba(tiny_valid_images) - expected).max() < 1e-6
