"""Benchmark: does ``TrainConfig(balance=...)`` help on imbalanced data, and does it harm
balanced data?

Two training sets from the shipped ``objects`` sample set, both validated on its untouched,
balanced ``valid/`` folder (10 images per class):

- ``imbalanced``: all training images of the majority classes (apple and citrus, 30 each) and a
  tenth of the minority classes (flower and tool, 3 each: 10:1), the minority images drawn at
  random with the seed;
- ``balanced``: the shipped training set (30 per class).

For each set and seed the default recipe (``train.train``: EfficientNet-Lite0 at 224 px, head
on cached features, no fine-tuning unless ``--epochs``) trains with ``balance`` "none",
"weights" and "sampler" (the starting variant rotating with the seed). All three see the same
training images and the same augmented features, so they differ only in the head's training
(and, with ``--epochs``, in the fine-tuning). Reports per-class recall,
balanced accuracy (mean per-class recall), accuracy, and the accuracy expected on test data
with the training set's class frequencies ("prior accuracy": per-class recall weighted by the
training counts) as fractions, mean and standard deviation over seeds, and training seconds.
``--device`` labels the run only: ``train.train`` uses CUDA when present.

    python benchmarks/bench_imbalance.py --seeds 0 1 2
    python benchmarks/bench_imbalance.py --sets imbalanced --seeds 3 4 5 6 7 8 9 \
        --json benchmarks/results/bench_imbalance_more_seeds.json
    python benchmarks/bench_imbalance.py --sets imbalanced --minority apple citrus \
        --seeds 0 1 2 3 4 --json benchmarks/results/bench_imbalance_other_minority.json
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
from common import base_parser, finish_runs, load_snapshot, setup, write_partial

from utils_cv.classification.data import sample_data_path
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import BALANCE_MODES, TrainConfig, get_preds, train

SETS = ("imbalanced", "balanced")
MINORITY = ("flower", "tool")
RATIO = 10  # majority : minority training images


def build_set(src: Path, dst: Path, minority: tuple[str, ...], ratio: int, seed: int) -> dict:
    """Copy ``src`` (train/ + valid/ class folders) to ``dst``, keeping 1/``ratio`` of the
    training images of each ``minority`` class (drawn with ``seed``); returns {class: count}."""
    rng = random.Random(seed)
    counts = {}
    for class_dir in sorted((src / "train").iterdir()):
        files = sorted(class_dir.glob("*.jpg"))
        if class_dir.name in minority:
            files = sorted(rng.sample(files, max(1, round(len(files) / ratio))))
        (dst / "train" / class_dir.name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, dst / "train" / class_dir.name / f.name)
        counts[class_dir.name] = len(files)
    shutil.copytree(src / "valid", dst / "valid")
    return counts


def scores(y_true: np.ndarray, y_score: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy and recall per class (fractions)."""
    y_pred = y_score.argmax(1)
    recall = {c: float((y_pred[y_true == i] == i).mean()) for i, c in enumerate(classes)}
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "recall": recall,
    }


def prior_accuracy(recall: dict, counts: dict) -> float:
    """Accuracy on test data whose class frequencies are the training set's (``counts``)."""
    return sum(recall[c] * n for c, n in counts.items()) / sum(counts.values())


def add_derived(row: dict, minority: list[str]) -> dict:
    """``row`` with its minority-class recall (None without minority) and prior accuracy."""
    rare = [row["recall"][c] for c in minority]
    row["minority_recall"] = statistics.fmean(rare) if rare else None
    row["prior_accuracy"] = prior_accuracy(row["recall"], row["train_counts"])
    return row


def run_one(path: Path, seed: int, balance: str, epochs: int = 0) -> dict:
    config = TrainConfig(balance=balance, seed=seed, epochs=epochs)
    learn = train(path, ModelSpec(), config, progress=False, record_train_metrics=False)
    with learn.no_bar():
        y_score, y_true = get_preds(learn)
    return {**scores(y_true, y_score, list(learn.spec.classes)), "seconds": learn.training_seconds}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Per (set, balance): means and standard deviations over seeds, recall per class."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["set"], row["balance"]), []).append(row)
    table = []
    for (name, balance), group in groups.items():
        entry = {"set": name, "balance": balance, "seeds": len(group)}
        for metric in ("accuracy", "balanced_accuracy", "prior_accuracy"):
            entry[f"{metric}_mean"], entry[f"{metric}_sd"] = _mean_sd([r[metric] for r in group])
        for c in group[0]["recall"]:
            entry[f"recall_{c}"] = statistics.fmean(r["recall"][c] for r in group)
        minority = [r["minority_recall"] for r in group if r["minority_recall"] is not None]
        entry["minority_recall"] = statistics.fmean(minority) if minority else None
        entry["seconds"] = statistics.median(r["seconds"] for r in group)
        table.append(entry)
    return table


def columns(classes: list[str]) -> dict:
    return {
        "set": ("set", 0),
        "balance": ("balance", 0),
        "seeds": ("seeds", 0),
        "balanced acc (mean)": ("balanced_accuracy_mean", 3),
        "(sd)": ("balanced_accuracy_sd", 3),
        "accuracy (mean)": ("accuracy_mean", 3),
        "(sd) ": ("accuracy_sd", 3),
        "prior acc (mean)": ("prior_accuracy_mean", 3),
        **{f"recall {c}": (f"recall_{c}", 2) for c in classes},
        "seconds": ("seconds", 1),
    }


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], "bench_imbalance")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--balances", nargs="+", default=list(BALANCE_MODES))
    parser.add_argument("--minority", nargs="+", default=list(MINORITY))
    parser.add_argument("--ratio", type=int, default=RATIO)
    parser.add_argument(
        "--epochs", type=int, default=0, help="fine-tuning epochs after the head (recipe: 0)"
    )
    args = parser.parse_args()
    device = setup(args)
    src = sample_data_path("objects")
    classes = sorted(p.name for p in (src / "train").iterdir())
    loads = [load_snapshot()]
    rows = []
    for name in args.sets:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"objects_{name}"
                minority = args.minority if name == "imbalanced" else []
                counts = build_set(src, path, tuple(minority), args.ratio, seed)
                shift = seed % len(args.balances)
                for balance in args.balances[shift:] + args.balances[:shift]:
                    res = run_one(path, seed, balance, args.epochs)
                    row = {"set": name, "seed": seed, "balance": balance, "train_counts": counts}
                    rows.append(add_derived(row | res, minority))
                    recalls = " ".join(f"{c} {r:.2f}" for c, r in res["recall"].items())
                    print(
                        f"{name:10s} seed {seed} {balance:8s} bal.acc {res['balanced_accuracy']:.3f}"
                        f" acc {res['accuracy']:.3f} recall: {recalls} ({res['seconds']:.1f} s)",
                        flush=True,
                    )
            write_partial(args, "imbalance", rows, summarize(rows), loads)
        loads.append(load_snapshot())
    finish_runs(args, "imbalance", rows, summarize(rows), columns(classes), loads, device)


if __name__ == "__main__":
    main()
