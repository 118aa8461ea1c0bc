"""train_and_evaluate and onnx_parity on objects_tiny at 64 px (one short training run)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from utils_cv.classification.export import load_model, model_size_mb
from utils_cv.classification.model import TrainMetricsRecorder, validation_accuracy
from utils_cv.classification.training import onnx_parity, train_and_evaluate

KEYS = {
    "learn",
    "model_dir",
    "architecture",
    "im_size",
    "validation_accuracy",
    "training_seconds",
    "model_size_mb",
    "inference_ms",
    "throughput",
}


@pytest.fixture(scope="module")
def run(objects_tiny, tmp_path_factory):
    """(result, wall seconds, out_dir): one head epoch and one whole-network epoch, without
    the two tool images of valid/ (passed through ``files``)."""
    out_dir = tmp_path_factory.mktemp("train_and_evaluate")
    files = [p for p in sorted(objects_tiny.rglob("*.jpg")) if p.parent.parent.name == "train"]
    files += sorted((objects_tiny / "valid").glob("[!t]*/*.jpg"))  # not valid/tool
    start = time.perf_counter()
    result = train_and_evaluate(
        objects_tiny,
        "efficientnet_lite0",
        im_size=64,
        epochs_head=1,
        epochs=1,
        lr=1e-3,
        batch_size=8,
        out_dir=out_dir,
        files=files,
        progress=False,
    )
    return result, time.perf_counter() - start, out_dir


def test_returns_every_key(run):
    result, *_ = run
    assert set(result) == KEYS
    assert result["architecture"] == "efficientnet_lite0"
    assert result["im_size"] == 64


def test_model_is_saved_under_arch_and_size(run):
    result, _, out_dir = run
    model_dir = result["model_dir"]
    assert model_dir == out_dir / "efficientnet_lite0_64"
    classifier = load_model(model_dir)
    assert classifier.im_size == 64
    assert classifier.classes == ["apple", "citrus", "flower", "tool"]
    assert result["model_size_mb"] == model_size_mb(model_dir)
    assert 5 < result["model_size_mb"] < 30


def test_files_restrict_the_data(run):
    learn = run[0]["learn"]
    assert len(learn.dls.train_ds) == 16
    assert len(learn.dls.valid_ds) == 6
    assert all(p.parent.name != "tool" for p in learn.dls.valid_ds.items)


def test_sane_numbers(run):
    result, wall, _ = run
    accuracy = result["validation_accuracy"]
    assert 0 <= accuracy <= 1
    assert accuracy * 6 == pytest.approx(round(accuracy * 6))  # 6 validation images
    assert accuracy == validation_accuracy(result["learn"])
    assert 0 < result["training_seconds"] < wall
    assert 0 < result["inference_ms"] < 10_000
    assert result["throughput"] > 0


def test_both_phases_are_recorded(run):
    learn = run[0]["learn"]
    (recorder,) = [cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)]
    assert len(recorder.train_metrics) == len(recorder.valid_metrics) == 2
    assert all(np.isfinite(recorder.losses))


def test_unknown_architecture_fails_before_training(objects_tiny, tmp_path):
    with pytest.raises(ValueError, match="Unknown architecture 'resnet1000'"):
        train_and_evaluate(objects_tiny, "resnet1000", out_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_onnx_parity(run, tiny_valid_images):
    model_dir = run[0]["model_dir"]
    parity = onnx_parity(model_dir, tiny_valid_images)
    assert set(parity) == {"onnx_path", "max_abs_diff", "top1_agreement", "torch", "onnx"}
    assert parity["onnx_path"] == model_dir / "model.onnx"
    assert parity["onnx_path"].stat().st_size > 1_000_000
    assert parity["max_abs_diff"] < 1e-4
    assert parity["top1_agreement"] == 1.0
    for name in ("torch", "onnx"):
        assert parity[name]["latency_ms"] > 0 and parity[name]["throughput"] > 0
