"""Do early stopping, keeping the best epoch's weights, the learning-rate finder and test-time
augmentation help the default recipe? (benchmarks/README.md, "Training tools")

On the shipped sample sets (objects: single-label; objects_multilabel), per seed: the body's
features are extracted once (the recipe's 2 augmented passes), then the head trains 40 epochs
at 3e-3 (the default) with each option on the same features, so the options are compared on
equal terms. Validation accuracy (hamming at 0.5 for multi-label) as a fraction; head seconds.
TTA: the default head's accuracy with and without averaging the mirrored image.

    python benchmarks/bench_training_tools.py [--seeds 3] [--out benchmarks/results/...json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from utils_cv.classification.data import dataset_paths, get_dls, sample_data_path
from utils_cv.classification.listeners import BestEpoch
from utils_cv.classification.lr_finder import lr_find_head
from utils_cv.classification.metrics import accuracy, hamming_accuracy
from utils_cv.classification.predict import TorchPredictor
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import (
    EPOCHS_HEAD,
    LEARNING_RATE,
    create_learner,
    extract_features,
    train_head,
)
from utils_cv.common.misc import set_random_seed

VARIANTS = {
    "default": dict(patience=0, keep_best=False),
    "patience=5": dict(patience=5, keep_best=False),
    "keep_best": dict(patience=0, keep_best=True),
    "patience=5+keep_best": dict(patience=5, keep_best=True),
    "lr_find": dict(patience=0, keep_best=False, lr_find=True),
}


def score(learn, multilabel: bool) -> float:
    rest = learn.model[1][1:]
    rest.eval()
    with torch.no_grad():
        out = rest(learn._x_valid)
    y = learn._y_valid.numpy()
    if multilabel:
        return hamming_accuracy(y, out.sigmoid().numpy(), 0.5)
    return accuracy(y, out.softmax(1).numpy())


def run(dataset: str, seed: int) -> dict:
    set_random_seed(seed)
    spec = ModelSpec()
    dls = get_dls(sample_data_path(dataset), spec, batch_size=16, seed=seed)
    learn = create_learner(dls, spec)
    multilabel = learn.multilabel
    x_train, y_train = extract_features(learn, dls.train, 2)
    learn._x_valid, learn._y_valid = extract_features(learn, dls.valid)
    start_state = {k: v.clone() for k, v in learn.model[1].state_dict().items()}
    out = {}
    for name, options in VARIANTS.items():
        learn.model[1].load_state_dict(start_state)
        torch.manual_seed(seed)
        lr = LEARNING_RATE
        start = time.perf_counter()
        if options.get("lr_find"):
            lr = lr_find_head(learn, x_train, y_train).suggestion
        best = BestEpoch(options["patience"], options["keep_best"])
        train_head(
            learn, x_train, y_train, learn._x_valid, learn._y_valid, EPOCHS_HEAD, lr,
            progress=False, listeners=[best],
        )  # fmt: skip
        seconds = time.perf_counter() - start
        out[name] = {
            "accuracy": score(learn, multilabel),
            "seconds": seconds,
            "epochs": best.best["head"]["stopped_at"] or EPOCHS_HEAD,
            "best_epoch": best.best["head"]["epoch"],
            "lr": lr,
        }
        if name == "default":
            predictor = TorchPredictor(
                learn.model, learn.spec.with_data(learn.spec.classes, multilabel)
            )
            files = dataset_paths(dls.valid_ds)
            y = learn._y_valid.numpy()
            for tta in (False, True):
                predictor.tta = tta
                probs = predictor.predict_proba(files)
                acc = hamming_accuracy(y, probs, 0.5) if multilabel else accuracy(y, probs)
                out[f"predictor tta={tta}"] = {"accuracy": acc}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["objects", "objects_multilabel"])
    parser.add_argument("--out", default="benchmarks/results/bench_training_tools.json")
    args = parser.parse_args()
    results = {}
    for dataset in args.datasets:
        for seed in range(args.seeds):
            results[f"{dataset}/{seed}"] = run(dataset, seed)
            print(dataset, seed, json.dumps(results[f"{dataset}/{seed}"]), flush=True)
    names = list(next(iter(results.values())))
    print(f"\n{'variant':28s} {'dataset':20s} accuracy (mean, min)  seconds  epochs")
    for dataset in args.datasets:
        for name in names:
            rows = [r[name] for k, r in results.items() if k.startswith(dataset + "/")]
            acc = np.array([r["accuracy"] for r in rows])
            secs = np.mean([r.get("seconds", np.nan) for r in rows])
            epochs = np.mean([r.get("epochs", np.nan) for r in rows])
            print(
                f"{name:28s} {dataset:20s} {acc.mean():.3f} {acc.min():.3f}   {secs:7.2f}  {epochs:5.1f}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
