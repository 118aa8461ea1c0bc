"""Benchmark: how long ``check_dataset`` takes on 10,000 small images.

Builds ``--n`` JPEGs of 64-160 px (random crops of scikit-image sample photos, in ``--classes``
class folders, about 2% exact duplicates within a class; overlapping crops make near
duplicates) in a temporary folder, times ``check_dataset`` on
them for each ``--workers`` setting, prints a table and writes a JSON with the results and the
machine (CPU model, cores, load, Python / torch / Pillow / numpy versions).

    python benchmarks/bench_datacheck.py                      # 10,000 images, 1 and 2 threads
    python benchmarks/bench_datacheck.py --n 2000 --workers 2

Target: under a minute for 10,000 images on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import load_snapshot, machine_info
from PIL import Image

from utils_cv.classification.datacheck import check_dataset

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_datacheck.json"


def make_images(folder: Path, n: int, n_classes: int, seed: int = 0) -> float:
    """Write ``n`` small JPEGs into ``folder/class_XX/``; returns seconds taken."""
    from skimage import data

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)() for name in PHOTOS]
    written: dict[int, list[Path]] = {k: [] for k in range(n_classes)}
    for i in range(n):
        cls = i % n_classes
        cls_dir = folder / f"class_{cls:02d}"
        cls_dir.mkdir(parents=True, exist_ok=True)
        path = cls_dir / f"img_{i:05d}.jpg"
        earlier = written[cls]
        if earlier and rng.random() < 0.02:  # exact duplicate of an image of the same class
            shutil.copyfile(earlier[rng.integers(len(earlier))], path)
            continue
        photo = photos[i % len(photos)]
        side = int(rng.integers(64, 161))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[y : y + side, x : x + side])
        crop.save(path, quality=int(rng.integers(70, 95)))
        earlier.append(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of images")
    parser.add_argument("--classes", type=int, default=10, help="number of class folders")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="threads to try")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="result file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_datacheck_") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "out"
        build_s = make_images(data, args.n, args.classes)
        print(f"built {args.n:,} images in {build_s:.1f} s")
        runs = []
        for workers in args.workers:
            start = time.perf_counter()
            report = check_dataset(data, out_dir=out, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            runs.append(
                {
                    "images": args.n,
                    "workers": workers,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(args.n / seconds),
                    "good": len(report.good_files),
                    "issues": report.issues["reason"].value_counts().to_dict(),
                }
            )
    print(f"\n{'images':>8} {'workers':>8} {'seconds':>8} {'images/s':>9} {'good':>7}")
    for r in runs:
        print(
            f"{r['images']:>8,} {r['workers']:>8} {r['seconds']:>8.1f} "
            f"{r['images_per_s']:>9,} {r['good']:>7,}"
        )
    print(f"issues: {runs[-1]['issues']}")
    result = {"benchmark": "check_dataset", "build_seconds": round(build_s, 1), "runs": runs}
    result["machine"] = machine_info(torch.device("cpu"), torch.get_num_threads())
    result["load"] = load_snapshot()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
