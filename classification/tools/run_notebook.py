"""Run one of the notebooks headless with papermill and print what it recorded.

Usage: python classification/tools/run_notebook.py 01_training_introduction.ipynb \
           [-p NAME VALUE ...] [--output-dir outputs/runs]

Values are parsed as Python literals when possible (2 -> int, 1e-3 -> float, "[1, 2]" -> list),
else kept as strings. The executed notebook is saved in the output folder.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parse_value(text: str):
    """A Python literal when ``text`` is one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "notebook",
        help="file name in classification/notebooks/, e.g. 01_training_introduction.ipynb",
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter of the notebook's parameters cell (repeatable)",
    )
    parser.add_argument(
        "--output-dir",
        default="outputs/runs",
        help="where the executed notebook goes (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    import papermill as pm
    import scrapbook as sb

    source = NOTEBOOKS / args.notebook
    if not source.is_file():
        names = ", ".join(sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
        parser.error(f"no notebook {args.notebook} in {NOTEBOOKS}; choose one of: {names}")
    parameters = {name: parse_value(value) for name, value in args.parameter}
    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / args.notebook
    if "OUTPUT_DIR" not in parameters:
        parameters["OUTPUT_DIR"] = str(out_dir / source.stem)
    print(f"Running {source.name} with {parameters or 'its default parameters'} ...", flush=True)
    pm.execute_notebook(
        str(source),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=True,
    )
    scraps = sb.read_notebook(str(output)).scraps.data_dict
    print("\nRecorded results:")
    for name, value in scraps.items():
        if isinstance(value, list) and len(value) > 8:
            value = f"[{len(value)} values, last {value[-1]!r}]"
        print(f"  {name}: {value}")
    if "validation_accuracy" in scraps:
        print(f"\nValidation accuracy: {scraps['validation_accuracy']:.1%}")
    if "model_dir" in scraps:
        print(f"Model saved in: {scraps['model_dir']}")
        print(
            "Classify images with it: python -m utils_cv.classification.predict "
            f"{scraps['model_dir']} IMAGES_OR_FOLDERS... --out predictions.csv"
        )
    print(f"Executed notebook: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
