"""Sweep training parameters from the command line: train one model per combination of values.

Every flag that takes values takes one or more; the sweep trains each combination on each
dataset ``--repeat`` times, prints each dataset's data check, shows a progress bar and prints
the results averaged over repetitions. Finished runs are appended to
``<output>/sweep_results.csv``; run the same command again to resume an interrupted sweep.

Example (a quick one):

    python classification/tools/sweep.py --learning-rates 1e-4 1e-3 --im-sizes 96 \\
        --epochs 1 --repeat 1 --inputs utils_cv/classification/sample_data/objects_tiny

Training schedules: head_only trains the head for EPOCHS with the body frozen; body_only
trains the whole network for EPOCHS; head_first_then_body trains the head for 1 epoch, then
the whole network for EPOCHS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils_cv.classification.backbones import list_backbones
from utils_cv.classification.sweeper import (
    DEFAULT_PARAMS,
    RESULTS_FILE,
    TRAINING_SCHEDULES,
    ParameterSweeper,
    average_sweeper_df,
    clean_sweeper_df,
)

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


# (flag, sweeper parameter, type, help)
SWEEP_FLAGS = [
    ("--learning-rates", "learning_rate", float, "peak learning rates of the head"),
    ("--epochs", "epochs", int, "numbers of training epochs (see the training schedules)"),
    ("--batch-sizes", "batch_size", int, "images per batch"),
    ("--im-sizes", "im_size", int, "image sides in pixels (images are squished to squares)"),
    ("--architectures", "architecture", str, "backbones"),
    ("--transforms", "transform", str_to_bool, "data augmentation on (true) and/or off (false)"),
    ("--dropouts", "dropout", float, "dropout probabilities of the head, 0 <= p < 1"),
    ("--weight-decays", "weight_decay", float, "weight decays (fastai's default is 0.01)"),
    ("--training-schedules", "training_schedule", str, "training schedules"),
    (
        "--discriminative-lrs",
        "discriminative_lr",
        str_to_bool,
        "true: the body learns 10x slower than the head; false: at the same rate",
    ),
    (
        "--one-cycle-policies",
        "one_cycle_policy",
        str_to_bool,
        "true: fastai's one-cycle schedule; false: a constant learning rate",
    ),
]
CHOICES = {"architecture": list_backbones(), "training_schedule": list(TRAINING_SCHEDULES)}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every sweep flag defaults to the sweeper's default value."""
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grid = parser.add_argument_group("parameters to sweep (one or more values each)")
    for flag, name, type_, text in SWEEP_FLAGS:
        grid.add_argument(
            flag,
            dest=name,
            nargs="+",
            type=type_,
            choices=CHOICES.get(name),
            default=[DEFAULT_PARAMS[name]],
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
        "--early-stopping",
        action="store_true",
        help="stop training the whole network when the validation loss has not improved "
        "for --patience epochs",
    )
    run.add_argument(
        "--patience",
        type=int,
        default=3,
        metavar="EPOCHS",
        help="epochs without improvement before early stopping (default: %(default)s)",
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
    return f"{text}{choices} (default: {DEFAULT_PARAMS[name]})"


def sweeper_from_args(args: argparse.Namespace) -> ParameterSweeper:
    """A ParameterSweeper with the values of the sweep flags (ValueError on a bad value)."""
    return ParameterSweeper(**{name: getattr(args, name) for _, name, _, _ in SWEEP_FLAGS})


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
    args = parser.parse_args(argv)
    try:
        sweeper = sweeper_from_args(args)
        inputs = check_inputs(args.inputs)
        if args.repeat < 1 or args.patience < 1:
            raise ValueError("--repeat and --patience must be >= 1")
    except ValueError as err:
        parser.error(str(err))
    n_combinations = len(sweeper.permutations)
    print(
        f"{n_combinations * len(inputs) * args.repeat} runs: {n_combinations} combination(s) "
        f"x {len(inputs)} dataset(s) x {args.repeat} repetition(s); "
        f"results in {Path(args.output) / RESULTS_FILE}"
    )
    try:
        df = sweeper.run(
            inputs,
            reps=args.repeat,
            out_dir=args.output,
            early_stopping=args.early_stopping,
            patience=args.patience,
            seed=args.seed,
        )
    except ValueError as err:
        print(f"sweep.py: error: {err}", file=sys.stderr)
        return 2
    print("\nAccuracy (fraction) and duration (seconds), averaged over repetitions:")
    print(results_table(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
