"""Shared helpers of the benchmarks: machine description, settings, side-by-side timing, tables
and the JSON result files.

Every benchmark measures the settings it compares in the same run, interleaved (round-robin,
the starting variant rotating every round) and repeated, and reports medians and ratios: on a
machine shared with other jobs absolute times drift, ratios measured side by side hold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "torchvision", "fastai", "timm", "onnxruntime", "onnx", "numpy", "pillow")


# --- settings -------------------------------------------------------------------------------------


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark has: --threads, --device, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch and ONNX Runtime (default 1: on a shared machine more "
        "threads than free cores make every variant slower and noisier)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where the models run (auto: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS_DIR / f"{name}.json", help="result file"
    )
    return parser


def setup(args) -> torch.device:
    """Apply ``args.threads``, silence known library warnings; return the torch device."""
    import logging
    import warnings

    torch.set_num_threads(args.threads)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def device_label(device: torch.device) -> str:
    """'CPU' or 'GPU' for table columns."""
    return "GPU" if torch.device(device).type == "cuda" else "CPU"


# --- the machine -----------------------------------------------------------------------------------


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_snapshot() -> dict:
    """The machine's load now: 1/5/15-minute load averages and the ``uptime`` line."""
    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        line = ""
    loads = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_1_5_15": [round(v, 2) for v in loads] if loads else None,
        "uptime": line.strip(),
    }


def machine_info(device: torch.device, threads: int) -> dict:
    """CPU model, cores, bf16/AMX flags, GPU, thread setting and package versions."""
    from utils_cv.common.gpu import cpu_flags, cpu_has_fast_bf16, cpu_name

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = cpu_flags()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_model": cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": gpu,
        "device": str(device),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
    }


# --- timing ----------------------------------------------------------------------------------------


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work (timing on a GPU); nothing on a CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device=None) -> float:
    """Wall time of one call of ``fn`` in seconds (CUDA work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_side_by_side(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, device=None
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured interleaved.

    Each of ``repeats`` rounds calls every function once, starting one further along the list
    each round, so slow spells of a shared machine hit every variant alike. ``warmup`` untimed
    rounds come first. Returns {name: [seconds per round]}.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(fns[name], device))
    return times


def median(values) -> float:
    return float(statistics.median(values))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b in (None, 0):
        return None
    return a / b


# --- models ----------------------------------------------------------------------------------------


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Floating-point operations (a multiply-add counts 2) of a forward pass on ``x``.

    Counted by ``torch.utils.flop_counter`` (convolutions and matrix products). For a training
    step take 3x this: the backward pass costs about twice the forward pass. (Do not count the
    backward pass with FlopCounterMode: it ignores ``groups`` in convolution_backward and
    overcounts depthwise convolutions by their channel count.)
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def present_backbones(names: list[str]) -> tuple[list[str], list[str]]:
    """(names whose ImageNet weights load offline, names skipped because they do not)."""
    from utils_cv.classification.backbones import weights_available

    present = [n for n in names if weights_available(n)]
    return present, [n for n in names if n not in present]


# --- output ----------------------------------------------------------------------------------------


def fmt(value, digits: int = 1) -> str:
    """A table cell: floats with ``digits`` decimals, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], columns: dict[str, tuple[str, int]]) -> str:
    """A Markdown table: ``columns`` maps header -> (row key, decimals)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt(row.get(key), digits) for key, digits in columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, benchmark: str, settings: dict, results, machine: dict, loads) -> Path:
    """Write {"benchmark", "settings", "results", "machine", "load"} to ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": benchmark,
        "settings": settings,
        "results": results,
        "machine": machine,
        "load": loads,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def settings_of(args) -> dict:
    """The command-line options as JSON-ready settings (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def summarize_seeds(
    rows: list[dict],
    keys: tuple[str, ...],
    means: dict[str, str],
    mins: dict[str, str] | None = None,
    medians: dict[str, str] | None = None,
) -> list[dict]:
    """One row per distinct ``keys`` of ``rows`` (in order of appearance), with "seeds" (the
    group's size) and statistics over the group: ``means``, ``mins`` and ``medians`` map an
    output name to the row field it summarises; fields absent from a group are left out."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    table = []
    for values, group in groups.items():
        entry = {**dict(zip(keys, values)), "seeds": len(group)}
        for stats, fn in ((means, statistics.fmean), (mins, min), (medians, statistics.median)):
            for name, field in (stats or {}).items():
                if field in group[0]:
                    entry[name] = float(fn([r[field] for r in group]))
        table.append(entry)
    return table


def write_partial(args, benchmark: str, rows: list[dict], summary: list[dict], loads) -> None:
    """The runs so far, marked incomplete, so a run stopped early still leaves its results."""
    results = {"runs": rows, "summary": summary, "complete": False}
    write_json(args.json, benchmark, settings_of(args), results, {}, loads)


def finish_runs(args, benchmark: str, rows, summary, columns, loads: list[dict], device) -> Path:
    """``finish`` for benchmarks that record runs and a per-group summary table."""
    results = {"runs": rows, "summary": summary, "complete": True}
    return finish(args, benchmark, results, markdown_table(summary, columns), loads, device)


def run_screening(args, benchmark: str, run_seed, device) -> Path:
    """Screening benchmarks over evaluation sets: ``run_seed(name, seed, args, device)`` gives
    rows (set, seed, variant, accuracy[, zero_one], feature_s) for every ``args.sets`` x
    ``args.seeds``, written as they come; then one summary row per (variant, set)."""
    loads, rows = [load_snapshot()], []
    for name in args.sets:
        for seed in args.seeds:
            rows += run_seed(name, seed, args, device)
            write_partial(args, benchmark, rows, [], loads)
        loads.append(load_snapshot())
    summary = summarize_seeds(
        rows,
        ("variant", "set"),
        means={"accuracy_mean": "accuracy", "zero_one_mean": "zero_one"},
        mins={"accuracy_min": "accuracy"},
        medians={"feature_s": "feature_s"},
    )
    columns = {
        "variant": ("variant", 0),
        "set": ("set", 0),
        "seeds": ("seeds", 0),
        "accuracy (mean)": ("accuracy_mean", 3),
        "accuracy (min)": ("accuracy_min", 3),
        "zero-one (mean)": ("zero_one_mean", 3),
        "feature s": ("feature_s", 1),
    }
    return finish_runs(args, benchmark, rows, summary, columns, loads, device)


def finish(args, benchmark: str, results, table: str, loads: list[dict], device) -> Path:
    """Print ``table``, add the final load snapshot and write the JSON; return its path."""
    loads.append(load_snapshot())
    print()
    print(table)
    settings = settings_of(args)
    machine = machine_info(device, args.threads)
    path = write_json(args.json, benchmark, settings, results, machine, loads)
    print(f"\nload: {loads[0]['uptime']}  ->  {loads[-1]['uptime']}")
    print(f"wrote {path}")
    return path
