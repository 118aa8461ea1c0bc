"""Benchmark: time to accuracy of this project's default recipe against the plain fastai recipe.

On the shipped single-label set (``objects``: 120 training, 40 validation images, 4 classes),
with the same backbone (``--arch``), image size 224 and batch size 16, the same data loaders
(``get_dls``: squish-resize, fastai's ``aug_transforms``, the backbone's normalisation) and
the same seed:

- plain fastai: a fastai ``Learner`` on the backbone with fastai's head (what
  ``vision_learner`` builds; fastai's defaults: Adam, weight decay 0.01, dropout 0.5), trained
  with ``learn.fine_tune(epochs)`` and its defaults (one frozen epoch, base_lr 2e-3), for each
  of ``--baseline_epochs``;
- this project: ``create_learner`` + ``fit_recipe(learn)`` with its defaults (``TrainConfig()``);
- this project with ``fast_training(learn)`` (channels-last), unless ``--no_fast``;
- checks of the training-side fast setting where the whole network trains:
  ``fine_tune(--fast_check_epochs)`` with ``fast_training(learn)`` and with
  ``fast_training(learn, bf16=True)`` (CPUs with bf16 instructions).

Per recipe: the validation accuracy after every epoch and when it was reached (seconds since
the start of training), the final validation accuracy and the wall time. Per pair: the time
this project needs to reach the plain recipe's final accuracy, as a fraction of the plain
recipe's wall time (target: at most 0.5).

    python benchmarks/bench_time_to_accuracy.py
    python benchmarks/bench_time_to_accuracy.py --baseline_epochs 3 --no_fast \
        --fast_check_epochs 0 --repeats 2
"""

from __future__ import annotations

import time
from functools import partial

from common import (
    base_parser,
    device_label,
    finish,
    load_snapshot,
    markdown_table,
    median,
    setup,
)

from utils_cv.classification.data import get_dls, sample_data_path
from utils_cv.classification.network import build_classifier
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import (
    TrainConfig,
    TrainMetricsRecorder,
    create_learner,
    fast_training,
    fit_recipe,
    validation_accuracy,
)
from utils_cv.common.gpu import cpu_has_fast_bf16

IM_SIZE = 224
BATCH_SIZE = 16


class TimedRecorder(TrainMetricsRecorder):
    """TrainMetricsRecorder that also notes when each epoch's validation accuracy was known.

    ``clock`` is a list of (seconds since ``start()``, validation accuracy) per epoch, for
    fastai fits and for ``fit_head_cached`` alike.
    """

    def start(self):
        self.t0, self.clock = time.perf_counter(), []

    def _tick(self):
        if self.valid_metrics and len(self.clock) < len(self.valid_metrics):
            self.clock.append((time.perf_counter() - self.t0, self.valid_metrics[-1][0]))

    def add_epoch(self, *args):
        super().add_epoch(*args)
        self._tick()

    def after_epoch(self):
        super().after_epoch()
        self._tick()


def make_dls(spec: ModelSpec, seed: int, device):
    return get_dls(sample_data_path("objects"), spec, BATCH_SIZE, seed=seed, device=device)


def _call(build, device, seed):
    return build(seed=seed, device=device)


def plain_fastai(arch: str, epochs: int, seed: int, device, fast: str = ""):
    """fastai Learner on ``arch`` (vision_learner's model) and the recorder to train it with.

    fast : "" (plain), "fp32" (``fast_training(learn)``) or "bf16" (with ``bf16=True``).
    """
    from fastai.vision.all import Learner, accuracy, default_split

    # fastai's head: create_head with its default dropout 0.5, apply_init
    spec = ModelSpec(backbone=arch, im_size=IM_SIZE, dropout=0.5)
    dls = make_dls(spec, seed, device)
    spec = spec.with_data([str(c) for c in dls.vocab], multilabel=False)
    model = build_classifier(spec, pretrained=True)  # body + create_head + apply_init
    recorder = TimedRecorder()
    learn = Learner(dls, model, splitter=default_split, metrics=accuracy, cbs=[recorder])
    learn.freeze()
    if fast:
        fast_training(learn, bf16=fast == "bf16")

    def train():
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(epochs)

    return learn, recorder, train


def project(arch: str, seed: int, device, fast: bool = False):
    """``create_learner`` + ``fit_recipe`` defaults (with ``fast_training`` when ``fast``)."""
    spec = ModelSpec(backbone=arch, im_size=IM_SIZE)
    dls = make_dls(spec, seed, device)
    recorder = TimedRecorder()
    learn = create_learner(dls, spec, record_train_metrics=False)
    learn.add_cb(recorder)
    if fast:
        fast_training(learn)

    def train():
        fit_recipe(learn, TrainConfig(), progress=False)

    return learn, recorder, train


def run(name: str, role: str, build, seed: int) -> dict:
    """Build a learner with ``build(seed)``, train it, and describe the run."""
    from fastai.vision.all import set_seed

    set_seed(seed)
    learn, recorder, train = build(seed)
    recorder.start()
    start = time.perf_counter()
    train()
    seconds = time.perf_counter() - start
    result = {
        "recipe": name,
        "role": role,
        "seed": seed,
        "seconds": seconds,
        "accuracy": _quiet_accuracy(learn),
        "epochs": len(recorder.clock),
        "clock": [{"seconds": s, "accuracy": a} for s, a in recorder.clock],
    }
    print(f"{name} (seed {seed}): accuracy {result['accuracy']:.3f} in {seconds:.1f} s")
    return result


def _quiet_accuracy(learn) -> float:
    with learn.no_bar():
        return validation_accuracy(learn)


def time_to_reach(run_: dict, accuracy: float) -> float | None:
    """Seconds until ``run_`` first had at least ``accuracy`` (None: never)."""
    return next((c["seconds"] for c in run_["clock"] if c["accuracy"] >= accuracy - 1e-9), None)


def compare(runs: list[dict]) -> list[dict]:
    """Per (plain fastai run, project run) of the same seed: time to the plain accuracy."""
    out = []
    for base in (r for r in runs if r["role"] == "baseline"):
        for mine in (r for r in runs if r["role"] == "project"):
            if mine["seed"] != base["seed"]:
                continue
            reach = time_to_reach(mine, base["accuracy"])
            fraction = None if reach is None else reach / base["seconds"]
            out.append(
                {
                    "baseline": base["recipe"],
                    "project": mine["recipe"],
                    "seed": base["seed"],
                    "baseline_accuracy": base["accuracy"],
                    "baseline_seconds": base["seconds"],
                    "project_accuracy": mine["accuracy"],
                    "project_seconds": mine["seconds"],
                    "project_seconds_to_baseline_accuracy": reach,
                    "fraction_of_baseline_time": fraction,
                    "target_met": fraction is not None and fraction <= 0.5,
                }
            )
    return out


def fast_checks(runs: list[dict]) -> list[dict]:
    """Per fast_training check run: accuracy and speed-up against the same plain fine_tune."""
    out = []
    for check in (r for r in runs if r["role"] == "check"):
        plain_name = check["recipe"].split(" + ")[0]
        plain = next(
            (r for r in runs if r["recipe"] == plain_name and r["seed"] == check["seed"]), None
        )
        if plain is None:
            continue
        out.append(
            {
                "recipe": check["recipe"],
                "seed": check["seed"],
                "accuracy": check["accuracy"],
                "plain_accuracy": plain["accuracy"],
                "speedup": plain["seconds"] / check["seconds"],
            }
        )
    return out


def summarize(pairs: list[dict]) -> dict:
    """Median fraction of the baseline's time per (baseline, project); None if never reached."""
    out = {}
    for key in dict.fromkeys((p["baseline"], p["project"]) for p in pairs):
        fractions = [
            p["fraction_of_baseline_time"] for p in pairs if (p["baseline"], p["project"]) == key
        ]
        out[" vs ".join(key)] = None if None in fractions else median(fractions)
    return out


CHECK_COLUMNS = {
    "fast training check": ("recipe", 0),
    "validation accuracy": ("accuracy", 3),
    "plain fastai accuracy": ("plain_accuracy", 3),
    "speed-up": ("speedup", 2),
}
RUN_COLUMNS = {
    "recipe": ("recipe", 0),
    "role": ("role", 0),
    "seed": ("seed", 0),
    "device": ("device", 0),
    "epochs": ("epochs", 0),
    "validation accuracy": ("accuracy", 3),
    "wall time s": ("seconds", 1),
}
PAIR_COLUMNS = {
    "plain fastai": ("baseline", 0),
    "its accuracy": ("baseline_accuracy", 3),
    "its wall time s": ("baseline_seconds", 1),
    "this project": ("project", 0),
    "time to that accuracy s": ("project_seconds_to_baseline_accuracy", 1),
    "fraction of fastai time": ("fraction_of_baseline_time", 3),
    "<= 0.5": ("target_met", 0),
}


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], "bench_time_to_accuracy")
    parser.add_argument("--arch", default="efficientnet_lite0", help="backbone of every recipe")
    parser.add_argument(
        "--baseline_epochs",
        type=int,
        nargs="+",
        default=[1, 3, 10],
        help="fine_tune(epochs) values",
    )
    parser.add_argument("--no_fast", action="store_true", help="skip the fast_training run")
    parser.add_argument(
        "--fast_check_epochs",
        type=int,
        default=3,
        help="also run fine_tune(this) with fast_training (fp32, and bf16 where the CPU has it) "
        "to check that accuracy holds when the whole network trains; 0: skip",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per recipe (seeds 42, 43..)")
    args = parser.parse_args()
    device = setup(args)
    loads = [load_snapshot()]
    recipes = {}  # name -> (role, build(seed))
    for e in args.baseline_epochs:
        recipes[f"fastai fine_tune({e})"] = ("baseline", partial(plain_fastai, args.arch, e))
    recipes["project fit_recipe"] = ("project", partial(project, args.arch, fast=False))
    if not args.no_fast:
        recipes["project fit_recipe + fast_training"] = (
            "project",
            partial(project, args.arch, fast=True),
        )
    e = args.fast_check_epochs
    if e:  # does fast_training keep fastai's accuracy when the whole network trains?
        for fast, label in (("fp32", "fast_training"), ("bf16", "fast_training(bf16=True)")):
            if fast == "bf16" and (device.type == "cuda" or not cpu_has_fast_bf16()):
                continue  # on CUDA fast_training is fp16 either way
            build = partial(plain_fastai, args.arch, e, fast=fast)
            recipes[f"fastai fine_tune({e}) + {label}"] = ("check", build)
    runs = []
    for repeat in range(args.repeats):
        names = list(recipes) if repeat % 2 == 0 else list(reversed(recipes))
        for name in names:
            role, build = recipes[name]
            runs.append(run(name, role, partial(_call, build, device), 42 + repeat))
            runs[-1]["device"] = device_label(device)
            loads.append(load_snapshot())
    pairs = compare(runs)
    summary = summarize(pairs)
    checks = fast_checks(runs)
    results = {
        "runs": runs,
        "pairs": pairs,
        "median_fraction_of_baseline_time": summary,
        "fast_training_checks": checks,
    }
    tables = [(runs, RUN_COLUMNS), (pairs, PAIR_COLUMNS), (checks, CHECK_COLUMNS)]
    table = "\n\n".join(markdown_table(rows, columns) for rows, columns in tables if rows)
    finish(args, "time_to_accuracy", results, table, loads, device)


if __name__ == "__main__":
    main()
