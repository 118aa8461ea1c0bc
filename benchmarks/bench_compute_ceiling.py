"""Benchmark: the machine's matrix-multiply peak (GFLOP/s) and the share of it that each model
reaches in inference and training.

Peak: ``torch.mm`` of two ``--n`` x ``--n`` matrices in fp32 (and bf16 on CPUs with bf16
instructions, fp16 and bf16 on a GPU), 2 n^3 floating-point operations per product.
Models (at their default image size, ImageNet weights, a 4-class head): inference on a batch
of 32 (eager fp32, and each setting of ``optimize_predictor`` that runs here) and one training
step of the whole network on a batch of 16 (fp32, and ``fast_training``'s setting). Their
floating-point operations are counted with ``torch.utils.flop_counter`` (convolutions and
matrix products) for the forward pass; a training step counts 3x its forward pass. Every function is timed in the same
interleaved rounds as the matrix products, so the fractions hold on a shared machine.

    python benchmarks/bench_compute_ceiling.py
    python benchmarks/bench_compute_ceiling.py --archs efficientnet_lite0 --n 1024 --repeats 5
"""

from __future__ import annotations

import torch
from bench_training_throughput import BATCH_SIZE, Setting, Trainer, fast_setting, four_class_spec
from common import (
    base_parser,
    device_label,
    finish,
    forward_flops,
    load_snapshot,
    markdown_table,
    median,
    present_backbones,
    setup,
    time_side_by_side,
)

from utils_cv.classification.network import build_classifier
from utils_cv.classification.optimize import optimize_predictor
from utils_cv.classification.predict import TorchPredictor
from utils_cv.common.gpu import cpu_has_fast_bf16

ARCHS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50"]


def matmul_dtypes(device: torch.device) -> list[torch.dtype]:
    """fp32, plus the reduced precisions this device multiplies fast."""
    if device.type == "cuda":
        return [torch.float32, torch.float16, torch.bfloat16]
    return [torch.float32] + ([torch.bfloat16] if cpu_has_fast_bf16() else [])


def matmul_fns(n: int, device) -> tuple[dict, float]:
    """{"matmul <dtype>": function} and the floating-point operations of one call."""
    fns = {}
    for dtype in matmul_dtypes(device):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        fns[f"matmul {str(dtype).split('.')[-1]}"] = lambda a=a, b=b: torch.mm(a, b)
    return fns, 2.0 * n**3


def inference_modes(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "fp16"]
    return ["fp32", "onnx"] + (["bf16"] if cpu_has_fast_bf16() else [])


def model_fns(arch: str, device) -> tuple[dict, dict, dict]:
    """Timed functions of one backbone, their floating-point operations and precisions."""
    spec = four_class_spec(arch)
    size = spec.im_size
    torch.manual_seed(0)
    model = build_classifier(spec, pretrained=True).eval()
    base = TorchPredictor(model, spec, device)
    x32 = torch.randn(32, 3, size, size, device=device)
    infer_flops = forward_flops(model, x32)
    fns, flops, dtypes = {}, {}, {}
    for mode in inference_modes(device):
        predictor = optimize_predictor(base, mode)
        # PyTorch predictors take the batch where it already is (no copy is timed), ONNX
        # Runtime a numpy array
        x = x32 if isinstance(predictor, TorchPredictor) else x32.cpu().numpy()
        key = f"{arch} inference {mode}"
        fns[key] = lambda predictor=predictor, x=x: predictor.run(x)
        flops[key] = infer_flops
        dtypes[key] = {"bf16": "bfloat16", "fp16": "float16"}.get(mode, "float32")
    batch = [
        (
            torch.randn(BATCH_SIZE, 3, size, size, device=device),
            torch.randint(0, 4, (BATCH_SIZE,), device=device),
        )
    ]
    train_flops = 3 * infer_flops * BATCH_SIZE / len(x32)  # backward: about 2x forward
    for setting in (Setting("fp32"), fast_setting(device)):
        trainer = Trainer(model, setting, device)
        key = f"{arch} training {setting.name}"
        fns[key] = lambda t=trainer: t.step(batch)
        flops[key] = train_flops
        dtypes[key] = str(setting.dtype or torch.float32).split(".")[-1]
    return fns, flops, dtypes


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], "bench_compute_ceiling")
    parser.add_argument("--archs", nargs="+", default=ARCHS, help="backbones to measure")
    parser.add_argument("--n", type=int, default=2048, help="matrix side for the peak")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    archs, skipped = present_backbones(args.archs)
    if skipped:
        print(f"skipped (weights not present): {', '.join(skipped)}")
    fns, n_flops = matmul_fns(args.n, device)
    flops = {key: n_flops for key in fns}
    dtypes = {key: key.split()[-1] for key in fns}
    for arch in archs:
        arch_fns, arch_flops, arch_dtypes = model_fns(arch, device)
        fns.update(arch_fns)
        flops.update(arch_flops)
        dtypes.update(arch_dtypes)
    times = time_side_by_side(fns, repeats=args.repeats, warmup=1, device=device)
    gflops = {key: flops[key] / median(times[key]) / 1e9 for key in fns}
    peak = {key.split()[-1]: value for key, value in gflops.items() if key.startswith("matmul")}
    rows = []
    for key in fns:
        what, precision = key, dtypes[key]
        own_peak = peak.get(precision, peak["float32"])
        rows.append(
            {
                "what": what,
                "device": device_label(device),
                "precision": precision,
                "gflop": flops[key] / 1e9,
                "seconds": median(times[key]),
                "gflops_per_s": gflops[key],
                "fraction_of_fp32_peak": gflops[key] / peak["float32"],
                "fraction_of_own_peak": gflops[key] / own_peak,
            }
        )
    results = {"rows": rows, "peak_gflops_per_s": peak, "matrix_side": args.n, "skipped": skipped}
    finish(args, "compute_ceiling", results, markdown_table(rows, COLUMNS), loads, device)


COLUMNS = {
    "what": ("what", 0),
    "device": ("device", 0),
    "precision": ("precision", 0),
    "GFLOP per call": ("gflop", 1),
    "median s": ("seconds", 3),
    "GFLOP/s": ("gflops_per_s", 1),
    "of fp32 peak": ("fraction_of_fp32_peak", 3),
    "of own-precision peak": ("fraction_of_own_peak", 3),
}


if __name__ == "__main__":
    main()
