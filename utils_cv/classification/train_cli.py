"""The training command: one process, or many under ``torchrun`` (data-parallel, same recipe).

::

    python -m utils_cv.classification.train_cli DATA_DIR --out MODEL_DIR [--epochs-head N]
        [--epochs N] [--lr X] [--batch-size N] [--backbone NAME] [--im-size PX] [--seed N] ...
    torchrun --nproc_per_node 2 -m utils_cv.classification.train_cli DATA_DIR --out MODEL_DIR

(``python -m utils_cv.classification.train`` is the same command.) Every field of
``train.TrainConfig`` is an option (``--epochs-head``, ``--aug-passes``, ...), with the recipe's
defaults; ``--backbone``, ``--im-size`` and ``--resize`` set the ``ModelSpec``. By default the data
is checked first (``datacheck.check_dataset``) and training uses its good files only.

Rank 0 saves the model (``saved.save_model``: ``model.safetensors`` + ``model.json``, the
same format whatever the number of processes) and prints one JSON line: ``validation_accuracy``
(fraction; top-1, or hamming for multi-label data), ``training_seconds``, ``processes``,
``model_dir``. Exit status: 0 when trained and saved, 2 for a bad argument or data folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from utils_cv.classification.train import TrainConfig


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The command's options: DATA_DIR, --out, the ModelSpec options, one per TrainConfig field."""
    parser = argparse.ArgumentParser(
        prog="python -m utils_cv.classification.train",
        description="Train an image classifier with utils_cv's recipe; under torchrun, "
        "data-parallel on every process it starts.",
    )
    parser.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="class folders, train/ + valid/, or images/ + labels.csv",
    )
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="folder for the model")
    parser.add_argument("--backbone", default=None, help="backbone name (default: the recipe's)")
    parser.add_argument("--im-size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--resize", default=None, help="resize method (default: the backbone's)")
    parser.add_argument(
        "--no-data-check", action="store_true", help="train on every image without checking"
    )
    parser.add_argument("--no-pretrained", action="store_true", help="random initial weights")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    for f in fields(TrainConfig):
        kind = _bool if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(
            _flag(f.name), type=kind, default=f.default, help=f"default: {f.default!r}"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command (``argv``: its arguments); returns the exit status."""
    from utils_cv.classification import distributed
    from utils_cv.classification.saved import save_model
    from utils_cv.classification.spec import ModelSpec, SpecError
    from utils_cv.classification.train import ConfigError, train

    parser = build_parser()
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        parser.error(f"DATA_DIR {data_dir} is not a folder")
    try:
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        spec_args = {"backbone": args.backbone, "im_size": args.im_size, "resize": args.resize}
        spec = ModelSpec(**{k: v for k, v in spec_args.items() if v is not None})
    except (ConfigError, SpecError) as err:
        parser.error(str(err))

    distributed.init_process_group()
    try:
        files = None
        if not args.no_data_check:
            from utils_cv.classification.datacheck import check_dataset

            # every process checks (the same files, so the same answer); rank 0 writes
            out = Path(args.out) if distributed.is_main_process() else None
            report = check_dataset(data_dir, out_dir=out, progress=False)
            files = list(report.good_files)
        learn = train(
            data_dir,
            spec,
            config,
            files=files,
            progress=args.progress and distributed.is_main_process(),
            pretrained=not args.no_pretrained,
        )
        acc = distributed.validation_accuracy(learn)  # every process takes part
        if distributed.is_main_process():
            save_model(learn, args.out)
            summary = {
                "validation_accuracy": float(acc),
                "training_seconds": float(learn.training_seconds),
                "processes": distributed.world_size(),
                "model_dir": str(Path(args.out).resolve()),
            }
            print(json.dumps(summary), flush=True)
        distributed.barrier()  # no process leaves before the model is saved
    finally:
        distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
