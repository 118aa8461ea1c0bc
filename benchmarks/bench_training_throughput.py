"""Benchmark: training throughput (images/s) per backbone and image size, fp32 against the
faster settings of ``utils_cv.classification.train.fast_training``.

For each backbone (efficientnet_lite0/1/2; resnet18/50 when their weights are in the torch
cache) and image size (160, 224, 300 px), the whole network (body unfrozen, as in fine-tuning)
takes training steps (forward, cross-entropy, backward, AdamW step) on ``--batches`` real
augmented batches of 16 images of the shipped ``objects`` set, already loaded (data loading is
``bench_dataloading.py``'s subject). Settings, each on its own copy of the same network:

- CPU: fp32; channels-last fp32 (what ``fast_training(learn)`` applies); channels-last + bf16
  autocast (CPUs with bf16 instructions; ``fast_training(learn, bf16=True)``).
- GPU: fp32; channels-last fp32; fp16 autocast with gradient scaling (fastai's
  ``MixedPrecision``, what ``fast_training`` applies on CUDA); bf16 autocast.

Correctness: on one batch from the same weights, each setting's loss and gradients are
compared with fp32 (relative loss difference, cosine similarity of all gradients).

    python benchmarks/bench_training_throughput.py
    python benchmarks/bench_training_throughput.py --archs efficientnet_lite0 --sizes 224 --repeats 5
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

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
from torch import nn

from utils_cv.classification.data import get_dls, sample_data_path
from utils_cv.classification.network import build_classifier
from utils_cv.classification.spec import ModelSpec
from utils_cv.common.gpu import cpu_has_fast_bf16

ARCHS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50"]
SIZES = [160, 224, 300]
BATCH_SIZE = 16


def four_class_spec(arch: str, im_size: int | None = None) -> ModelSpec:
    """The specification of the 4-class network these benchmarks time: ``arch`` at ``im_size``
    (default: the backbone's), its head with dropout 0.5 as when the results were measured."""
    spec = ModelSpec(backbone=arch, im_size=im_size, dropout=0.5)
    return spec.with_data(["apple", "citrus", "flower", "tool"], multilabel=False)


@dataclass
class Setting:
    """How a training step runs: memory format and autocast dtype (None: fp32)."""

    name: str
    channels_last: bool = False
    dtype: torch.dtype | None = None

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16  # fp16 needs gradient scaling


def settings_for(device: torch.device) -> list[Setting]:
    """fp32 first (the reference), then the candidates for this device."""
    out = [Setting("fp32"), Setting("channels_last", True)]
    if device.type == "cuda":
        out.append(Setting("fp16", True, torch.float16))
        if torch.cuda.is_bf16_supported():
            out.append(Setting("bf16", True, torch.bfloat16))
    elif cpu_has_fast_bf16():
        out.append(Setting("bf16", True, torch.bfloat16))
    return out


def fast_setting(device: torch.device) -> Setting:
    """The setting ``fast_training(learn)`` applies on ``device``."""
    if device.type == "cuda":
        return Setting("fp16", True, torch.float16)
    return Setting("channels_last", True)


class Trainer:
    """One network, optimiser and setting; ``step(batches)`` trains on each batch once."""

    def __init__(self, model: nn.Module, setting: Setting, device: torch.device):
        self.setting, self.device = setting, device
        self.model = copy.deepcopy(model).to(device).train()
        if setting.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=setting.scaled)
        self.loss_func = nn.CrossEntropyLoss()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward pass and loss under the setting's autocast; fp32 loss."""
        if self.setting.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.setting.dtype, enabled=self.setting.dtype is not None
        ):
            return self.loss_func(self.model(x).float(), y)

    def step(self, batches) -> None:
        for x, y in batches:
            loss = self.loss(x, y)
            self.opt.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and the flattened gradient of all parameters on one batch (no step)."""
        torch.manual_seed(0)  # the same dropout masks for every setting
        self.opt.zero_grad()
        loss = self.loss(x, y)
        loss.backward()
        grads = [p.grad.double().flatten() for p in self.model.parameters() if p.grad is not None]
        return float(loss), torch.cat(grads)


def load_batches(arch: str, size: int, n: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` augmented, normalised training batches of 16 images as plain tensors."""
    spec = ModelSpec(backbone=arch, im_size=size)
    dls = get_dls(sample_data_path("objects"), spec, BATCH_SIZE, device=device)
    batches = []
    for x, y in dls.train:
        batches.append((x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)))
        if len(batches) == n:
            break
    return batches


def compare_with_fp32(model, settings, batch, device) -> dict:
    """Per setting: relative loss difference and gradient cosine similarity against fp32."""
    reference = Trainer(model, settings[0], device).gradients(*batch)
    out = {}
    for setting in settings:
        loss, grads = Trainer(model, setting, device).gradients(*batch)
        out[setting.name] = {
            "loss_rel_diff": abs(loss - reference[0]) / abs(reference[0]),
            "grad_cosine": float(nn.functional.cosine_similarity(grads, reference[1], dim=0)),
        }
    return out


def bench_config(arch: str, size: int, device, args) -> list[dict]:
    """Rows (one per setting) for one backbone and image size."""
    torch.manual_seed(0)
    model = build_classifier(four_class_spec(arch, size), pretrained=True)
    batches = load_batches(arch, size, args.batches, device)
    settings = settings_for(device)
    check = compare_with_fp32(model, settings, batches[0], device)
    trainers = {s.name: Trainer(model, s, device) for s in settings}
    fns = {name: (lambda t=t: t.step(batches)) for name, t in trainers.items()}
    times = time_side_by_side(fns, repeats=args.repeats, warmup=1, device=device)
    n_images = sum(len(x) for x, _ in batches)
    fp32 = n_images / median(times["fp32"])
    rows = []
    for name in trainers:
        speed = n_images / median(times[name])
        rows.append(
            {
                "arch": arch,
                "im_size": size,
                "device": device_label(device),
                "setting": name,
                "images_per_s": speed,
                "speedup": speed / fp32,
                **check[name],
                "seconds": times[name],
            }
        )
    print(markdown_table(rows, COLUMNS))
    return rows


COLUMNS = {
    "backbone": ("arch", 0),
    "px": ("im_size", 0),
    "device": ("device", 0),
    "setting": ("setting", 0),
    "training images/s": ("images_per_s", 2),
    "x fp32": ("speedup", 2),
    "loss rel. diff": ("loss_rel_diff", 4),
    "grad cosine": ("grad_cosine", 4),
}


def summary(rows: list[dict]) -> dict:
    """Per backbone and size: the fastest setting and its speed-up over fp32."""
    out = {}
    for key in dict.fromkeys((r["arch"], r["im_size"]) for r in rows):
        mine = [r for r in rows if (r["arch"], r["im_size"]) == key]
        best = max(mine, key=lambda r: r["images_per_s"])
        out[f"{key[0]}@{key[1]}"] = {"fastest": best["setting"], "speedup": best["speedup"]}
    return out


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], "bench_training_throughput")
    parser.add_argument("--archs", nargs="+", default=ARCHS, help="backbones to measure")
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES, help="image sizes (px)")
    parser.add_argument("--batches", type=int, default=1, help="batches of 16 per timing")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    archs, skipped = present_backbones(args.archs)
    if skipped:
        print(f"skipped (weights not present): {', '.join(skipped)}")
    rows = []
    for arch in archs:
        for size in args.sizes:
            rows += bench_config(arch, size, device, args)
            loads.append(load_snapshot())
    results = {"rows": rows, "summary": summary(rows), "skipped": skipped}
    finish(args, "training_throughput", results, markdown_table(rows, COLUMNS), loads, device)
    for key, s in results["summary"].items():
        print(f"{key}: fastest {s['fastest']} ({s['speedup']:.2f}x fp32)")


if __name__ == "__main__":
    main()
