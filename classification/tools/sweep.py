"""Sweep the training recipe from the command line: train one model per combination of values.

The swept parameters are the fields of the model specification (ModelSpec: backbone, image
size, resize method, head, dropout) and of the training configuration (TrainConfig), so a sweep
explores exactly the recipe the notebooks use; a flag left out keeps the recipe's default.
Every flag that takes values takes one or more; the sweep trains each combination on each
dataset --repeat times, prints each dataset's data check, shows a progress bar and prints the
results averaged over repetitions. Finished runs are appended to <output>/sweep_results.csv;
run the same command again to resume an interrupted sweep.

Example (a quick one):

    python classification/tools/sweep.py --lrs 1e-3 1e-2 --im-sizes 96 --epochs-heads 5 \\
        --repeat 1 --inputs utils_cv/classification/sample_data/objects_tiny

The recipe: the head trains for EPOCHS_HEAD epochs on cached features of the frozen body
(peak learning rate LR), then, when EPOCHS > 0, the whole network is fine-tuned for EPOCHS
epochs (head at LR / BODY_LR_RATIO, body ten times lower still).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils_cv.classification.backbones import list_backbones
from utils_cv.classification.spec import HEADS, RESIZE_METHODS
from utils_cv.classification.sweeper import (
    DEFAULT_PARAMS,
    RESULTS_FILE,
    ParameterSweeper,
    average_sweeper_df,
    clean_sweeper_df,
)
from utils_cv.classification.train import BALANCE_MODES

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def str_to_bool(text: str) -> bool:
    """'true'/'yes'/'on'/'1' -> True, 'false'/'no'/'off'/'0' -> False (any case)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}")


def default_inputs() -> list[str]:
    """The shipped ``objects`` sample set, or nothing when it is missing."""
    from utils_cv.classification.data import sample_data_path

    try:
        return [str(sample_data_path("objects"))]
    except FileNotFoundError:
        return []


# One flag per sweep parameter (sweeper.DEFAULT_PARAMS): (parameter, flag, type, help).
SWEEP_FLAGS = [
    (
        "backbone",
        "--backbones",
        str,
        f"backbones with pretrained weights: {', '.join(list_backbones())}",
    ),
    ("im_size", "--im-sizes", int, "image sides in pixels"),
    ("resize", "--resizes", str, "how images become squares"),
    ("head", "--heads", str, "heads: fastai's MLP or one linear layer"),
    ("dropout", "--dropouts", float, "dropout probabilities of the head, 0 <= p < 1"),
    (
        "feature_stages",
        "--feature-stages",
        int,
        "block stages before the backbone's final maps joined to its features (0: none)",
    ),
    ("epochs_head", "--epochs-heads", int, "epochs of the head on cached features of the body"),
    ("epochs", "--epochs", int, "epochs fine-tuning the whole network afterwards (0: none)"),
    ("lr", "--lrs", float, "peak learning rates of the head"),
    ("batch_size", "--batch-sizes", int, "images per batch"),
    ("weight_decay", "--weight-decays", float, "AdamW weight decays"),
    ("aug_passes", "--aug-passes", int, "augmented passes over the images when caching features"),
    (
        "body_lr_ratio",
        "--body-lr-ratios",
        float,
        "head-to-body learning-rate ratios when fine-tuning (1: the same rate)",
    ),
    (
        "one_cycle",
        "--one-cycles",
        str_to_bool,
        "fine-tuning with a one-cycle schedule (true) or a constant learning rate (false)",
    ),
    (
        "freeze_bn_stats",
        "--freeze-bn-stats",
        str_to_bool,
        "fine-tuning keeps the body's batch-norm statistics as pretrained (true) or updates "
        "them (false)",
    ),
    ("transform", "--transforms", str_to_bool, "data augmentation on (true) and/or off (false)"),
    (
        "patience",
        "--patience",
        int,
        "stop each stage after this many epochs without a lower validation loss (0: off)",
    ),
    (
        "label_smoothing",
        "--label-smoothings",
        float,
        "share of the uniform distribution mixed into single-label targets (0: off)",
    ),
    ("balance", "--balances", str, "answers to class imbalance (single-label data only)"),
    (
        "keep_best",
        "--keep-best",
        str_to_bool,
        "put back each stage's weights of its lowest validation loss (true) or not (false)",
    ),
    (
        "lr_find",
        "--lr-finds",
        str_to_bool,
        "train at the learning-rate finder's suggestion (true) or at --lrs (false)",
    ),
]
CHOICES = {"resize": list(RESIZE_METHODS), "head": list(HEADS), "balance": list(BALANCE_MODES)}

# Flags of the sweep tool before it swept the recipe's parameters -> what replaces them.
OLD_FLAGS = {
    "--learning-rates": "--lrs",
    "--architectures": "--backbones",
    "--training-schedules": "--epochs-heads and --epochs",
    "--discriminative-lrs": "--body-lr-ratios",
    "--one-cycle-policies": "--one-cycles",
    "--early-stopping": "--patience N",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; a sweep flag left out keeps the sweeper's default value."""
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grid = parser.add_argument_group("parameters to sweep (one or more values each)")
    for name, flag, type_, text in SWEEP_FLAGS:
        grid.add_argument(
            flag,
            dest=name,
            nargs="+",
            type=type_,
            choices=CHOICES.get(name),
            default=None,
            metavar=name.upper(),
            help=_help_with_choices(text, name),
        )
    run = parser.add_argument_group("the run")
    run.add_argument(
        "--inputs",
        nargs="+",
        default=None,
        metavar="FOLDER",
        help="dataset folders (class folders, train/ and valid/ folders, or images + labels.csv); "
        "default: the shipped 'objects' sample set",
    )
    run.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="N",
        help="train every combination N times (default: %(default)s)",
    )
    run.add_argument(
        "--output",
        default="outputs/sweep",
        metavar="FOLDER",
        help=f"folder for {RESULTS_FILE} and the data check reports; runs already in the CSV "
        "are skipped, so rerunning resumes a sweep (default: %(default)s)",
    )
    run.add_argument(
        "--seed", type=int, default=42, help="random seed of repetition 0 (default: %(default)s)"
    )
    return parser


def _help_with_choices(text: str, name: str) -> str:
    choices = f"; choices: {', '.join(CHOICES[name])}" if name in CHOICES else ""
    default = DEFAULT_PARAMS[name]
    shown = "the backbone's" if default is None else default
    return f"{text}{choices} (default: {shown})"


def sweep_parameters(args: argparse.Namespace) -> dict:
    """{parameter: values} of the sweep flags given on the command line."""
    values = {name: getattr(args, name) for name, _, _, _ in SWEEP_FLAGS}
    return {name: value for name, value in values.items() if value is not None}


def sweeper_from_args(args: argparse.Namespace) -> ParameterSweeper:
    """A ParameterSweeper with the values of the sweep flags (ValueError on a bad value)."""
    return ParameterSweeper(**sweep_parameters(args))


def check_inputs(inputs: list[str] | None) -> list[str]:
    """The dataset folders to sweep; ValueError when there are none or one is missing."""
    inputs = default_inputs() if inputs is None else inputs
    if not inputs:
        raise ValueError("no dataset given: pass --inputs FOLDER ...")
    missing = [folder for folder in inputs if not Path(folder).is_dir()]
    if missing:
        raise ValueError(f"dataset folder not found: {', '.join(missing)}")
    return inputs


def results_table(df) -> str:
    """The results averaged over repetitions, showing only the parameters that vary."""
    table = average_sweeper_df(clean_sweeper_df(df), over="rep")
    return table.to_string(float_format=lambda x: f"{x:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        old = arg.split("=", 1)[0]
        if old in OLD_FLAGS:
            parser.error(f"{old} is gone: use {OLD_FLAGS[old]} (see --help)")
    args = parser.parse_args(argv)
    try:
        sweeper = sweeper_from_args(args)
        inputs = check_inputs(args.inputs)
        if args.repeat < 1:
            raise ValueError("--repeat must be >= 1")
    except ValueError as err:
        parser.error(str(err))
    n_combinations = len(sweeper.permutations)
    print(
        f"{n_combinations * len(inputs) * args.repeat} runs: {n_combinations} combination(s) "
        f"x {len(inputs)} dataset(s) x {args.repeat} repetition(s); "
        f"results in {Path(args.output) / RESULTS_FILE}"
    )
    try:
        df = sweeper.run(inputs, reps=args.repeat, out_dir=args.output, seed=args.seed)
    except ValueError as err:
        print(f"sweep.py: error: {err}", file=sys.stderr)
        return 2
    print("\nAccuracy (fraction) and duration (seconds), averaged over repetitions:")
    print(results_table(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
