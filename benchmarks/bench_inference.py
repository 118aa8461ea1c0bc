"""Benchmark: inference latency (batch 1) and throughput (batch 32) per backbone and setting.

For each backbone (efficientnet_lite0/1/2; resnet18/50 when their weights are in the torch
cache) a classifier is trained briefly on the shipped ``objects`` set (head on cached features)
at the backbone's image size, saved and loaded, then run in every setting of
``utils_cv.classification.optimize``: eager PyTorch fp32, channels-last, bf16 autocast (CPUs
with bf16 instructions, GPUs), fp16 autocast (GPU), ONNX Runtime fp32 and ONNX Runtime int8
(static, calibrated on the training images). ``--extra`` adds TorchScript (trace + freeze) and
``torch.compile``, which lost here and compile slowly.

Per setting: median batch-1 latency (ms) and batch-32 throughput (images/s) on preprocessed
validation images, measured interleaved with the other settings; the speed-up over eager fp32;
and the agreement of top-1 predictions with fp32 on the 40 validation images (full pipeline).

    python benchmarks/bench_inference.py
    python benchmarks/bench_inference.py --archs efficientnet_lite0 --repeats 9 --extra
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    base_parser,
    device_label,
    finish,
    load_snapshot,
    markdown_table,
    median,
    present_backbones,
    setup,
    time_side_by_side,
)

from utils_cv.classification.data import get_dls, get_image_files, sample_data_path
from utils_cv.classification.optimize import auto_candidates, auto_mode, optimize_predictor
from utils_cv.classification.predict import Predictor, TorchPredictor
from utils_cv.classification.saved import load_model, save_model
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import TrainConfig, create_learner, fit_recipe
from utils_cv.common.gpu import cpu_has_fast_bf16

ARCHS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50"]


def train_predictor(arch: str, data: Path, out_dir: Path, device) -> TorchPredictor:
    """``arch`` at its image size with a head trained on cached features (10 epochs), saved and
    loaded."""
    from fastai.vision.all import set_seed

    spec = ModelSpec(backbone=arch)
    set_seed(0)
    dls = get_dls(data, spec, 16, device=device)
    learn = create_learner(dls, spec)
    fit_recipe(learn, TrainConfig(epochs_head=10), progress=False)
    model_dir = save_model(learn, out_dir / arch)
    return load_model(model_dir, device)


def device_of(predictor: Predictor) -> torch.device:
    """Where ``predictor`` runs: ONNX Runtime predictors run on the CPU."""
    return getattr(predictor, "device", torch.device("cpu"))


def modes_for(device: torch.device) -> list[str]:
    """The settings of ``optimize_predictor`` worth measuring on ``device``."""
    if device.type == "cuda":
        modes = ["fp32", "channels_last", "fp16"]
        return modes + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    modes = ["fp32", "channels_last"] + (["bf16"] if cpu_has_fast_bf16() else [])
    return modes + ["onnx", "int8"]


class ExtraPredictor(TorchPredictor):
    """A TorchPredictor whose model is a TorchScript or compiled version of another's."""

    def __init__(self, base: TorchPredictor, model, mode: str):
        Predictor.__init__(self, base.spec)
        self.device, self.model = base.device, model  # already on the device, in eval mode
        self.mode, self.agreement = mode, None


def extra_predictors(base: TorchPredictor, example: np.ndarray) -> list[TorchPredictor]:
    """TorchScript (channels-last, trace + freeze) and torch.compile versions of ``base``."""
    import copy

    model = copy.deepcopy(base.model).to(memory_format=torch.channels_last).eval()
    x = torch.as_tensor(example).to(base.device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(model, x))
    compiled = torch.compile(copy.deepcopy(base.model).eval())
    return [
        ExtraPredictor(base, frozen, "torchscript"),
        ExtraPredictor(base, compiled, "compile"),
    ]


def build_variants(base, modes, train_ims, extra, example) -> tuple[dict, dict]:
    """{mode: predictor} and {mode: seconds to build it (export, quantisation, compile)}."""
    variants, build_s = {}, {}
    for mode in modes:
        start = time.perf_counter()
        variants[mode] = optimize_predictor(base, mode, calibration_ims=train_ims)
        build_s[mode] = time.perf_counter() - start
    if extra:
        for predictor in extra_predictors(base, example):
            start = time.perf_counter()
            predictor.run(example)  # compiles on the first call
            variants[predictor.mode] = predictor
            build_s[predictor.mode] = time.perf_counter() - start
    return variants, build_s


def agreement(base: TorchPredictor, variants: dict, valid_ims: list) -> dict:
    """Per mode: top-1 agreement with fp32 (0..1) and largest probability difference."""
    reference = base.predict_proba(valid_ims)
    out = {}
    for mode, predictor in variants.items():
        probs = predictor.predict_proba(valid_ims)
        out[mode] = {
            "top1_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_prob_diff": float(np.abs(probs - reference).max()),
        }
    return out


def measure(variants: dict, x1, x32, repeats: int, inner: int, device) -> dict:
    """Per mode: median batch-1 latency (ms, mean of ``inner`` calls) and batch-32 images/s."""

    def one(predictor):
        return lambda: [predictor.run(x1) for _ in range(inner)]

    fns = {}
    for mode, predictor in variants.items():
        fns[(mode, 1)] = one(predictor)
        fns[(mode, 32)] = lambda predictor=predictor: predictor.run(x32)
    times = time_side_by_side(fns, repeats=repeats, warmup=1, device=device)
    return {
        mode: {
            "latency_ms": median(times[(mode, 1)]) / inner * 1000,
            "throughput": len(x32) / median(times[(mode, 32)]),
        }
        for mode in variants
    }


def bench_arch(arch, data, tmp, device, args) -> list[dict]:
    """Rows of results (one per setting) for one backbone."""
    start = time.perf_counter()
    base = train_predictor(arch, data, tmp, device)
    train_s = time.perf_counter() - start
    valid_ims = get_image_files(data / "valid")
    train_ims = get_image_files(data / "train")
    x32 = base.preprocess(valid_ims[:32])
    x1 = x32[:1].copy()
    variants, build_s = build_variants(base, modes_for(device), train_ims, args.extra, x1)
    agree = agreement(base, variants, valid_ims)
    speed = measure(variants, x1, x32, args.repeats, args.inner, device)
    fp32 = speed["fp32"]
    rows = []
    for mode in variants:
        rows.append(
            {
                "arch": arch,
                "im_size": base.im_size,
                "device": device_label(device_of(variants[mode])),
                "mode": mode,
                **speed[mode],
                "latency_speedup": fp32["latency_ms"] / speed[mode]["latency_ms"],
                "throughput_speedup": speed[mode]["throughput"] / fp32["throughput"],
                **agree[mode],
                "build_s": build_s[mode],
                "auto": mode == auto_mode(device),
            }
        )
    print(f"{arch}: trained in {train_s:.0f} s")
    print(markdown_table(rows, COLUMNS))
    return rows


COLUMNS = {
    "backbone": ("arch", 0),
    "px": ("im_size", 0),
    "device": ("device", 0),
    "setting": ("mode", 0),
    "batch-1 latency ms": ("latency_ms", 1),
    "x fp32": ("latency_speedup", 2),
    "batch-32 images/s": ("throughput", 1),
    "x fp32 ": ("throughput_speedup", 2),
    "top-1 agreement": ("top1_agreement", 3),
    "max prob diff": ("max_abs_prob_diff", 4),
    "build s": ("build_s", 1),
}


def summary(rows: list[dict], device) -> dict:
    """Per backbone: the auto setting's speed-ups, what auto picks given calibration and check
    images (the first of ``auto_candidates`` with identical top-1), and the fastest settings
    with identical top-1 at batch 32 and batch 1."""
    out = {}
    for arch in dict.fromkeys(r["arch"] for r in rows):
        mine = [r for r in rows if r["arch"] == arch]
        exact = [r for r in mine if r["top1_agreement"] == 1.0]
        auto = next(r for r in mine if r["auto"])
        by_mode = {r["mode"]: r for r in mine}
        checked = next(
            by_mode[m]
            for m in auto_candidates(device, int8=True)
            if m in by_mode and by_mode[m]["top1_agreement"] == 1.0
        )
        out[arch] = {
            "auto_mode": auto["mode"],
            "auto_throughput_speedup": auto["throughput_speedup"],
            "auto_latency_speedup": auto["latency_speedup"],
            "auto_top1_identical": auto["top1_agreement"] == 1.0,
            "auto_checked_mode": checked["mode"],
            "auto_checked_throughput_speedup": checked["throughput_speedup"],
            "auto_checked_latency_speedup": checked["latency_speedup"],
            "fastest_identical_batch32": max(exact, key=lambda r: r["throughput"])["mode"],
            "fastest_identical_batch1": min(exact, key=lambda r: r["latency_ms"])["mode"],
            "target_2x_met": auto["throughput_speedup"] >= 2 and auto["top1_agreement"] == 1.0,
        }
    return out


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], "bench_inference")
    parser.add_argument("--archs", nargs="+", default=ARCHS, help="backbones to measure")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--inner", type=int, default=5, help="batch-1 calls per timing")
    parser.add_argument("--extra", action="store_true", help="add TorchScript and torch.compile")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    archs, skipped = present_backbones(args.archs)
    if skipped:
        print(f"skipped (weights not present): {', '.join(skipped)}")
    data = sample_data_path("objects")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        for arch in archs:
            rows += bench_arch(arch, data, Path(tmp), device, args)
            loads.append(load_snapshot())
    results = {"rows": rows, "summary": summary(rows, device), "skipped": skipped}
    table = markdown_table(rows, COLUMNS)
    finish(args, "inference", results, table, loads, device)
    for arch, s in results["summary"].items():
        print(
            f"{arch}: auto={s['auto_mode']} {s['auto_throughput_speedup']:.2f}x batch-32 "
            f"throughput, {s['auto_latency_speedup']:.2f}x batch-1 latency, top-1 identical: "
            f"{s['auto_top1_identical']}; with calibration + check images: "
            f"{s['auto_checked_mode']} {s['auto_checked_throughput_speedup']:.2f}x; "
            f"fastest identical: batch 32 "
            f"{s['fastest_identical_batch32']}, batch 1 {s['fastest_identical_batch1']}"
        )


if __name__ == "__main__":
    main()
