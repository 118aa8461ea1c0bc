"""Fast inference settings (optimize_predictor) on a small saved model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils_cv.classification import optimize
from utils_cv.classification.data import get_image_files, sample_data_path
from utils_cv.classification.optimize import (
    MODES,
    AgreementError,
    AutocastModel,
    _is_faster,
    auto_candidates,
    auto_mode,
    optimize_predictor,
    quantize_int8,
    top1_agreement,
)
from utils_cv.classification.predict import (
    OnnxPredictor,
    TorchPredictor,
    decisions,
    measure_speed,
)
from utils_cv.classification.saved import load_model
from utils_cv.classification.spec import ModelSpec
from utils_cv.common.gpu import cpu_has_fast_bf16

needs_bf16 = pytest.mark.skipif(not cpu_has_fast_bf16(), reason="CPU without bf16 instructions")


@pytest.fixture(scope="module")
def model_dir(objects_tiny, make_dls, tmp_path_factory):
    """Lite0 at 96 px, head trained 2 epochs on cached features of objects_tiny: confident
    enough for int8 to keep most decisions (the shared 64 px model is not)."""
    from fastai.vision.all import set_seed

    from utils_cv.classification.saved import save_model
    from utils_cv.classification.train import create_learner, fit_head_cached

    set_seed(0)
    spec = ModelSpec(im_size=96)
    learn = create_learner(make_dls(objects_tiny, spec), spec)
    fit_head_cached(learn, 2, 1e-2, progress=False)
    return save_model(learn, tmp_path_factory.mktemp("optimize") / "model")


@pytest.fixture(scope="module")
def predictor(model_dir) -> TorchPredictor:
    return load_model(model_dir)


@pytest.fixture(scope="module")
def valid_ims() -> list:
    """The 40 validation images of the shipped objects set."""
    return get_image_files(sample_data_path("objects") / "valid")


@pytest.fixture(scope="module")
def train_ims() -> list:
    """16 training images of the shipped objects set, spread over the classes."""
    files = get_image_files(sample_data_path("objects") / "train")
    return files[::4][:16] if len(files) >= 64 else files[:16]


@pytest.fixture(scope="module")
def reference(predictor, valid_ims) -> np.ndarray:
    return predictor.predict_proba(valid_ims)


# --- choosing a setting -----------------------------------------------------------------------


def test_auto_mode_per_device():
    assert auto_mode("cpu") == "onnx"
    assert auto_mode("cuda") == "fp16"
    assert auto_candidates("cpu") == ["onnx", "fp32"]
    assert auto_candidates("cpu", int8=True) == ["int8", "onnx", "fp32"]
    assert auto_candidates("cuda", int8=True) == ["fp16", "fp32"]
    assert MODES == ("auto", "fp32", "channels_last", "bf16", "fp16", "onnx", "int8")


def test_default_is_onnx_with_top1_identical_to_fp32(predictor, valid_ims, reference):
    fast = optimize_predictor(predictor)
    assert isinstance(fast, OnnxPredictor) and fast.mode == "onnx"
    assert fast.agreement is None
    probs = fast.predict_proba(valid_ims)
    assert probs.shape == (40, 4)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    assert np.abs(probs - reference).max() < 1e-5
    assert top1_agreement(predictor, fast, valid_ims) == 1.0


def test_same_interface_and_predictions(predictor, valid_ims):
    fast = optimize_predictor(predictor, check_ims=valid_ims)
    assert fast.agreement == 1.0
    assert fast.spec == predictor.spec
    assert fast.classes == predictor.classes and fast.im_size == predictor.im_size
    ims = valid_ims[:3]
    slow, quick = predictor.predict(ims, top_k=2), fast.predict(ims, top_k=2)
    assert [[p["label"] for p in row] for row in quick] == [
        [p["label"] for p in row] for row in slow
    ]
    assert fast.predict_proba([]).shape == (0, 4)


@pytest.mark.parametrize("mode", ["fp32", "channels_last"])
def test_fp32_torch_modes_match(predictor, valid_ims, reference, mode):
    fast = optimize_predictor(predictor, mode)
    assert fast.mode == mode and isinstance(fast, TorchPredictor)
    assert np.abs(fast.predict_proba(valid_ims) - reference).max() < 1e-5


@needs_bf16
def test_bf16_autocast_is_close(predictor, valid_ims, reference):
    fast = optimize_predictor(predictor, "bf16")
    assert isinstance(fast.model, AutocastModel)
    probs = fast.predict_proba(valid_ims)
    assert probs.dtype == np.float32
    # bf16 keeps 8 bits of mantissa: probabilities move by up to a few tenths on this weak
    # 96 px model, the top-1 class rarely
    assert np.abs(probs - reference).max() < 0.3
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_input_predictor_is_unchanged(predictor, valid_ims, reference):
    optimize_predictor(predictor, "channels_last")
    conv = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # not converted to channels-last
    assert np.array_equal(predictor.predict_proba(valid_ims), reference)


def test_int8_needs_and_uses_calibration_images(predictor, valid_ims, train_ims, reference):
    with pytest.raises(ValueError, match="calibration_ims"):
        optimize_predictor(predictor, "int8")
    fast = optimize_predictor(predictor, "int8", calibration_ims=train_ims)
    assert fast.mode == "int8" and isinstance(fast, OnnxPredictor)
    probs = fast.predict_proba(valid_ims)
    assert probs.shape == (40, 4)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)  # the softmax is not quantised
    # int8 may flip close calls: auto checks before using it
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.8


def test_quantize_int8_returns_a_smaller_onnx_model(predictor, train_ims):
    from utils_cv.classification.predict import onnx_bytes

    int8 = quantize_int8(predictor, train_ims[:8])
    assert isinstance(int8, bytes)
    assert len(int8) < 0.5 * len(onnx_bytes(predictor))  # int8 weights: a quarter, roughly
    with pytest.raises(ValueError, match="calibration_ims"):
        quantize_int8(predictor, [])


@pytest.mark.filterwarnings("ignore:'int8' decided differently")  # it may on this model
def test_auto_with_calibration_keeps_top1_identical(predictor, valid_ims, train_ims, reference):
    fast = optimize_predictor(predictor, check_ims=valid_ims, calibration_ims=train_ims)
    assert fast.mode in ("int8", "onnx")
    assert fast.agreement == 1.0
    assert (fast.predict_proba(valid_ims).argmax(1) == reference.argmax(1)).all()


# --- when a setting disagrees ---------------------------------------------------------------


class ReversedDecisions(TorchPredictor):
    """A predictor whose probabilities are its network's in reverse class order: every
    setting built from its network decides differently from it (4 classes: the top-1 class
    always moves)."""

    def run(self, x):
        return super().run(x)[:, ::-1].copy()


@pytest.fixture
def reversed_predictor(predictor) -> ReversedDecisions:
    return ReversedDecisions(predictor.model, predictor.spec)


def test_auto_falls_back_to_fp32_when_check_fails(reversed_predictor, valid_ims):
    with pytest.warns(UserWarning, match="'onnx' decided differently from fp32 on 100.0%"):
        fast = optimize_predictor(reversed_predictor, check_ims=valid_ims[:8])
    assert fast.mode == "fp32" and fast.agreement == 1.0
    assert type(fast) is TorchPredictor


def test_explicit_mode_raises_when_check_fails(reversed_predictor, valid_ims):
    with pytest.raises(AgreementError, match="mode='onnx' decides differently .* 100.0%"):
        optimize_predictor(reversed_predictor, "onnx", check_ims=valid_ims[:8])
    # Without check images nothing is compared.
    assert optimize_predictor(reversed_predictor, "onnx").agreement is None


def test_bad_arguments(predictor, monkeypatch):
    with pytest.raises(ValueError, match="Unknown mode 'fastest'"):
        optimize_predictor(predictor, "fastest")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        optimize_predictor(predictor, "fp16")
    onnx_predictor = optimize_predictor(predictor, "onnx")
    with pytest.raises(TypeError, match="needs a TorchPredictor"):
        optimize_predictor(onnx_predictor)
    # On a CPU without bf16 instructions (this one may have them: the probe is replaced).
    monkeypatch.setattr(optimize, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16 instructions"):
        optimize_predictor(predictor, "bf16")


# --- helpers ----------------------------------------------------------------------------------


def test_run_and_measure_speed(predictor, valid_ims, reference):
    x = predictor.preprocess(valid_ims[:4])
    for mode in ("fp32", "channels_last", "onnx"):
        fast = optimize_predictor(predictor, mode)
        assert np.abs(fast.run(x) - reference[:4]).max() < 1e-5
        speed = measure_speed(fast, batch_size=2, repeats=1)
        assert speed["latency_ms"] > 0 and speed["throughput"] > 0


def test_autocast_model_returns_fp32_channels_last():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    wrapped = AutocastModel(model, "cpu", None)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    out = wrapped(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-6)
    if cpu_has_fast_bf16():
        bf16 = AutocastModel(model, "cpu", torch.bfloat16)(x)
        assert bf16.dtype == torch.float32 and torch.allclose(bf16, expected, atol=0.05)


def test_multilabel_decisions(multilabel_model_dir, multilabel_tiny):
    base = load_model(multilabel_model_dir)
    ims = get_image_files(multilabel_tiny / "images")[:6]
    fast = optimize_predictor(base, check_ims=ims)
    assert fast.mode == "onnx" and fast.agreement == 1.0
    probs = base.predict_proba(ims)
    chosen = decisions(probs, base.spec)
    assert chosen.dtype == bool and chosen.shape == probs.shape
    assert np.array_equal(chosen, probs >= 0.4)
    assert np.abs(fast.predict_proba(ims) - probs).max() < 1e-5
    assert [p["label"] for p in fast.predict(ims)[0]] == [p["label"] for p in base.predict(ims)[0]]


@pytest.mark.gpu
def test_fp16_on_cuda(model_dir, valid_ims, reference):
    fast = optimize_predictor(load_model(model_dir, "cuda"), check_ims=valid_ims)
    # fp16 is kept only where it is faster (on a large GPU a small model may not gain).
    assert fast.mode in ("fp16", "fp32") and fast.agreement == 1.0
    assert np.abs(fast.predict_proba(valid_ims) - reference).max() < 0.05
    fp16 = optimize_predictor(load_model(model_dir, "cuda"), "fp16", check_ims=valid_ims)
    assert np.abs(fp16.predict_proba(valid_ims) - reference).max() < 0.05


def test_is_faster_compares_measured_speed():
    spec = ModelSpec(im_size=32, classes=("a", "b"), multilabel=False)
    small = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    big = nn.Sequential(
        nn.Conv2d(3, 128, 7, padding=3),
        nn.Conv2d(128, 128, 7, padding=3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 2),
    )
    fast, slow = TorchPredictor(small, spec), TorchPredictor(big, spec)
    assert _is_faster(fast, slow) and not _is_faster(slow, fast)
