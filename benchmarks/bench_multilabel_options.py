"""Benchmark: options for multi-label data beyond the head settings, on three multi-label sets.

Notebook 02's defaults reach hamming / zero-one accuracy of about 0.875 / 0.60 on the shipped
multi-label set, where the issue asks for 0.90 / 0.60. The errors are labels of unseen object
instances scored between 0.05 and 0.5 (the sigmoid under-predicts them). This measures the usual
remedies, each against the default recipe on the same cached features, on the shipped set and
two built by ``classification/tools/make_eval_sets.py`` (``objects_multilabel_other``: other
validation objects; ``animals_multilabel``: 1-3 animals per image). Options:

- ``default``: the recipe's head (``DEFAULT_HEAD`` of bench_recipe_choices), threshold 0.5.
- ``threshold_0.3``: the same probabilities at a fixed lower threshold.
- ``oof_threshold``: the threshold maximising zero-one accuracy on 5-fold out-of-fold
  predictions of the training images (folds split by image, so augmented copies of an image
  never straddle a fold); chosen without looking at the validation set.
- ``pos_weight_2``: BCE with positive labels weighted 2.
- ``union``: as many extra training rows again, each merging two training images' features
  (element-wise max of the max-pooled half, mean of the average-pooled half; labels OR-ed):
  synthetic images with more objects.
- ``flip_tta``: validation probabilities averaged over each image and its mirror image.
- ``tiles``: features are the element-wise max over the whole image and its four corner crops
  of 2/3 the side, each resized to the input size (five body passes per image).
- ``ensemble_5``: the mean probability of 5 heads trained with different seeds.

    python classification/tools/make_eval_sets.py --only objects_multilabel_other animals_multilabel
    python benchmarks/bench_multilabel_options.py --seeds 0 1 2
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_recipe_choices import DEFAULT_HEAD, EVAL_DIR, Features, head_variant, set_path
from common import (
    base_parser,
    finish_runs,
    load_snapshot,
    setup,
    summarize_seeds,
    write_partial,
)
from torch import nn

from utils_cv.classification.metrics import (
    get_optimal_threshold,
    hamming_accuracy,
    zero_one_accuracy,
)
from utils_cv.classification.train import _pooled_features

SETS = ("objects_multilabel", "objects_multilabel_other", "animals_multilabel")
OPTIONS = (
    "default",
    "threshold_0.3",
    "oof_threshold",
    "pos_weight_2",
    "union",
    "flip_tta",
    "tiles",
    "ensemble_5",
)
TILE_FRAC = 2 / 3  # side of a corner crop, as a fraction of the image side
FOLDS = 5


class Views(nn.Module):
    """Element-wise max of ``pool(body(view))`` over views of the input batch.

    views: "flip" (the mirror image only) or "tiles" (the image and its four corner crops).
    """

    def __init__(self, body: nn.Module, pool: nn.Module, views: str):
        super().__init__()
        self.body, self.pool, self.views = body, pool, views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.views == "flip":
            return self.pool(self.body(x.flip(-1)))
        side = x.shape[-1]
        crop = round(side * TILE_FRAC)
        far = side - crop
        outs = [self.pool(self.body(x))]
        for top, left in ((0, 0), (0, far), (far, 0), (far, far)):
            tile = x[..., top : top + crop, left : left + crop]
            tile = F.interpolate(tile, size=x.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(self.pool(self.body(tile.contiguous(memory_format=torch.channels_last))))
        return torch.stack(outs).amax(dim=0)


def view_features(feats: Features, dl, views: str, passes: int = 1) -> torch.Tensor:
    """Pooled features of ``dl`` seen through ``Views``."""
    learn = feats.learn
    module = Views(learn.model[0], learn.model[1][0], views)
    return _pooled_features(module, nn.Identity(), dl, passes)[0]


def union_rows(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x``, ``y`` plus as many rows again, each merging two random rows (see module doc)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randint(len(x), (2, len(x)), generator=gen).to(x.device)
    half = x.shape[1] // 2  # fastai's concat pooling: [max-pooled, average-pooled]
    merged = torch.cat(
        [torch.maximum(x[a, :half], x[b, :half]), (x[a, half:] + x[b, half:]) / 2], 1
    )
    return torch.cat([x, merged]), torch.cat([y, torch.maximum(y[a], y[b])])


def probs(head, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return head[1:](x).sigmoid().float().cpu().numpy()


def oof_threshold(feats: Features, settings: dict, seed: int) -> float:
    """Zero-one-optimal threshold on out-of-fold predictions of the training images."""
    n = feats.n_train
    gen = torch.Generator().manual_seed(seed)
    fold = (torch.randperm(n, generator=gen) % FOLDS).numpy()
    rows = feats.rows(settings["passes"]).cpu().numpy()
    y_oof = np.zeros((n, feats.learn.dls.c), dtype=np.float32)
    for k in range(FOLDS):
        train_rows = torch.as_tensor(rows[fold[rows % n] != k], device=feats.x_train.device)
        head, _ = feats.fresh_head(
            settings, seed, feats.x_train[train_rows], feats.y_train[train_rows]
        )
        held = np.flatnonzero(fold == k)
        y_oof[held] = probs(head, feats.x_train[torch.as_tensor(held, device=feats.x_train.device)])
    return get_optimal_threshold(zero_one_accuracy, feats.y_train[:n].cpu().numpy(), y_oof)


def run_seed(name: str, seed: int, args, device) -> list[dict]:
    """Every option on set ``name`` with ``seed``: one row each."""
    settings = head_variant(DEFAULT_HEAD)
    feats = Features(
        set_path(name, args.eval_dir), "lite0_224", seed, settings["passes"], device, 16
    )
    rows_all = feats.rows(settings["passes"])
    x, y = feats.x_train[rows_all], feats.y_train[rows_all]
    y_valid = feats.y_valid.cpu().numpy()
    out = []

    def record(option: str, y_score: np.ndarray, seconds: float, threshold: float = 0.5):
        row = {
            "set": name,
            "seed": seed,
            "option": option,
            "accuracy": hamming_accuracy(y_valid, y_score, threshold),
            "zero_one": zero_one_accuracy(y_valid, y_score, threshold),
            "threshold": threshold,
            "seconds": seconds,
        }
        out.append(row)
        print(
            f"{name:26s} seed {seed} {option:14s} hamming {row['accuracy']:.3f} "
            f"zero-one {row['zero_one']:.3f} (threshold {threshold:.2f}, {seconds:.1f} s)",
            flush=True,
        )

    head, head_s = feats.fresh_head(settings, seed, x, y)
    p_default = probs(head, feats.x_valid)
    record("default", p_default, feats.seconds + head_s)
    record("threshold_0.3", p_default, feats.seconds + head_s, 0.3)
    start = time.perf_counter()
    threshold = oof_threshold(feats, settings, seed)
    record("oof_threshold", p_default, time.perf_counter() - start, threshold)

    loss_func = feats.learn.loss_func
    pos_weight = torch.full((feats.learn.dls.c,), 2.0, device=x.device)
    feats.learn.loss_func = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    head_w, seconds = feats.fresh_head(settings, seed, x, y)
    feats.learn.loss_func = loss_func
    record("pos_weight_2", probs(head_w, feats.x_valid), seconds)

    head_u, seconds = feats.fresh_head(settings, seed, *union_rows(x, y, seed))
    record("union", probs(head_u, feats.x_valid), seconds)

    start = time.perf_counter()
    x_flip = view_features(feats, feats.learn.dls.valid, "flip")
    p_tta = (p_default + probs(head, x_flip)) / 2
    record("flip_tta", p_tta, time.perf_counter() - start)

    start = time.perf_counter()
    train_dl = feats.learn.dls.train.new(shuffle=False, drop_last=False)
    x_tiles = view_features(feats, train_dl, "tiles", settings["passes"])
    x_tiles_valid = view_features(feats, feats.learn.dls.valid, "tiles")
    head_t, _ = feats.fresh_head(settings, seed, x_tiles, feats.y_train[rows_all])
    record("tiles", probs(head_t, x_tiles_valid), time.perf_counter() - start)

    start = time.perf_counter()
    heads = [feats.fresh_head(settings, seed * 100 + k, x, y)[0] for k in range(5)]
    record(
        "ensemble_5",
        np.mean([probs(h, feats.x_valid) for h in heads], 0),
        time.perf_counter() - start,
    )
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Mean hamming / zero-one accuracy per (option, set) over seeds."""
    return summarize_seeds(
        rows,
        ("option", "set"),
        means={"hamming_mean": "accuracy", "zero_one_mean": "zero_one"},
        medians={"seconds": "seconds"},
    )


COLUMNS = {
    "option": ("option", 0),
    "set": ("set", 0),
    "seeds": ("seeds", 0),
    "hamming (mean)": ("hamming_mean", 3),
    "zero-one (mean)": ("zero_one_mean", 3),
    "seconds": ("seconds", 1),
}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], "bench_multilabel_options")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eval_dir", type=Path, default=EVAL_DIR, help="make_eval_sets output")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    rows = []
    for name in args.sets:
        for seed in args.seeds:
            rows += run_seed(name, seed, args, device)
            write_partial(args, "multilabel_options", rows, summarize(rows), loads)
        loads.append(load_snapshot())
    finish_runs(args, "multilabel_options", rows, summarize(rows), COLUMNS, loads, device)


if __name__ == "__main__":
    main()
