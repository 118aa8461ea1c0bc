"""Fast inference settings (optimize_classifier) and the fast training callback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils_cv.classification import inference
from utils_cv.classification.data import get_dls, get_image_files, sample_data_path
from utils_cv.classification.export import (
    Classifier,
    OnnxClassifier,
    load_model,
    measure_speed,
    save_model,
)
from utils_cv.classification.inference import (
    MODES,
    AgreementError,
    AutocastModel,
    FastTraining,
    OrtClassifier,
    auto_candidates,
    auto_mode,
    cpu_flags,
    cpu_has_fast_bf16,
    decisions,
    fast_training,
    optimize_classifier,
    predict_batch,
    top1_agreement,
)
from utils_cv.classification.model import create_learner, fit_head_cached

needs_bf16 = pytest.mark.skipif(not cpu_has_fast_bf16(), reason="CPU without bf16 instructions")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """efficientnet_lite0 at 96 px, head trained 2 epochs on cached features of objects_tiny."""
    from fastai.vision.all import set_seed

    set_seed(0)
    dls = get_dls(sample_data_path("objects_tiny"), 96, 8, num_workers=0)
    learn = create_learner(dls)
    fit_head_cached(learn, 2, 1e-2, progress=False)
    return save_model(learn, tmp_path_factory.mktemp("inference") / "model")


@pytest.fixture(scope="module")
def classifier(model_dir) -> Classifier:
    return load_model(model_dir)


@pytest.fixture(scope="module")
def valid_ims() -> list:
    """The 40 validation images of the shipped objects set."""
    return get_image_files(sample_data_path("objects") / "valid")


@pytest.fixture(scope="module")
def train_ims() -> list:
    """16 training images of the shipped objects set, 4 per class."""
    files = get_image_files(sample_data_path("objects") / "train")
    return files[::4][:16] if len(files) >= 64 else files[:16]


@pytest.fixture(scope="module")
def reference(classifier, valid_ims) -> np.ndarray:
    return classifier.predict_proba(valid_ims)


# --- choosing a setting -----------------------------------------------------------------------


def test_auto_mode_per_device():
    assert auto_mode("cpu") == "onnx"
    assert auto_mode("cuda") == "fp16"
    assert auto_candidates("cpu") == ["onnx", "fp32"]
    assert auto_candidates("cpu", int8=True) == ["int8", "onnx", "fp32"]
    assert auto_candidates("cuda", int8=True) == ["fp16", "fp32"]


def test_cpu_flags_and_bf16_detection():
    flags = cpu_flags()
    assert isinstance(flags, set)
    assert cpu_has_fast_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_default_is_onnx_with_top1_identical_to_fp32(classifier, valid_ims, reference):
    fast = optimize_classifier(classifier)
    assert isinstance(fast, OrtClassifier) and fast.mode == "onnx"
    assert fast.agreement is None
    probs = fast.predict_proba(valid_ims)
    assert probs.shape == (40, 4)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    assert np.abs(probs - reference).max() < 1e-4
    assert top1_agreement(classifier, fast, valid_ims) == 1.0


def test_same_interface_and_predictions(classifier, valid_ims):
    fast = optimize_classifier(classifier, check_ims=valid_ims)
    assert fast.agreement == 1.0
    assert fast.classes == classifier.classes and fast.im_size == classifier.im_size
    ims = valid_ims[:3]
    slow, quick = classifier.predict(ims, top_k=2), fast.predict(ims, top_k=2)
    assert [[p["label"] for p in row] for row in quick] == [
        [p["label"] for p in row] for row in slow
    ]
    assert fast.predict_proba([]).shape == (0, 4)


@pytest.mark.parametrize("mode", ["fp32", "channels_last"])
def test_fp32_torch_modes_match(classifier, valid_ims, reference, mode):
    fast = optimize_classifier(classifier, mode)
    assert fast.mode == mode
    assert np.abs(fast.predict_proba(valid_ims) - reference).max() < 1e-5


@needs_bf16
def test_bf16_autocast_is_close(classifier, valid_ims, reference):
    fast = optimize_classifier(classifier, "bf16")
    assert isinstance(fast.model, AutocastModel)
    probs = fast.predict_proba(valid_ims)
    assert probs.dtype == np.float32
    # bf16 keeps 8 bits of mantissa: probabilities move by up to a few tenths on this weak
    # 96 px model, the top-1 class rarely
    assert np.abs(probs - reference).max() < 0.3
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_input_classifier_is_unchanged(classifier, valid_ims, reference):
    optimize_classifier(classifier, "channels_last")
    conv = next(m for m in classifier.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # not converted to channels-last
    assert np.array_equal(classifier.predict_proba(valid_ims), reference)


def test_int8_needs_and_uses_calibration_images(classifier, valid_ims, train_ims, reference):
    with pytest.raises(ValueError, match="calibration_ims"):
        optimize_classifier(classifier, "int8")
    fast = optimize_classifier(classifier, "int8", calibration_ims=train_ims)
    assert fast.mode == "int8"
    probs = fast.predict_proba(valid_ims)
    assert probs.shape == (40, 4)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)  # the softmax is not quantised
    # int8 may flip close calls (it does on 2 of these 40 images): auto checks before using it
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.8


@pytest.mark.filterwarnings("ignore:'int8' decided differently")  # it does on this model
def test_auto_with_calibration_keeps_top1_identical(classifier, valid_ims, train_ims, reference):
    fast = optimize_classifier(classifier, check_ims=valid_ims, calibration_ims=train_ims)
    assert fast.mode in ("int8", "onnx")
    assert fast.agreement == 1.0
    assert (fast.predict_proba(valid_ims).argmax(1) == reference.argmax(1)).all()


# --- when a setting disagrees ---------------------------------------------------------------


class _Reversed(Classifier):
    """Predicts the classes in reverse order: always disagrees with its base."""

    def __init__(self, base, mode):
        super().__init__(base.model, base.meta, base.device)
        self.mode = mode

    def predict_proba(self, ims, batch_size=32):
        return super().predict_proba(ims, batch_size)[:, ::-1]


@pytest.fixture
def onnx_disagrees(monkeypatch):
    build = inference._build

    def fake(classifier, mode, calibration_ims, threads):
        fast = build(classifier, mode, calibration_ims, threads)
        return _Reversed(classifier, mode) if mode == "onnx" else fast

    monkeypatch.setattr(inference, "_build", fake)


def test_auto_falls_back_to_fp32_when_check_fails(classifier, valid_ims, onnx_disagrees):
    with pytest.warns(UserWarning, match="'onnx' decided differently"):
        fast = optimize_classifier(classifier, check_ims=valid_ims[:8])
    assert fast.mode == "fp32" and fast.agreement == 1.0


def test_explicit_mode_raises_when_check_fails(classifier, valid_ims, onnx_disagrees):
    with pytest.raises(AgreementError, match="mode='onnx'"):
        optimize_classifier(classifier, "onnx", check_ims=valid_ims[:8])


def test_bad_arguments(classifier, monkeypatch):
    with pytest.raises(ValueError, match="Unknown mode"):
        optimize_classifier(classifier, "fastest")
    with pytest.raises(ValueError, match="CUDA"):
        optimize_classifier(classifier, "fp16")
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16 instructions"):
        optimize_classifier(classifier, "bf16")
    with pytest.raises(TypeError, match="PyTorch Classifier"):
        optimize_classifier(OrtClassifier.__new__(OrtClassifier))
    assert set(MODES) >= {"auto", "fp32", "onnx", "int8", "bf16", "fp16", "channels_last"}


# --- helpers ----------------------------------------------------------------------------------


def test_predict_batch_and_measure_speed(classifier, valid_ims, reference):
    x = classifier.preprocess(valid_ims[:4])
    for mode in ("fp32", "channels_last", "onnx"):
        fast = optimize_classifier(classifier, mode)
        assert np.abs(predict_batch(fast, x) - reference[:4]).max() < 1e-4
    assert isinstance(fast, OnnxClassifier)  # export.measure_speed times it with run_tensor
    speed = measure_speed(fast, batch_size=2, repeats=1)
    assert speed["latency_ms"] > 0 and speed["throughput"] > 0


def test_multilabel_decisions(multilabel_model_dir, multilabel_tiny):
    base = load_model(multilabel_model_dir)
    ims = get_image_files(multilabel_tiny / "images")[:6]
    fast = optimize_classifier(base, check_ims=ims)
    assert fast.mode == "onnx" and fast.agreement == 1.0
    probs = base.predict_proba(ims)
    assert decisions(probs, base).dtype == bool and decisions(probs, base).shape == probs.shape
    assert np.abs(fast.predict_proba(ims) - probs).max() < 1e-4
    assert [p["label"] for p in fast.predict(ims)[0]] == [p["label"] for p in base.predict(ims)[0]]


# --- training -----------------------------------------------------------------------------------


def test_fast_training_fits_and_can_be_removed(make_dls, objects_tiny):
    from fastai.vision.all import set_seed

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny))
    assert fast_training(learn, bf16=cpu_has_fast_bf16()) is learn
    cb = next(c for c in learn.cbs if isinstance(c, FastTraining))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.losses[-1].item())
    assert not torch.is_autocast_enabled("cpu")  # the autocast is closed after every batch
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert next(learn.model.parameters()).dtype == torch.float32
    preds, _ = learn.get_preds()
    assert preds.dtype == torch.float32 and preds.shape == (8, 4)
    fit_head_cached(learn, 1, progress=False)  # the cached-feature recipe runs too
    learn.remove_cbs(FastTraining)
    assert cb not in learn.cbs


def test_fast_training_defaults_to_fp32_channels_last(make_dls, objects_tiny, monkeypatch):
    learn = create_learner(make_dls(objects_tiny))
    fast_training(learn)
    assert [c.bf16 for c in learn.cbs if isinstance(c, FastTraining)] == [False]
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16 instructions"):
        fast_training(create_learner(make_dls(objects_tiny)), bf16=True)


@pytest.mark.gpu
def test_fp16_on_cuda(model_dir, valid_ims, reference):
    fast = optimize_classifier(load_model(model_dir, "cuda"), check_ims=valid_ims)
    # fp16 is kept only where it is faster (on a large GPU a small model may not gain).
    assert fast.mode in ("fp16", "fp32") and fast.agreement == 1.0
    assert np.abs(fast.predict_proba(valid_ims) - reference).max() < 0.05
    fp16 = optimize_classifier(load_model(model_dir, "cuda"), "fp16", check_ims=valid_ims)
    assert np.abs(fp16.predict_proba(valid_ims) - reference).max() < 0.05


def test_is_faster_compares_measured_speed():
    from utils_cv.classification.export import Classifier, ModelMeta
    from utils_cv.classification.inference import _is_faster

    meta = ModelMeta("efficientnet_lite0", ["a", "b"], 32, [0.5] * 3, [0.5] * 3)
    small = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    big = nn.Sequential(
        nn.Conv2d(3, 128, 7, padding=3),
        nn.Conv2d(128, 128, 7, padding=3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 2),
    )
    fast, slow = Classifier(small.eval(), meta), Classifier(big.eval(), meta)
    assert _is_faster(fast, slow) and not _is_faster(slow, fast)
