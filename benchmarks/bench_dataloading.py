"""Benchmark: images per second of the training data pipeline against the images per second
training consumes, with and without a pre-resized copy of the data (``downsize_imagelist``).

Loading: one pass over ``get_dls(...).train`` (decode, resize to ``--im_size``, fastai's
``aug_transforms`` and normalisation; batches of 16) for each source:

- ``shipped``: the shipped ``objects`` set (320x240 JPEGs);
- ``shipped, pre-resized``: its ``downsize_imagelist`` copy whose shorter side is ``--im_size``;
- ``photos``: a copy enlarged to ``--photo_size`` px on the longer side, like camera photos;
- ``photos, pre-resized``: the ``downsize_imagelist`` copy of ``photos``.

Consumption, measured in the same rounds on already loaded batches of the same size: a
fine-tuning step of ``--arch`` (whole network; fp32, and the setting ``fast_training``
applies: channels-last on a CPU, fp16 on CUDA) and the frozen-body forward pass that the default recipe's cached-feature head
training runs on every image (``fit_head_cached``). Ratios above 1 mean the loader is faster.

    python benchmarks/bench_dataloading.py
    python benchmarks/bench_dataloading.py --workers 0 1 --photo_size 0
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from bench_training_throughput import (
    Setting,
    Trainer,
    fast_setting,
    four_class_spec,
    load_batches,
)
from common import (
    base_parser,
    device_label,
    finish,
    load_snapshot,
    markdown_table,
    median,
    setup,
    time_side_by_side,
)
from PIL import Image

from utils_cv.classification.data import (
    downsize_imagelist,
    get_dls,
    get_image_files,
    sample_data_path,
)
from utils_cv.classification.network import build_classifier
from utils_cv.classification.spec import ModelSpec


def enlarged_copy(src: Path, dst: Path, size: int) -> Path:
    """Copy of the image folder ``src`` with every image scaled to ``size`` px (longer side)."""
    for path in get_image_files(src):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            scale = size / max(im.size)
            im = im.convert("RGB").resize(
                (round(im.width * scale), round(im.height * scale)), Image.BICUBIC
            )
        im.save(out, quality=90)
    return dst


def resized_copy(src: Path, dst: Path, im_size: int) -> Path:
    """``downsize_imagelist`` copy of ``src`` whose images' shorter side is ``im_size`` px."""
    files = get_image_files(src)
    with Image.open(files[0]) as im:
        dim = math.ceil(im_size * max(im.size) / min(im.size))
    downsize_imagelist(files, dst, dim=dim, root=src)
    return dst


def sources(tmp: Path, im_size: int, photo_size: int) -> dict[str, Path]:
    """{name: data folder} of the data variants to load."""
    shipped = sample_data_path("objects")
    out = {
        "shipped": shipped,
        "shipped, pre-resized": resized_copy(shipped, tmp / "shipped_small", im_size),
    }
    if photo_size:
        photos = enlarged_copy(shipped, tmp / "photos", photo_size)
        out["photos"] = photos
        out["photos, pre-resized"] = resized_copy(photos, tmp / "photos_small", im_size)
    return out


def image_size(folder: Path) -> str:
    with Image.open(get_image_files(folder)[0]) as im:
        return f"{im.width}x{im.height}"


def epoch_fn(dl):
    """A function running one pass over ``dl``; returns the number of images it yielded."""

    def run():
        return sum(len(x) for x, _ in dl)

    return run


def consumers(arch: str, im_size: int, device) -> tuple[dict, int]:
    """{name: function eating one loaded batch} for training and feature extraction."""
    torch.manual_seed(0)
    model = build_classifier(four_class_spec(arch, im_size), pretrained=True)
    batch = load_batches(arch, im_size, 1, device)
    fp32 = Trainer(model, Setting("fp32"), device)
    fast = Trainer(model, fast_setting(device), device)
    body = model[0].to(device).eval()

    def features():
        with torch.no_grad():
            body(batch[0][0])

    fns = {
        "fine-tuning step, fp32": lambda: fp32.step(batch),
        f"fine-tuning step, {fast.setting.name}": lambda: fast.step(batch),
        "frozen-body forward (fit_head_cached)": features,
    }
    return fns, len(batch[0][0])


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], "bench_dataloading")
    parser.add_argument("--arch", default="efficientnet_lite0", help="backbone of the consumers")
    parser.add_argument("--im_size", type=int, default=224, help="training image size (px)")
    parser.add_argument("--photo_size", type=int, default=1280, help="0: no enlarged copy")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    spec = ModelSpec(backbone=args.arch, im_size=args.im_size)
    with tempfile.TemporaryDirectory(prefix="bench_dataloading_") as tmp:
        folders = sources(Path(tmp), args.im_size, args.photo_size)
        loaders, n_images = {}, {}
        for name, folder in folders.items():
            for workers in args.workers:
                dls = get_dls(folder, spec, 16, num_workers=workers, device=device)
                key = (name, workers)
                loaders[key], n_images[key] = epoch_fn(dls.train), len(dls.train) * 16
        eaters, batch_n = consumers(args.arch, args.im_size, device)
        times = time_side_by_side({**loaders, **eaters}, args.repeats, warmup=1, device=device)
        pixels = {name: image_size(folder) for name, folder in folders.items()}
    consumed = {name: batch_n / median(times[name]) for name in eaters}
    fastest_training = max(v for k, v in consumed.items() if k.startswith("fine-tuning"))
    rows = [
        {"what": name, "kind": "consumer", "images_per_s": speed}
        for name, speed in consumed.items()
    ]
    for (name, workers), fn_times in ((k, times[k]) for k in loaders):
        speed = n_images[(name, workers)] / median(fn_times)
        rows.append(
            {
                "what": name,
                "kind": "loader",
                "pixels": pixels[name],
                "workers": workers,
                "images_per_s": speed,
                "x_fastest_training": speed / fastest_training,
                "x_feature_extraction": speed / consumed["frozen-body forward (fit_head_cached)"],
            }
        )
    for row in rows:
        row["device"] = device_label(device)
    results = {
        "rows": rows,
        "im_size": args.im_size,
        "arch": args.arch,
        "target_2x_met": {
            r["what"] + f" (workers {r['workers']})": r["x_fastest_training"] >= 2
            for r in rows
            if r["kind"] == "loader"
        },
    }
    finish(args, "dataloading", results, markdown_table(rows, COLUMNS), loads, device)


COLUMNS = {
    "pipeline": ("what", 0),
    "kind": ("kind", 0),
    "source px": ("pixels", 0),
    "workers": ("workers", 0),
    "device": ("device", 0),
    "images/s": ("images_per_s", 1),
    "x fastest training step": ("x_fastest_training", 2),
    "x frozen-body forward": ("x_feature_extraction", 2),
}


if __name__ == "__main__":
    main()
