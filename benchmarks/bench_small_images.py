"""Benchmark: MNIST-sized images (28x28 greyscale) with notebook 03's defaults against the plain
fastai recipe, side by side in one run.

The set is the shipped ``objects`` sample set shrunk to 28x28 greyscale PNGs, 50 training and
20 validation images per class (``tests/layouts.py: make_small_gray``; validation objects are
never in training). For each seed:

- ``defaults``: what notebook 03 runs with its default parameters: the data check, then
  ``train.train`` with ``spec_for_model_type("fast_inference")`` (EfficientNet-Lite0 at
  224 px: the small images are upscaled) and ``TrainConfig()``.
- ``fastai_28`` and ``fastai_224``: the plain fastai recipe: ``ImageDataLoaders.from_folder``
  with ``Resize(size)`` and ``aug_transforms()``, the model ``vision_learner`` builds on the
  same offline EfficientNet-Lite0 weights (fastai's head, dropout 0.5), ``fine_tune(3)``; at
  the images' own size (28) and at the defaults' size (224).

Reports validation accuracy (mean, standard deviation over seeds) and wall seconds from the
folder to a trained model (data loaders included), and accuracy per minute.

    python benchmarks/bench_small_images.py --seeds 0 1 2
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import base_parser, finish, load_snapshot, markdown_table, setup, write_partial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from layouts import make_small_gray  # noqa: E402

from utils_cv.classification.datacheck import check_dataset  # noqa: E402
from utils_cv.classification.spec import ModelSpec, spec_for_model_type  # noqa: E402
from utils_cv.classification.train import TrainConfig, train, validation_accuracy  # noqa: E402

VARIANTS = ("defaults", "fastai_28", "fastai_224")
BATCH_SIZE = 16


def run_defaults(path: Path, seed: int, out_dir: Path) -> float:
    """Notebook 03's default path; returns validation accuracy."""
    spec = spec_for_model_type("fast_inference")
    report = check_dataset(path, out_dir=out_dir, im_size=spec.im_size, progress=False)
    learn = train(path, spec, TrainConfig(seed=seed), files=report.good_files, progress=False)
    return validation_accuracy(learn)


def run_fastai(path: Path, seed: int, size: int, device) -> float:
    """The plain fastai recipe at ``size`` pixels; returns validation accuracy."""
    from fastai.vision.all import (
        ImageDataLoaders,
        Learner,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        default_split,
        set_seed,
    )

    from utils_cv.classification.network import build_classifier

    set_seed(seed)
    spec = ModelSpec(backbone="efficientnet_lite0", im_size=size, dropout=0.5)
    dls = ImageDataLoaders.from_folder(
        path,
        valid="valid",
        item_tfms=Resize(size),
        batch_tfms=[*aug_transforms(), Normalize.from_stats(list(spec.mean), list(spec.std))],
        bs=BATCH_SIZE,
        seed=seed,
        num_workers=0,
        device=device,
    )
    spec = spec.with_data([str(c) for c in dls.vocab], multilabel=False)
    model = build_classifier(spec, pretrained=True)  # what vision_learner builds
    learn = Learner(dls, model, splitter=default_split, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(3)
        return float(learn.validate()[1])


def main():
    parser = base_parser(__doc__, "bench_small_images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=28, help="image side in pixels")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = make_small_gray(Path(tmp) / "small", size=args.size)
        for seed in args.seeds:
            for i in range(len(VARIANTS)):
                variant = VARIANTS[(i + seed) % len(VARIANTS)]  # rotate the order with the seed
                start = time.perf_counter()
                if variant == "defaults":
                    acc = run_defaults(path, seed, Path(tmp) / f"report_{seed}")
                else:
                    acc = run_fastai(path, seed, int(variant.split("_")[1]), device)
                seconds = time.perf_counter() - start
                rows.append({"variant": variant, "seed": seed, "accuracy": acc, "s": seconds})
                print(f"seed {seed} {variant:11s} accuracy {acc:.3f} in {seconds:.0f} s")
                write_partial(args, "bench_small_images", rows, [], loads)
    summary = []
    for variant in VARIANTS:
        accs = [r["accuracy"] for r in rows if r["variant"] == variant]
        secs = [r["s"] for r in rows if r["variant"] == variant]
        summary.append(
            {
                "variant": variant,
                "seeds": len(accs),
                "accuracy": statistics.fmean(accs),
                "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "s": statistics.fmean(secs),
                "acc_per_min": statistics.fmean(accs) / statistics.fmean(secs) * 60,
            }
        )
    columns = {
        "variant": ("variant", 0),
        "seeds": ("seeds", 0),
        "accuracy (mean)": ("accuracy", 3),
        "sd": ("accuracy_sd", 3),
        "seconds": ("s", 0),
        "accuracy / min": ("acc_per_min", 2),
    }
    table = markdown_table(summary, columns)
    finish(args, "bench_small_images", {"runs": rows, "summary": summary}, table, loads, device)


if __name__ == "__main__":
    main()
