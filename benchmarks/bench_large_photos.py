"""Large photos: feature extraction speed and peak memory, 4000 x 3000 JPEGs against 640 x 480.

Builds ``--n`` phone-sized photos (default 200 at 4000 x 3000, JPEG quality 90) and the same
photos at 640 x 480 from the shipped sample images (upscaled crops; a phone photo has more
detail, which makes our versions cheaper to decode than real ones, so the ratio here is a lower
bound of the draft-mode gain), then runs what training runs before the head: the data loader
(decode, resize to the specification, normalise) and the frozen EfficientNet-Lite0 body, over
all images once, for three settings:

- ``small``: the 640 x 480 photos;
- ``large``: the 4000 x 3000 photos with JPEG draft-mode decoding (the default);
- ``large_full_decode``: the 4000 x 3000 photos decoded at full size (draft mode off), as
  before.

Each setting runs in its own process (measured one after another, ``--repeats`` rounds with the
order rotating), which reports images per second and its peak resident memory
(``ru_maxrss``). Targets (issue "Your own images, whatever their shape"): large within 2x of
small throughput, peak memory independent of the photo size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import base_parser, finish, load_snapshot, markdown_table, median, ratio

SETTINGS = ("small", "large", "large_full_decode")


def make_photos(src: Path, dst: Path, n: int, size: tuple[int, int]) -> Path:
    """``n`` JPEGs of ``size`` in two class folders, from the sample images (cropped, scaled)."""
    from PIL import Image

    from utils_cv.classification.data import get_image_files

    files = get_image_files(src)
    for i in range(n):
        with Image.open(files[i % len(files)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            box = (i % 7, i % 5, w - (i % 3), h - (i % 4))  # distinct crops of repeated images
            photo = im.crop(box).resize(size, Image.BICUBIC)
        folder = dst / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        photo.save(folder / f"{i:04d}.jpg", quality=90)
    return dst


CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from utils_cv.common import image_io
if sys.argv[2] == "full":
    _load = image_io.load_rgb
    image_io.load_rgb = lambda path, max_pixels=image_io.MAX_PIXELS, draft_size=None: _load(path, max_pixels)
    import utils_cv.classification.data as data_module
    data_module.load_rgb = image_io.load_rgb
from utils_cv.classification.data import get_dls
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import create_learner, extract_features
dls = get_dls(sys.argv[1], ModelSpec(), batch_size=16, valid_pct=0.2, transform=False,
              num_workers=0, device="cpu")
learn = create_learner(dls, ModelSpec(), record_train_metrics=False)
start = time.perf_counter()
x, _ = extract_features(learn, dls.train.new(shuffle=False, drop_last=False))
seconds = time.perf_counter() - start
print(json.dumps({"images": len(x), "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_setting(folder: Path, decode: str, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), decode, str(threads)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0], "bench_large_photos")
    parser.add_argument("--n", type=int, default=200, help="photos per size (default 200)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (default 2)")
    args = parser.parse_args(argv)
    from utils_cv.classification.data import sample_data_path

    loads = [load_snapshot()]
    with tempfile.TemporaryDirectory(prefix="bench_large_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        src = sample_data_path("objects") / "train"
        folders = {
            "small": make_photos(src, tmp / "small", args.n, (640, 480)),
            "large": make_photos(src, tmp / "large", args.n, (4000, 3000)),
        }
        print(f"built {2 * args.n} photos in {time.perf_counter() - start:.0f} s")
        runs = []
        for round_ in range(args.repeats):
            shift = round_ % len(SETTINGS)
            for name in SETTINGS[shift:] + SETTINGS[:shift]:
                folder = folders["small" if name == "small" else "large"]
                decode = "full" if name == "large_full_decode" else "draft"
                result = run_setting(folder, decode, args.threads)
                result.update(setting=name, round=round_)
                result["images_per_s"] = result["images"] / result["seconds"]
                print(json.dumps(result))
                runs.append(result)
    summary = []
    for name in SETTINGS:
        rows = [r for r in runs if r["setting"] == name]
        summary.append(
            {
                "setting": name,
                "images_per_s": median([r["images_per_s"] for r in rows]),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            }
        )
    small = summary[0]
    for row in summary:
        row["throughput_vs_small"] = ratio(row["images_per_s"], small["images_per_s"])
        row["memory_vs_small"] = ratio(row["peak_rss_mb"], small["peak_rss_mb"])
    columns = {
        "setting": ("setting", 0),
        "images/s": ("images_per_s", 1),
        "x small": ("throughput_vs_small", 2),
        "peak RSS MB": ("peak_rss_mb", 0),
        "memory x small": ("memory_vs_small", 2),
    }
    results = {"runs": runs, "summary": summary}
    finish(args, "bench_large_photos", results, markdown_table(summary, columns), loads, "cpu")


if __name__ == "__main__":
    main()
