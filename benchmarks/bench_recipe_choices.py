"""Benchmark: which training choices hold across data sets, and how many images are needed.

The defaults are judged on data we do not have, so this measures them on several sets that
differ from the shipped one (see ``classification/tools/make_eval_sets.py``): busy backgrounds
with large animals, small grayscale images, a larger set of the sample classes, and the shipped
single- and multi-label sets. Every set has unseen object instances in validation. Each
(set, seed) runs:

1. **Backbone, image size, resizing** (``--configs``): features of the frozen body are extracted
   once per configuration (``--passes`` augmented passes over the training set), then the
   default head is trained on them. Reports validation accuracy and the seconds of each step.
2. **Head choices** (``--heads``), on the default configuration's features: head type (fastai's
   MLP head or a linear one), dropout, epochs, learning rate, weight decay, augmented passes.
3. **Images per class** (``--per_class``): the default head trained on 5, 10, 20, 40 and all
   training images of each class (drawn at random with the seed), validated on the full
   validation set.

Everything is measured on cached features, so many choices cost little; the body fine-tuning
step of the recipe (off by default) is not part of it. Single-label sets report top-1
accuracy; multi-label sets hamming and zero-one accuracy at threshold 0.5.

    python classification/tools/make_eval_sets.py     # once: builds data/eval_sets
    python benchmarks/bench_recipe_choices.py --seeds 0 1 2
    python benchmarks/plot_recipe_choices.py          # the figures of the FAQ
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    base_parser,
    finish_runs,
    load_snapshot,
    present_backbones,
    setup,
    summarize_seeds,
    write_partial,
)

from utils_cv.classification.data import get_dls, sample_data_path
from utils_cv.classification.metrics import accuracy, hamming_accuracy, zero_one_accuracy
from utils_cv.classification.network import build_head
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import create_learner, extract_features, train_head

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "classification" / "tools"))
from make_eval_sets import DEFAULT_OUT as EVAL_DIR  # noqa: E402
from make_eval_sets import EVAL_SETS, eval_set_path  # noqa: E402

SHIPPED_SETS = ("objects", "objects_multilabel")
SETS = (*SHIPPED_SETS, *EVAL_SETS)

# name -> (backbone, image size in pixels, resize method): the ModelSpec of the data loaders
CONFIGS = {
    "lite0_224": ("efficientnet_lite0", 224, "squish"),
    "lite0_160": ("efficientnet_lite0", 160, "squish"),
    "lite0_300": ("efficientnet_lite0", 300, "squish"),
    "lite0_224_crop": ("efficientnet_lite0", 224, "crop"),
    "lite0_224_pad": ("efficientnet_lite0", 224, "pad"),
    "lite1_240": ("efficientnet_lite1", 240, "squish"),
    "lite2_260": ("efficientnet_lite2", 260, "squish"),
}
DEFAULT_CONFIG = "lite0_224"

# Head variants are named by their differences from this reference (fastai's head dropout,
# and the recipe's settings before this benchmark chose new ones): "mlp" is exactly this.
BASE_HEAD = {"head": "mlp", "dropout": 0.5, "epochs": 20, "lr": 1e-2, "wd": 1e-2, "passes": 2}
# The recipe's defaults (TrainConfig's epochs_head and lr, ModelSpec's dropout): the head of
# the configuration and images-per-class experiments unless --base_head says other.
DEFAULT_HEAD = "mlp_d0.2_e40_lr3e-3"


def head_variant(name: str) -> dict:
    """Head settings from a name like 'mlp', 'linear_lr3e-2_e40', 'mlp_d0.2_p4_wd0.1'.

    Tokens after the head type override BASE_HEAD: d<dropout>, e<epochs>, lr<rate>,
    wd<weight decay>, p<augmented passes>, b<head batch size> (default: the loader's, 16).
    """
    head, *tokens = name.split("_")
    settings = {**BASE_HEAD, "head": head}
    for token in tokens:
        for prefix, key, kind in (
            ("lr", "lr", float),
            ("wd", "wd", float),
            ("d", "dropout", float),
            ("e", "epochs", int),
            ("p", "passes", int),
            ("b", "batch_size", int),
        ):
            if token.startswith(prefix):
                settings[key] = kind(token[len(prefix) :])
                break
        else:
            raise ValueError(f"Unknown token {token!r} in head variant {name!r}.")
    return settings


DEFAULT_HEADS = [
    "mlp",
    "mlp_lr3e-3",
    "mlp_e40",
    "mlp_d0.2",
    "mlp_p4",
    "mlp_d0.2_e40_lr3e-3",
    "linear",
    "linear_e40",
    "linear_p4",
    "linear_lr3e-2_e40",
]


def set_path(name: str, eval_dir: Path) -> Path:
    return sample_data_path(name) if name in SHIPPED_SETS else eval_set_path(name, eval_dir)


def scores(learn, y_true: torch.Tensor, logits: torch.Tensor) -> dict:
    """Validation metrics: accuracy (single-label) or hamming / zero-one accuracy (multi-label)."""
    if learn.multilabel:
        prob = logits.sigmoid().float().cpu().numpy()
        y = y_true.cpu().numpy()
        return {"accuracy": hamming_accuracy(y, prob), "zero_one": zero_one_accuracy(y, prob)}
    return {"accuracy": accuracy(y_true.cpu().numpy(), logits.float().cpu().numpy())}


class Features:
    """Features of one (set, configuration, seed): training passes in item order, validation."""

    def __init__(self, path: Path, config: str, seed: int, passes: int, device, batch_size: int):
        from fastai.vision.all import set_seed

        arch, im_size, resize = CONFIGS[config]
        spec = ModelSpec(backbone=arch, im_size=im_size, resize=resize)
        set_seed(seed)
        start = time.perf_counter()
        dls = get_dls(path, spec, batch_size, seed=seed, device=device)
        self.learn = create_learner(dls, spec, record_train_metrics=False)
        self.learn.model.to(dls.device)
        train_dl = dls.train.new(shuffle=False, drop_last=False)
        self.n_train = len(dls.train_ds)
        self.x_train, self.y_train = extract_features(self.learn, train_dl, passes)
        self.x_valid, self.y_valid = extract_features(self.learn, dls.valid)
        self.seconds = time.perf_counter() - start
        self.labels = self._train_labels(dls)

    def _train_labels(self, dls) -> np.ndarray:
        """Class index of each training item (first label for multi-label items)."""
        y = self.y_train[: self.n_train].cpu()
        return (y.argmax(dim=1) if y.ndim == 2 else y).numpy()

    def rows(self, passes: int, items: np.ndarray | None = None) -> torch.Tensor:
        """Row indices of ``items`` (default: all) in the first ``passes`` passes."""
        items = np.arange(self.n_train) if items is None else items
        idx = np.concatenate([items + p * self.n_train for p in range(passes)])
        return torch.as_tensor(idx, device=self.x_train.device)

    def fresh_head(self, settings: dict, seed: int, x: torch.Tensor, y: torch.Tensor):
        """A new head with ``settings``, trained on feature rows ``x`` and targets ``y``; returns
        the head (in eval mode) and its training seconds."""
        from fastai.vision.all import set_seed

        set_seed(seed)
        learn = self.learn
        n_features = x.shape[1] // 2
        head = build_head(n_features, learn.dls.c, settings["dropout"], settings["head"])
        learn.model[1] = head.to(x.device)
        start = time.perf_counter()
        train_head(
            learn,
            x,
            y,
            epochs=settings["epochs"],
            lr=settings["lr"],
            weight_decay=settings["wd"],
            batch_size=settings.get("batch_size"),
            progress=False,
        )
        seconds = time.perf_counter() - start
        return head.eval(), seconds

    def train_eval(self, settings: dict, seed: int, items: np.ndarray | None = None) -> dict:
        """Train a fresh head with ``settings`` on the features of ``items``; validation scores."""
        rows = self.rows(settings["passes"], items)
        head, seconds = self.fresh_head(settings, seed, self.x_train[rows], self.y_train[rows])
        with torch.no_grad():
            logits = head[1:](self.x_valid)
        return {**scores(self.learn, self.y_valid, logits), "head_seconds": seconds}


def per_class_items(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of up to ``k`` training items per class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def run_set(name: str, args, device) -> list[dict]:
    """All measurements of set ``name``, one row per (seed, experiment, variant)."""
    path = set_path(name, args.eval_dir)
    rows = []
    for seed in args.seeds:
        for config in args.configs:
            base_passes = head_variant(args.base_head)["passes"]
            heads = args.heads + args.per_class_heads
            passes = max([args.passes, base_passes] + [head_variant(h)["passes"] for h in heads])
            passes = passes if config == args.head_config else base_passes
            feats = Features(path, config, seed, passes, device, args.batch_size)
            base = {"set": name, "seed": seed, "config": config}
            info = {"extract_seconds": feats.seconds, "extract_passes": passes}
            res = feats.train_eval(head_variant(args.base_head), seed)
            rows.append(
                {**base, "experiment": "config", "variant": config, "head": args.base_head}
                | info
                | res
            )
            print(_line(rows[-1]), flush=True)
            if config != args.head_config:
                continue
            for head in args.heads:
                res = feats.train_eval(head_variant(head), seed)
                settings = {"settings": head_variant(head)}
                rows.append({**base, "experiment": "head", "variant": head, **settings, **res})
                print(_line(rows[-1]), flush=True)
            if feats.learn.multilabel:
                continue  # images per class: single-label sets only
            counts = np.bincount(feats.labels)
            done = set()
            for k in args.per_class:
                if k > counts.min() and k != args.per_class[-1]:
                    continue
                k = min(k, int(counts.max()))
                if k in done:  # "all" is the largest count already run
                    continue
                done.add(k)
                items = per_class_items(feats.labels, k, seed)
                for head in args.per_class_heads:
                    res = feats.train_eval(head_variant(head), seed, items)
                    variant = f"{head}@{min(k, int(counts.max()))}"
                    per_class = len(items) / len(counts)
                    rows.append(
                        {
                            **base,
                            "experiment": "per_class",
                            "variant": variant,
                            "head": head,
                            "per_class": per_class,
                            **res,
                        }
                    )
                    print(_line(rows[-1]), flush=True)
            del feats
    return rows


def _line(row: dict) -> str:
    zol = f" zero-one {row['zero_one']:.3f}" if "zero_one" in row else ""
    return (
        f"{row['set']:20s} seed {row['seed']} {row['experiment']:9s} {row['variant']:22s} "
        f"acc {row['accuracy']:.3f}{zol}"
    )


def summarize(rows: list[dict]) -> list[dict]:
    """Mean (and min) accuracy per (experiment, variant, set) over seeds."""
    return summarize_seeds(
        rows,
        ("experiment", "variant", "set"),
        means={"accuracy_mean": "accuracy", "zero_one_mean": "zero_one"},
        mins={"accuracy_min": "accuracy"},
        medians={"extract_seconds": "extract_seconds"},
    )


COLUMNS = {
    "experiment": ("experiment", 0),
    "variant": ("variant", 0),
    "set": ("set", 0),
    "seeds": ("seeds", 0),
    "accuracy (mean)": ("accuracy_mean", 3),
    "accuracy (min)": ("accuracy_min", 3),
    "zero-one (mean)": ("zero_one_mean", 3),
    "feature s": ("extract_seconds", 1),
}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], "bench_recipe_choices")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--head_config",
        default=DEFAULT_CONFIG,
        choices=list(CONFIGS),
        help="configuration whose features the head variants and images-per-class runs use",
    )
    parser.add_argument("--heads", nargs="*", default=DEFAULT_HEADS, help="head variants")
    parser.add_argument("--per_class", nargs="+", type=int, default=[5, 10, 20, 40, 10**6])
    parser.add_argument("--per_class_heads", nargs="*", default=[DEFAULT_HEAD])
    parser.add_argument(
        "--base_head", default=DEFAULT_HEAD, help="head of the configuration experiment"
    )
    parser.add_argument("--passes", type=int, default=2, help="augmented passes to extract")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_dir", type=Path, default=EVAL_DIR, help="make_eval_sets output")
    args = parser.parse_args()
    for head in [args.base_head, *args.heads, *args.per_class_heads]:
        head_variant(head)  # fail early on a typo
    if args.head_config not in args.configs:
        args.configs.insert(0, args.head_config)
    present, skipped = present_backbones(sorted({CONFIGS[c][0] for c in args.configs}))
    if skipped:
        print(f"Skipped (no offline weights): {', '.join(skipped)}")
        args.configs = [c for c in args.configs if CONFIGS[c][0] in present]
    device = setup(args)
    loads = [load_snapshot()]
    rows = []
    for name in args.sets:
        rows += run_set(name, args, device)
        loads.append(load_snapshot())
        write_partial(args, "recipe_choices", rows, summarize(rows), loads)
    finish_runs(args, "recipe_choices", rows, summarize(rows), COLUMNS, loads, device)


if __name__ == "__main__":
    main()
