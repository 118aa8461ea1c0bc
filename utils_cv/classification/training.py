"""Train-and-evaluate in one call: what notebook 03 and the benchmarks run per model type."""

from __future__ import annotations

from pathlib import Path

from utils_cv.classification.backbones import get_backbone
from utils_cv.classification.data import get_dls
from utils_cv.classification.export import (
    OnnxClassifier,
    export_onnx,
    load_model,
    measure_speed,
    model_size_mb,
    save_model,
)
from utils_cv.classification.model import (
    EPOCHS_HEAD,
    LEARNING_RATE,
    create_learner,
    fit_recipe,
    validation_accuracy,
)


def train_and_evaluate(
    data_path: str | Path,
    arch: str,
    im_size: int | None = None,
    epochs_head: int = EPOCHS_HEAD,
    epochs: int = 0,
    lr: float = LEARNING_RATE,
    batch_size: int = 16,
    out_dir: str | Path = "outputs",
    files=None,
    seed: int = 42,
    progress: bool = True,
) -> dict:
    """Train ``arch`` on ``data_path`` with ``fit_recipe``, save it to ``out_dir/<arch>_<im_size>`` and measure it.

    Returns a dict: learn, model_dir, validation_accuracy (fraction), training_seconds,
    model_size_mb, inference_ms (batch 1), throughput (images/s at batch 32).
    """
    backbone = get_backbone(arch)
    im_size = im_size or backbone.im_size
    dls = get_dls(
        data_path, im_size, batch_size, backbone.mean, backbone.std, seed=seed, files=files
    )
    learn = create_learner(dls, arch)
    seconds = fit_recipe(learn, epochs_head, epochs, lr, progress=progress)
    model_dir = save_model(learn, Path(out_dir) / f"{backbone.name}_{im_size}", im_size=im_size)
    speed = measure_speed(load_model(model_dir))
    return {
        "learn": learn,
        "model_dir": model_dir,
        "architecture": backbone.name,
        "im_size": im_size,
        "validation_accuracy": validation_accuracy(learn),
        "training_seconds": seconds,
        "model_size_mb": model_size_mb(model_dir),
        "inference_ms": speed["latency_ms"],
        "throughput": speed["throughput"],
    }


def onnx_parity(model_dir: str | Path, im_paths, onnx_path: str | Path | None = None) -> dict:
    """Export the saved model to ONNX and compare it with PyTorch on ``im_paths``.

    Returns {"onnx_path", "max_abs_diff" (of probabilities), "top1_agreement" (fraction),
    "torch": measure_speed(...), "onnx": measure_speed(...)}.
    """
    import numpy as np

    classifier = load_model(model_dir)
    onnx_path = Path(onnx_path or Path(model_dir) / "model.onnx")
    export_onnx(classifier, onnx_path)
    onnx_classifier = OnnxClassifier(onnx_path, classifier.meta)
    p_torch = classifier.predict_proba(im_paths)
    p_onnx = onnx_classifier.predict_proba(im_paths)
    return {
        "onnx_path": onnx_path,
        "max_abs_diff": float(np.abs(p_torch - p_onnx).max()),
        "top1_agreement": float((p_torch.argmax(1) == p_onnx.argmax(1)).mean()),
        "torch": measure_speed(classifier),
        "onnx": measure_speed(onnx_classifier),
    }
