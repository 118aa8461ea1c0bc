"""Benchmark: the training recipe against the plain fastai recipe on unseen objects, end to end.

Each evaluation set (``classification/tools/make_eval_sets.py``, and the shipped ``objects`` and
``objects_multilabel``) keeps every object instance of its validation images out of training, so validation accuracy says how the model generalises
to new objects of the same classes. For each (set, seed), side by side in one run, each
variant trains from the folder (data loaders included) and is scored on the validation set:

- ``fastai``: the plain fastai recipe: fastai data loaders with ``Resize(224)`` and
  ``aug_transforms()``, batch 16, the network ``vision_learner`` builds on the same offline
  EfficientNet-Lite0 weights (fastai's head, dropout 0.5), ``fine_tune(3)``; multi-label sets
  with a ``MultiCategoryBlock`` (BCE, threshold 0.5).
- ``old_defaults``: the recipe as it was before this benchmark (head on cached features of 2
  augmented passes, 40 epochs at 3e-3, no fine-tuning, no test-time augmentation).
- ``defaults``: ``train.train`` with today's ``TrainConfig()`` and the model type
  ``fast_inference``, scored as the saved model predicts (without test-time augmentation
  unless the variant says ``tta``).
- ``--candidates``: more variants, given as changes to today's defaults (``CANDIDATES``;
  join names with ``+`` to combine them, for example ``lite0_300+ft1``).

Reports accuracy (multi-label: hamming and zero-one at 0.5), its mean, standard deviation and
minimum over seeds, training seconds, and accuracy per minute. The variants' order rotates
with the seed so none always runs first on a warm or cold machine.

    python classification/tools/make_eval_sets.py     # once: builds data/eval_sets
    python benchmarks/bench_unseen_objects.py --seeds 0 1 2
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import base_parser, finish, load_snapshot, markdown_table, setup, write_partial

from utils_cv.classification.data import sample_data_path
from utils_cv.classification.metrics import accuracy, hamming_accuracy, zero_one_accuracy
from utils_cv.classification.spec import ModelSpec, spec_for_model_type
from utils_cv.classification.train import TrainConfig, get_preds, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "classification" / "tools"))
from make_eval_sets import DEFAULT_OUT as EVAL_DIR  # noqa: E402
from make_eval_sets import EVAL_SETS, eval_set_path  # noqa: E402

BATCH_SIZE = 16
SHIPPED_SETS = ("objects", "objects_multilabel")  # in the package; validation objects unseen too
SETS = (*EVAL_SETS, *SHIPPED_SETS)
# The recipe before this benchmark, pinned so that it stays reproducible when defaults change.
OLD_DEFAULTS = {
    "spec": {"im_size": 224, "dropout": 0.2, "feature_stages": 0},
    "config": {
        "epochs_head": 40,
        "lr": 3e-3,
        "aug_passes": 2,
        "epochs": 0,
        "label_smoothing": 0.0,
    },
}
# Candidate variants: changes to today's defaults (spec fields, TrainConfig fields).
CANDIDATES = {
    "tta": {"tta": True},  # scored on the mean of each image's and its mirror's probabilities
    "ls": {"config": {"label_smoothing": 0.1}},
    "no_ls": {"config": {"label_smoothing": 0.0}},
    "p4": {"config": {"aug_passes": 4}},
    "ft1": {"config": {"epochs": 1}},
    "ft2": {"config": {"epochs": 2}},
    "ft3": {"config": {"epochs": 3}},
    "no_ft": {"config": {"epochs": 0}},
    "ft2_ratio3": {"config": {"epochs": 2, "body_lr_ratio": 3.0}},
    "lite0_300": {"spec": {"im_size": 300}},
    "lite0_224": {"spec": {"im_size": 224}},
    "lite0_384": {"spec": {"im_size": 384}},
    "lite2": {"spec": {"backbone": "efficientnet_lite2", "im_size": 260}},
    "no_stages": {"spec": {"feature_stages": 0}},  # the defaults before stage features
    "stages1": {"spec": {"feature_stages": 1}},
    "d05": {"spec": {"dropout": 0.5}},
}


def candidate(name: str) -> dict:
    """The changes of candidate ``name`` ('a+b' merges the changes of a and b)."""
    changes = {"spec": {}, "config": {}, "tta": False}
    for part in name.split("+"):
        if part not in CANDIDATES:
            raise SystemExit(f"Unknown candidate {part!r}; choose from {', '.join(CANDIDATES)}.")
        for key in ("spec", "config"):
            changes[key].update(CANDIDATES[part].get(key, {}))
        changes["tta"] |= CANDIDATES[part].get("tta", False)
    return changes


def scores(multilabel: bool, y_true, y_score, threshold: float = 0.5) -> dict:
    if multilabel:
        return {
            "accuracy": hamming_accuracy(y_true, y_score, threshold),
            "zero_one": zero_one_accuracy(y_true, y_score, threshold),
        }
    return {"accuracy": accuracy(y_true, y_score)}


def run_recipe(path: Path, seed: int, changes: dict) -> dict:
    """``train.train`` with today's defaults plus ``changes``; scores as the model predicts."""
    spec = spec_for_model_type("fast_inference", **changes.get("spec", {}))
    config = TrainConfig(seed=seed, batch_size=BATCH_SIZE, **changes.get("config", {}))
    start = time.perf_counter()
    learn = train(path, spec, config, progress=False, record_train_metrics=False)
    seconds = time.perf_counter() - start
    y_score, y_true = get_preds(learn, tta=changes.get("tta", False))
    return {"s": seconds, **scores(learn.multilabel, y_true, y_score, learn.spec.threshold)}


def fastai_dls(path: Path, seed: int, device):
    """fastai's own data loaders for ``path``: class folders with train/ and valid/, or
    images/ + labels.csv (space-separated labels, an is_valid column)."""
    from fastai.vision.all import ImageDataLoaders, Normalize, Resize, aug_transforms

    spec = ModelSpec(backbone="efficientnet_lite0", im_size=224)
    common = dict(
        item_tfms=Resize(224),
        batch_tfms=[*aug_transforms(), Normalize.from_stats(list(spec.mean), list(spec.std))],
        bs=BATCH_SIZE,
        seed=seed,
        num_workers=0,
        device=device,
    )
    if (path / "labels.csv").is_file():
        import pandas as pd

        df = pd.read_csv(path / "labels.csv")
        return ImageDataLoaders.from_df(
            df, path, folder="images", label_delim=" ", valid_col="is_valid", **common
        )
    return ImageDataLoaders.from_folder(path, valid="valid", **common)


def run_fastai(path: Path, seed: int, device) -> dict:
    """The plain fastai recipe; its validation scores and seconds."""
    from fastai.vision.all import Learner, accuracy_multi, default_split, set_seed
    from fastai.vision.all import accuracy as fastai_accuracy

    from utils_cv.classification.network import build_classifier

    set_seed(seed)
    start = time.perf_counter()
    dls = fastai_dls(path, seed, device)
    multilabel = (path / "labels.csv").is_file()
    spec = ModelSpec(backbone="efficientnet_lite0", im_size=224, dropout=0.5, feature_stages=0)
    spec = spec.with_data([str(c) for c in dls.vocab], multilabel=multilabel)
    model = build_classifier(spec, pretrained=True)  # what vision_learner builds
    metric = accuracy_multi if multilabel else fastai_accuracy
    learn = Learner(dls, model, splitter=default_split, metrics=metric)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(3)
        seconds = time.perf_counter() - start
        y_score, y_true = learn.get_preds()
    y_score = y_score.numpy()  # fastai's loss already applied the sigmoid / softmax
    return {"s": seconds, **scores(multilabel, y_true.numpy(), y_score)}


def summarize(rows: list[dict], variants: list[str], sets: list[str]) -> list[dict]:
    """Per (set, variant): accuracy mean / sd / min over seeds, zero-one mean, seconds, and
    accuracy per minute; then per variant over all single-label and all multi-label sets."""
    multilabel = {r["set"] for r in rows if "zero_one" in r}
    groups = [(name, {name}) for name in sets]
    groups.append(("single-label sets", set(sets) - multilabel))
    groups.append(("multi-label sets", set(sets) & multilabel))
    out = []
    for label, names in groups:
        if label.endswith("sets") and len(names) < 2:
            continue
        for variant in variants:
            group = [r for r in rows if r["variant"] == variant and r["set"] in names]
            if not group:
                continue
            accs = [r["accuracy"] for r in group]
            secs = [r["s"] for r in group]
            zols = [r["zero_one"] for r in group if "zero_one" in r]
            entry = {
                "set": label,
                "variant": variant,
                "runs": len(group),
                "accuracy": statistics.fmean(accs),
                "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "accuracy_min": min(accs),
                "s": statistics.fmean(secs),
                "acc_per_min": statistics.fmean(accs) / statistics.fmean(secs) * 60,
            }
            if zols:
                entry["zero_one"] = statistics.fmean(zols)
            out.append(entry)
    return out


COLUMNS = {
    "set": ("set", 0),
    "variant": ("variant", 0),
    "runs": ("runs", 0),
    "accuracy (mean)": ("accuracy", 3),
    "sd": ("accuracy_sd", 3),
    "min": ("accuracy_min", 3),
    "zero-one (mean)": ("zero_one", 3),
    "seconds": ("s", 0),
    "accuracy / min": ("acc_per_min", 2),
}


def main():
    parser = base_parser(__doc__.split("\n\n")[0], "bench_unseen_objects")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants", nargs="+", default=["fastai", "old_defaults", "defaults"], help="baselines"
    )
    parser.add_argument("--candidates", nargs="*", default=[], help="see CANDIDATES")
    parser.add_argument("--eval_dir", type=Path, default=EVAL_DIR, help="make_eval_sets output")
    args = parser.parse_args()
    device = setup(args)
    variants = [*args.variants, *args.candidates]
    for name in args.candidates:
        candidate(name)  # fail early on a typo
    loads, rows = [load_snapshot()], []
    for name in args.sets:
        if name in SHIPPED_SETS:
            path = sample_data_path(name)
        else:
            path = eval_set_path(name, args.eval_dir)
        for seed in args.seeds:
            for i in range(len(variants)):
                variant = variants[(i + seed) % len(variants)]
                if variant == "fastai":
                    res = run_fastai(path, seed, device)
                elif variant == "old_defaults":
                    res = run_recipe(path, seed, OLD_DEFAULTS)
                elif variant == "defaults":
                    res = run_recipe(path, seed, {})
                else:
                    res = run_recipe(path, seed, candidate(variant))
                rows.append({"set": name, "seed": seed, "variant": variant, **res})
                zol = f" zero-one {res['zero_one']:.3f}" if "zero_one" in res else ""
                print(
                    f"{name:24s} seed {seed} {variant:13s} accuracy {res['accuracy']:.3f}{zol} "
                    f"in {res['s']:.0f} s",
                    flush=True,
                )
                write_partial(args, "bench_unseen_objects", rows, [], loads)
        loads.append(load_snapshot())
    summary = summarize(rows, variants, args.sets)
    table = markdown_table(summary, COLUMNS)
    results = {"runs": rows, "summary": summary, "complete": True}
    finish(args, "bench_unseen_objects", results, table, loads, device)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
