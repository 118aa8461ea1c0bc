"""Figures of the FAQ from ``bench_recipe_choices.py`` results.

- ``images_per_class.png``: validation accuracy against training images per class, per set
  (mean over seeds, bars from the worst to the best seed).
- ``size_backbone.png``: validation accuracy per backbone / image size / resizing, per set, and
  the seconds the recipe needs for each configuration.

    python benchmarks/plot_recipe_choices.py   # reads results/bench_recipe_choices_*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SET_LABELS = {
    "objects": "objects (shipped)",
    "objects_large": "objects, 60/class",
    "animals_busy": "animals, busy background",
    "objects_small_gray": "objects, 64x48 gray",
    "objects_multilabel": "multi-label (hamming)",
}


def load_runs(path: Path) -> list[dict]:
    """The result rows of a bench_recipe_choices JSON file, each with the file's machine."""
    data = json.loads(Path(path).read_text())
    return [{**r, "machine": data.get("machine", {})} for r in data["results"]["runs"]]


def cpu_label(runs: list[dict]) -> str:
    """'<cpu model>, <n> cores, <t> threads' from the machine record of ``runs``."""
    machine = runs[0]["machine"] if runs else {}
    name = machine.get("cpu_model", "CPU").split(" Processor")[0]
    return f"{name}, {machine.get('usable_cores')} cores, {machine.get('threads')} threads"


def stats(values: list[float]) -> tuple[float, float, float]:
    """Mean, and the distances from it to the minimum and the maximum."""
    mean = float(np.mean(values))
    return mean, mean - min(values), max(values) - mean


def plot_images_per_class(runs: list[dict], head: str, out: Path) -> Path:
    """Accuracy against images per class for each set, using head variant ``head``."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rows = [r for r in runs if r["experiment"] == "per_class" and r["head"] == head]
    # one row per (set, seed, count): older result files repeat "all" when it equals 40
    rows = list({(r["set"], r["seed"], r["per_class"]): r for r in rows}.values())
    for name in dict.fromkeys(r["set"] for r in rows):
        by_k: dict[float, list[float]] = {}
        for r in rows:
            if r["set"] == name:
                by_k.setdefault(r["per_class"], []).append(r["accuracy"])
        ks = sorted(by_k)
        mean, lo, hi = zip(*(stats(by_k[k]) for k in ks), strict=True)
        ax.errorbar(ks, mean, yerr=[lo, hi], marker="o", capsize=3, label=SET_LABELS.get(name))
    ax.set_xscale("log")
    ax.set_xticks([5, 10, 20, 30, 40, 60])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training images per class")
    ax.set_ylabel("validation accuracy (unseen objects)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Accuracy against images per class (mean, min-max over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def plot_size_backbone(config_runs: list[dict], time_runs: list[dict], out: Path) -> Path:
    """Left: accuracy per configuration and set. Right: seconds per configuration."""
    rows = [r for r in config_runs if r["experiment"] == "config"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(sets)
    for j, name in enumerate(sets):
        vals = [
            stats([r["accuracy"] for r in rows if r["set"] == name and r["config"] == c])
            for c in configs
        ]
        mean, lo, hi = zip(*vals, strict=True)
        x = np.arange(len(configs)) + (j - (len(sets) - 1) / 2) * width
        ax.bar(x, mean, width, yerr=[lo, hi], capsize=2, label=SET_LABELS.get(name))
    ax.set_xticks(range(len(configs)), configs, rotation=20)
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0.3, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title("Accuracy per backbone, image size, resizing (mean, min-max)", fontsize=10)

    times = {}
    for r in time_runs:
        if r["experiment"] == "config":
            t = r["extract_seconds"] * 2 / r["extract_passes"] + r["head_seconds"]
            times.setdefault(r["config"], []).append(t)
    names = [c for c in configs if c in times]
    ax_t.barh(names, [float(np.median(times[c])) for c in names], color="tab:gray")
    ax_t.invert_yaxis()
    ax_t.set_xlabel("seconds (120 images x 2 passes, 40 head epochs)")
    ax_t.set_title(f"Training time on the CPU ({cpu_label(time_runs)})", fontsize=10)
    ax_t.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--per_class", type=Path, default=RESULTS / "bench_recipe_choices_per_class.json"
    )
    parser.add_argument("--configs", type=Path, default=RESULTS / "bench_recipe_choices_gpu.json")
    parser.add_argument(
        "--times", type=Path, default=RESULTS / "bench_recipe_choices_cpu_times.json"
    )
    parser.add_argument(
        "--head", default="mlp_d0.2_e40_lr3e-3", help="head variant of the images-per-class plot"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(
        plot_images_per_class(
            load_runs(args.per_class), args.head, args.out / "images_per_class.png"
        )
    )
    print(
        plot_size_backbone(
            load_runs(args.configs), load_runs(args.times), args.out / "size_backbone.png"
        )
    )


if __name__ == "__main__":
    main()
