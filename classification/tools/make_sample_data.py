"""Regenerate the shipped sample data in ``utils_cv/classification/sample_data/``.

Pastes Tux Paint photo stamps (PNG cut-outs with alpha) onto random crops of background photos
(MATE nature wallpapers, scikit-image and scikit-learn sample images) and writes RGB JPEGs.
Validation images use held-out source objects, so they show objects never seen in training.

Needs the Debian packages ``tuxpaint-stamps-default`` and ``mate-backgrounds``; the output is
committed, so CI never runs this. The output is deterministic for a given ``--seed`` (and given
Pillow / NumPy / package versions). Every image draws its random numbers from its own generator,
keyed by its name, so a tiny set is a byte-identical subset of its full set.

    python classification/tools/make_sample_data.py [--out DIR] [--seed N] [--only SET ...]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "utils_cv" / "classification" / "sample_data"
STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
MATE_DIR = Path("/usr/share/backgrounds/mate/nature")
APT_COMMAND = "sudo apt-get install tuxpaint-stamps-default mate-backgrounds"

FRAME = (320, 240)  # output (width, height) in pixels, 4:3
JPEG_QUALITY = 85
SEED = 42
GRAY_PROB = 0.05  # share of images turned grayscale (still saved as RGB)
SOURCE_RES = (45, 90)  # stamps are first resampled to this sqrt(w*h) range, in pixels
HOLDOUT_EVERY, HOLDOUT_AT = 4, 2  # sorted objects i with i % 4 == 2 are validation-only

# Glob patterns under STAMPS_DIR, per class.
CLASS_STAMPS = {
    "apple": ["food/fruit/apple_*.png"],
    "citrus": [
        "food/fruit/orange*.png",
        "food/fruit/mandarine.png",
        "food/fruit/lemon.png",
        "food/fruit/sliced_orange.png",
        "food/fruit/sliced_lime.png",
    ],
    "flower": ["plants/flowers/**/*.png"],
    "tool": [
        "household/tools/wrench*.png",
        "household/tools/plyers.png",
        "household/tools/saw.png",
        "household/tools/hammer.png",
        "household/tools/mallet_metal.png",
        "household/tools/measuring_tape.png",
        "household/tools/paintbrush_large.png",
        "household/arttools/scissors_*.png",
    ],
}
CLASSES = sorted(CLASS_STAMPS)

# Objects of none of the classes, for hard negatives. Left out on purpose: apple- or
# orange-like fruit (mango, apricots, pomegranate), tool-like objects (nutcracker, spade,
# toolbox, cement mixer) and drawings (pizza).
NEGATIVE_STAMPS = [
    "food/vegetables/*.png",
    "food/nuts/*.png",
    "food/spices/ginger.png",
    "food/fruit/avocado.png",
    "food/fruit/banana.png",
    "food/fruit/grapes.png",
    "food/fruit/kiwi.png",
    "food/fruit/pear.png",
    "food/fruit/pineapple.png",
    "food/fruit/Cherry_Stella.png",
    "food/fruit/strawberry.png",
    "household/dishes/*.png",
    "household/dishes/utensils/pepper_grinder.png",
    "household/kettle.png",
    "household/key.png",
    "household/rubberduck.png",
    "household/Lightbulb.png",
    "household/garbagecan.png",
    "household/arttools/highlighter.png",
    "household/arttools/pen_dryerase.png",
    "plants/mushrooms/*.png",
    "plants/trees/*.png",
    "plants/lavender.png",
    "plants/thyme.png",
]
SKIP_VARIANTS = ("_mirror", "_flip", "_back")

# Backgrounds that show none of the classes (FreshFlower, Garden, LadyBird, TwoWings and
# YellowFlower show flowers; skimage's camera shows a camera on a tripod).
MATE_BACKGROUNDS = ["Aqua", "Blinds", "Dune", "GreenMeadow", "RainDrops", "Storm", "Wood"]
SKIMAGE_BACKGROUNDS = [
    "astronaut",
    "brick",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
]
SKLEARN_BACKGROUNDS = ["china.jpg"]

# Set sizes. Tiny sets are the first images of their full set.
OBJECTS_PER_CLASS = {"train": 30, "valid": 10}
OBJECTS_TINY_PER_CLASS = {"train": 4, "valid": 2}
MULTILABEL_COUNT, MULTILABEL_TINY_COUNT = 120, 20
NEGATIVES_COUNT, NEGATIVES_TINY_COUNT = 60, 10
SETS = [
    "objects",
    "objects_tiny",
    "objects_multilabel",
    "objects_multilabel_tiny",
    "negatives",
    "negatives_tiny",
]

# Bounding-box area of an object as a fraction of the frame, by number of objects in the image.
AREA_RANGE = {1: (0.25, 0.67), 2: (0.15, 0.3), 3: (0.1, 0.2)}


@dataclass
class Item:
    """One output image: ``path`` relative to its set folder, the stamps to paste, its labels."""

    path: str
    key: str  # seeds the image's random generator
    stamps: list[str] = field(default_factory=list)  # paths relative to STAMPS_DIR
    labels: list[str] = field(default_factory=list)
    is_valid: bool = False


# --- sources -------------------------------------------------------------------------


def check_packages() -> None:
    """Exit with the apt-get command to run when the stamp or background folders are missing."""
    missing = [str(d) for d in (STAMPS_DIR, MATE_DIR) if not d.is_dir()]
    if missing:
        sys.exit(
            f"Missing {', '.join(missing)}: the Debian packages tuxpaint-stamps-default and "
            f"mate-backgrounds are needed to regenerate the sample data.\n"
            f"Install them with:\n  {APT_COMMAND}"
        )


def is_usable_stamp(rel: str) -> bool:
    """False for cartoon stamps and mirrored / flipped / back-side variants of ``rel``."""
    path = Path(rel)
    return "cartoon" not in path.parts[:-1] and not any(v in path.stem for v in SKIP_VARIANTS)


def find_stamps(patterns: list[str]) -> list[str]:
    """Stamp PNGs matching glob ``patterns``, as paths relative to STAMPS_DIR, sorted by name."""
    rels = set()
    for pattern in patterns:
        matches = [p.relative_to(STAMPS_DIR).as_posix() for p in STAMPS_DIR.glob(pattern)]
        if not matches:
            sys.exit(f"No stamp matches {STAMPS_DIR / pattern}. Reinstall with:\n  {APT_COMMAND}")
        rels.update(m for m in matches if is_usable_stamp(m))
    return sorted(rels, key=lambda r: (Path(r).stem.lower(), r))


def split_objects(stamps: list[str]) -> dict[str, list[str]]:
    """Split one class's sorted stamps into train and held-out (validation-only) objects."""
    valid = [s for i, s in enumerate(stamps) if i % HOLDOUT_EVERY == HOLDOUT_AT]
    return {"train": [s for s in stamps if s not in valid], "valid": valid}


def class_objects() -> dict[str, dict[str, list[str]]]:
    """``{class: {"train": [stamp, ...], "valid": [stamp, ...]}}``."""
    return {c: split_objects(find_stamps(CLASS_STAMPS[c])) for c in CLASSES}


def shrink(im: Image.Image, short_side: int = 720) -> Image.Image:
    """``im`` as RGB, downscaled so its shorter side is at most ``short_side`` pixels."""
    im = im.convert("RGB")
    scale = short_side / min(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    return im


def load_backgrounds() -> list[Image.Image]:
    """The background photos as RGB images (grayscale ones converted), in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    ims = []
    for name in MATE_BACKGROUNDS:
        with Image.open(MATE_DIR / f"{name}.jpg") as im:
            im.draft("RGB", (im.width // 2, im.height // 2))
            ims.append(shrink(im))
    ims += [shrink(Image.fromarray(getattr(skimage.data, n)())) for n in SKIMAGE_BACKGROUNDS]
    ims += [shrink(Image.fromarray(load_sample_image(n))) for n in SKLEARN_BACKGROUNDS]
    return ims


def decontaminate(im: Image.Image) -> Image.Image:
    """RGBA ``im``, each not fully opaque pixel recoloured like the nearest opaque one.

    Stamp edges were cut from light backgrounds; without this they leave a pale halo.
    """
    from scipy import ndimage

    arr = np.asarray(im)
    solid = arr[..., 3] == 255
    if not solid.any():
        return im
    _, (iy, ix) = ndimage.distance_transform_edt(~solid, return_indices=True)
    return Image.fromarray(np.dstack([arr[..., :3][iy, ix], arr[..., 3]]), "RGBA")


def load_stamp(rel: str) -> Image.Image:
    """Stamp ``rel`` as RGBA without edge halo, cropped to the bounding box of its opaque pixels."""
    with Image.open(STAMPS_DIR / rel) as im:
        im = decontaminate(im.convert("RGBA"))
    return im.crop(im.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox())


# --- composition ---------------------------------------------------------------------


def rng_for(key: str, seed: int) -> np.random.Generator:
    """Random generator of the image named ``key``, independent of every other image."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def random_crop(rng: np.random.Generator, im: Image.Image) -> Image.Image:
    """A random 4:3 crop of ``im`` (45-100% of the largest one), resized to FRAME, maybe flipped."""
    aspect = FRAME[0] / FRAME[1]
    max_w = min(im.width, im.height * aspect)
    min_w = min(max_w, max(0.45 * max_w, 0.8 * FRAME[0]))
    w = rng.uniform(min_w, max_w)
    h = w / aspect
    x, y = rng.uniform(0, im.width - w), rng.uniform(0, im.height - h)
    crop = im.resize(FRAME, Image.LANCZOS, box=(x, y, x + w, y + h))
    return ImageOps.mirror(crop) if rng.random() < 0.5 else crop


def jitter_stamp(rng: np.random.Generator, stamp: Image.Image) -> Image.Image:
    """``stamp`` resampled to a random resolution, colour-jittered, rotated ±30°, maybe flipped.

    The resampling gives every class the same range of sharpness, whatever the stamp's size.
    Returns RGBA cropped to the opaque pixels.
    """
    scale = min(1.0, rng.uniform(*SOURCE_RES) / np.sqrt(stamp.width * stamp.height))
    size = (max(1, round(stamp.width * scale)), max(1, round(stamp.height * scale)))
    stamp = stamp.resize(size, Image.LANCZOS)
    rgb, alpha = stamp.convert("RGB"), stamp.getchannel("A")
    for enhance, (lo, hi) in [
        (ImageEnhance.Brightness, (0.8, 1.2)),
        (ImageEnhance.Contrast, (0.85, 1.15)),
        (ImageEnhance.Color, (0.8, 1.2)),
    ]:
        rgb = enhance(rgb).enhance(rng.uniform(lo, hi))
    stamp = Image.merge("RGBA", (*rgb.split(), alpha))
    stamp = stamp.rotate(rng.uniform(-30, 30), Image.BICUBIC, expand=True)
    if rng.random() < 0.5:
        stamp = ImageOps.mirror(stamp)
    return stamp.crop(stamp.getchannel("A").getbbox())


def fit_scale(rng: np.random.Generator, stamp: Image.Image, n_objects: int) -> float:
    """Scale giving ``stamp``'s box a random share of the frame (AREA_RANGE), capped to fit."""
    area = rng.uniform(*AREA_RANGE[n_objects]) * FRAME[0] * FRAME[1]
    scale = np.sqrt(area / (stamp.width * stamp.height))
    return min(scale, 0.95 * FRAME[0] / stamp.width, 0.95 * FRAME[1] / stamp.height)


def overlap(a: tuple, b: tuple) -> float:
    """Intersection area of boxes ``a`` and ``b`` (x0, y0, x1, y1) over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def place(
    rng: np.random.Generator, size: tuple, rects: list, margin: float, max_overlap: float = 0.1
) -> tuple | None:
    """Top-left corner (x, y) for a box of ``size`` (w, h) in pixels.

    The box overlaps none of ``rects`` by more than ``max_overlap`` (see ``overlap``).

    It may stick out of the frame by ``margin`` of its width and height. Returns None when 200
    random tries fail.
    """
    w, h = size
    for _ in range(200):
        x = round(rng.uniform(-margin * w, FRAME[0] - (1 - margin) * w))
        y = round(rng.uniform(-margin * h, FRAME[1] - (1 - margin) * h))
        rect = (x, y, x + w, y + h)
        if all(overlap(rect, r) <= max_overlap for r in rects):
            return x, y
    return None


def paste_objects(
    rng: np.random.Generator, im: Image.Image, stamps: list[Image.Image]
) -> Image.Image:
    """Paste ``stamps`` (RGBA) onto ``im`` at random scales and places, barely overlapping."""
    rects = []
    for stamp in stamps:
        stamp = jitter_stamp(rng, stamp)
        scale = fit_scale(rng, stamp, len(stamps))
        for _ in range(20):
            size = (max(2, round(stamp.width * scale)), max(2, round(stamp.height * scale)))
            xy = place(rng, size, rects, margin=0.1 if len(stamps) == 1 else 0.0)
            if xy is not None:
                break
            scale *= 0.85  # no room: try smaller
        else:
            raise RuntimeError("Could not place an object without overlap.")
        obj = stamp.resize(size, Image.BICUBIC)
        radius = max(0.6, 0.35 * size[0] / stamp.width)  # smooth the upscaled, jagged cut edge
        alpha = obj.getchannel("A").filter(ImageFilter.GaussianBlur(radius))
        im.paste(obj.convert("RGB"), xy, alpha)
        rects.append((*xy, xy[0] + size[0], xy[1] + size[1]))
    return im


def render(item: Item, backgrounds: list, stamp_cache: dict, seed: int) -> Image.Image:
    """The RGB image of ``item``: a background crop with its stamps pasted on."""
    rng = rng_for(item.key, seed)
    im = random_crop(rng, backgrounds[rng.integers(len(backgrounds))])
    for rel in item.stamps:
        if rel not in stamp_cache:
            stamp_cache[rel] = load_stamp(rel)
    stamps = [stamp_cache[rel] for rel in item.stamps]
    im = paste_objects(rng, im, stamps)
    if rng.random() < GRAY_PROB:
        im = im.convert("L").convert("RGB")
    return im


# --- plans: which images each set holds --------------------------------------------


def plan_objects(objects: dict, per_class: dict) -> list[Item]:
    """Single-label items ``<split>/<class>/<class>_NNNN.jpg``, cycling over each split's objects.

    Numbering continues from train into valid, so file names are unique across splits; the
    first ``per_class[split]`` items of each class and split are kept.
    """
    items = []
    for cls in CLASSES:
        for split, start in (("train", 0), ("valid", OBJECTS_PER_CLASS["train"])):
            pool = objects[cls][split]
            for j in range(per_class[split]):
                name = f"{cls}_{start + j + 1:04d}"
                items.append(
                    Item(
                        path=f"{split}/{cls}/{name}.jpg",
                        key=f"objects/{name}",
                        stamps=[pool[j % len(pool)]],
                        labels=[cls],
                        is_valid=split == "valid",
                    )
                )
    return items


def plan_multilabel(objects: dict, count: int, seed: int) -> list[Item]:
    """Items ``images/image_NNNN.jpg`` with 1-3 objects of distinct classes; every 4th is valid."""
    items = []
    for i in range(count):
        key = f"objects_multilabel/{i:04d}"
        rng = rng_for(key + "/plan", seed)
        is_valid = i % 4 == 3
        split = "valid" if is_valid else "train"
        n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
        classes = sorted(rng.choice(CLASSES, size=n, replace=False).tolist())
        stamps = [str(rng.choice(objects[c][split])) for c in classes]
        items.append(Item(f"images/image_{i + 1:04d}.jpg", key, stamps, classes, is_valid))
    return items


def plan_negatives(count: int, seed: int) -> list[Item]:
    """Items ``negative_NNNN.jpg``: every 3rd a bare background, the others 1-2 other objects."""
    others = find_stamps(NEGATIVE_STAMPS)
    items = []
    for i in range(count):
        key = f"negatives/{i:04d}"
        rng = rng_for(key + "/plan", seed)
        n = 0 if i % 3 == 0 else int(rng.integers(1, 3))
        stamps = [str(s) for s in rng.choice(others, size=n, replace=False)]
        items.append(Item(f"negative_{i + 1:04d}.jpg", key, stamps))
    return items


def plan(name: str, objects: dict, seed: int) -> list[Item]:
    """The items of sample set ``name``."""
    if name == "objects":
        return plan_objects(objects, OBJECTS_PER_CLASS)
    if name == "objects_tiny":
        return plan_objects(objects, OBJECTS_TINY_PER_CLASS)
    if name == "objects_multilabel":
        return plan_multilabel(objects, MULTILABEL_COUNT, seed)
    if name == "objects_multilabel_tiny":
        return plan_multilabel(objects, MULTILABEL_TINY_COUNT, seed)
    if name == "negatives":
        return plan_negatives(NEGATIVES_COUNT, seed)
    if name == "negatives_tiny":
        return plan_negatives(NEGATIVES_TINY_COUNT, seed)
    raise ValueError(f"Unknown set '{name}'; choose from {', '.join(SETS)}.")


# --- output --------------------------------------------------------------------------


def write_labels_csv(path: Path, items: list[Item]) -> None:
    """``labels.csv`` with header ``filename,labels,is_valid``; labels sorted, space-separated."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", "labels", "is_valid"])
        for item in items:
            writer.writerow([Path(item.path).name, " ".join(item.labels), item.is_valid])


def write_set(out: Path, name: str, items: list[Item], render_fn, pbar) -> Path:
    """Replace folder ``out/name`` with the rendered ``items``; return the folder.

    A set laid out as ``images/`` (multi-label) also gets its ``labels.csv``.
    """
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    for item in items:
        dst = folder / item.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        render_fn(item).save(dst, "JPEG", quality=JPEG_QUALITY, optimize=True)
        pbar.update()
    if items and items[0].path.startswith("images/"):
        write_labels_csv(folder / "labels.csv", items)
    return folder


def folder_size(folder: Path) -> int:
    """Total bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def summary(out: Path, plans: dict, objects: dict) -> str:
    """Human-readable counts, validation objects and sizes on disk."""
    lines = [f"Sample data in {out}:"]
    for name, items in plans.items():
        n_valid = sum(i.is_valid for i in items)
        valid = f", {n_valid} valid" if n_valid else ""
        size = folder_size(out / name) / 1e6
        lines.append(f"  {name:24s} {len(items):4d} images{valid}, {size:.2f} MB")
    lines.append("Held-out (validation-only) objects:")
    for cls in CLASSES:
        names = ", ".join(Path(s).stem for s in objects[cls]["valid"])
        lines.append(f"  {cls:7s} {len(objects[cls]['train'])} train objects; held out: {names}")
    total = sum(folder_size(out / n) for n in SETS if (out / n).is_dir()) / 1e6
    lines.append(f"Total size of all sets in {out}: {total:.2f} MB")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options: ``--out``, ``--seed``, ``--only``."""
    parser = argparse.ArgumentParser(
        description="Regenerate the sample data sets from Tux Paint stamps and background photos.",
        epilog=f"Needs the Debian packages; install them with:\n  {APT_COMMAND}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SETS,
        default=SETS,
        metavar="SET",
        help=f"sets to (re)build, any of: {', '.join(SETS)} (default: all)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    check_packages()
    objects = class_objects()
    backgrounds = load_backgrounds()
    plans = {name: plan(name, objects, args.seed) for name in args.only}
    stamp_cache = {}

    def render_fn(item):
        return render(item, backgrounds, stamp_cache, args.seed)

    with tqdm(total=sum(map(len, plans.values())), unit="image") as pbar:
        for name, items in plans.items():
            pbar.set_description(name)
            write_set(args.out, name, items, render_fn, pbar)
    print(summary(args.out, plans, objects))


if __name__ == "__main__":
    main()
