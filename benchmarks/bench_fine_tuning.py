"""Benchmark: does fine-tuning the whole network after the head help, with batch-norm statistics
updating (fastai's behaviour) or frozen (``FreezeBatchNormStats``, the recipe's default)?

For each set and seed, three runs from the same start: the recipe's head on cached features
only (``TrainConfig(epochs=0)``, the default), then the same followed by ``--epochs`` epochs of
fine-tuning the whole network (head at lr / 10, body at lr / 100) with the body's batch-norm
running statistics updating from the training batches, and with them frozen. Reports validation
accuracy (multi-label: hamming and zero-one accuracy at 0.5) and training seconds.

    python classification/tools/make_eval_sets.py     # once: builds data/eval_sets
    python benchmarks/bench_fine_tuning.py --seeds 0 1 2
"""

from __future__ import annotations

import time
from pathlib import Path

from bench_recipe_choices import EVAL_DIR, set_path
from common import (
    base_parser,
    finish_runs,
    load_snapshot,
    setup,
    summarize_seeds,
    write_partial,
)

from utils_cv.classification.data import get_dls
from utils_cv.classification.metrics import hamming_accuracy, zero_one_accuracy
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import (
    TrainConfig,
    create_learner,
    fit_recipe,
    get_preds,
    validation_accuracy,
)
from utils_cv.common.misc import set_random_seed

SETS = ("objects", "animals_busy", "objects_multilabel", "objects_multilabel_other")
VARIANTS = {  # name -> (fine-tuning epochs or None for --epochs, freeze_bn_stats)
    "head only (default)": (0, True),
    "fine-tune, BN stats updating": (None, False),
    "fine-tune, BN stats frozen": (None, True),
}


def run_one(path: Path, seed: int, epochs: int, freeze: bool, args, device) -> dict:
    """Train from ImageNet weights with the recipe; validation scores and seconds."""
    config = TrainConfig(epochs=epochs, freeze_bn_stats=freeze, seed=seed)
    spec = ModelSpec(backbone=args.arch)
    set_random_seed(seed)
    dls = get_dls(path, spec, config.batch_size, seed=seed, device=device)
    learn = create_learner(dls, spec, record_train_metrics=False)
    start = time.perf_counter()
    fit_recipe(learn, config, progress=False)
    seconds = time.perf_counter() - start
    if learn.multilabel:
        y_score, y_true = get_preds(learn)
        return {
            "accuracy": hamming_accuracy(y_true, y_score),
            "zero_one": zero_one_accuracy(y_true, y_score),
            "seconds": seconds,
        }
    return {"accuracy": validation_accuracy(learn), "seconds": seconds}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean (and min) accuracy per (set, variant) over seeds."""
    return summarize_seeds(
        rows,
        ("set", "variant"),
        means={"accuracy_mean": "accuracy", "zero_one_mean": "zero_one"},
        mins={"accuracy_min": "accuracy"},
        medians={"seconds": "seconds"},
    )


COLUMNS = {
    "set": ("set", 0),
    "variant": ("variant", 0),
    "seeds": ("seeds", 0),
    "accuracy (mean)": ("accuracy_mean", 3),
    "accuracy (min)": ("accuracy_min", 3),
    "zero-one (mean)": ("zero_one_mean", 3),
    "seconds": ("seconds", 1),
}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], "bench_fine_tuning")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--eval_dir", type=Path, default=EVAL_DIR, help="make_eval_sets output")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    rows = []
    for name in args.sets:
        path = set_path(name, args.eval_dir)
        for seed in args.seeds:
            for variant, (epochs, freeze) in VARIANTS.items():
                epochs = args.epochs if epochs is None else epochs
                res = run_one(path, seed, epochs, freeze, args, device)
                rows.append({"set": name, "seed": seed, "variant": variant, **res})
                zol = f" zero-one {res['zero_one']:.3f}" if "zero_one" in res else ""
                print(
                    f"{name:26s} seed {seed} {variant:30s} acc {res['accuracy']:.3f}{zol} "
                    f"({res['seconds']:.1f} s)",
                    flush=True,
                )
            write_partial(args, "fine_tuning", rows, summarize(rows), loads)
        loads.append(load_snapshot())
    finish_runs(args, "fine_tuning", rows, summarize(rows), COLUMNS, loads, device)


if __name__ == "__main__":
    main()
