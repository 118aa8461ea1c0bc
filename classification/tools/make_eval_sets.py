"""Build evaluation sets that are not shipped, to check that the defaults hold beyond the sample data.

The shipped ``objects`` set is one kind of data. The defaults (training recipe, image size,
resizing, backbone) are also judged on data we do not have, so the benchmarks measure them on
these sets as well, each with unseen object instances in validation:

- ``animals_photo``: bird, fish, insect, mammal; one animal (photo cut-outs) covering a quarter to
  two thirds of a 320x240 frame cropped from a landscape photo; 60 training and 30 validation
  images per class (like a small set of real animal photos: 240 / 120 images).
- ``animals_busy``: bird, fish, insect, mammal; one animal covering a quarter to two thirds of
  the frame on a busy background (a photo crop with 4-8 unrelated small objects scattered on it).
- ``objects_small_gray``: the sample classes (apple, citrus, flower, tool) as 64x48 grayscale
  images; other validation objects than the shipped set.
- ``objects_large``: the sample classes with 60 training images per class (for the
  images-per-class experiment), other validation objects than the shipped set.
- ``objects_multilabel_other``: multi-label like the shipped ``objects_multilabel`` (1-3 objects
  of distinct classes per image, ``images/`` + ``labels.csv``), other validation objects.
- ``animals_multilabel``: multi-label with 1-3 animals (bird, fish, insect, mammal) per image.

Same sources and composition as ``make_sample_data.py`` (Debian's tuxpaint-stamps-default and
mate-backgrounds); class-folder layout ``<set>/{train,valid}/<class>/*.jpg``, or ``images/`` +
``labels.csv`` (with an ``is_valid`` column) for the multi-label sets. The output is not
committed: it goes to ``data/eval_sets`` (ignored by git) unless ``--out`` says otherwise.

    python classification/tools/make_eval_sets.py [--out DIR] [--seed N] [--only SET ...]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sample_data as msd  # noqa: E402

DEFAULT_OUT = msd.REPO / "data" / "eval_sets"
SEED = 7  # not the sample data's seed: other crops, jitter and placements

ANIMAL_STAMPS = {
    "bird": ["animals/birds/**/*.png"],
    "fish": ["animals/fish/**/*.png"],
    "insect": ["animals/insects/**/*.png"],
    "mammal": ["animals/mammals/**/*.png"],
}
# Small unrelated objects scattered on the background of animals_busy.
CLUTTER_STAMPS = [
    "symbols/**/*.png",
    "hobbies/music/**/*.png",
    "household/dishes/**/*.png",
    "clothes/hats/**/*.png",
    "space/**/*.png",
    "sports/**/*.png",
]
CLUTTER_COUNT = (4, 8)  # objects per image, inclusive
CLUTTER_AREA = (0.015, 0.05)  # each one's box as a fraction of the frame
SMALL_SIZE = (64, 48)  # (width, height) of objects_small_gray


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: its classes' stamp patterns, images per class and split, rendering."""

    classes: dict[str, list[str]]
    per_class: dict[str, int]
    holdout_at: int  # validation objects: sorted index i with i % 4 == holdout_at
    busy: bool = False
    small_gray: bool = False
    multilabel: bool = False  # per_class then counts images of 1-3 objects, not per class


EVAL_SETS = {
    "animals_photo": EvalSet(ANIMAL_STAMPS, {"train": 60, "valid": 30}, holdout_at=2),
    "animals_busy": EvalSet(ANIMAL_STAMPS, {"train": 40, "valid": 15}, holdout_at=1, busy=True),
    "objects_small_gray": EvalSet(
        msd.CLASS_STAMPS, {"train": 40, "valid": 15}, holdout_at=0, small_gray=True
    ),
    "objects_large": EvalSet(msd.CLASS_STAMPS, {"train": 60, "valid": 15}, holdout_at=0),
    "objects_multilabel_other": EvalSet(
        msd.CLASS_STAMPS, {"train": 120, "valid": 60}, holdout_at=0, multilabel=True
    ),
    "animals_multilabel": EvalSet(
        ANIMAL_STAMPS, {"train": 120, "valid": 60}, holdout_at=1, multilabel=True
    ),
}


def split_objects(stamps: list[str], holdout_at: int) -> dict[str, list[str]]:
    """Split one class's sorted stamps into training and held-out (validation-only) objects."""
    valid = [s for i, s in enumerate(stamps) if i % msd.HOLDOUT_EVERY == holdout_at]
    return {"train": [s for s in stamps if s not in valid], "valid": valid}


def plan_multilabel(name: str, spec: EvalSet, seed: int) -> list[msd.Item]:
    """Items ``images/image_NNNN.jpg`` with 1-3 objects of distinct classes (as in the shipped
    multi-label set); the first ``per_class["train"]`` are for training, the rest validation."""
    classes = sorted(spec.classes)
    objects = {c: split_objects(msd.find_stamps(spec.classes[c]), spec.holdout_at) for c in classes}
    items = []
    for i in range(spec.per_class["train"] + spec.per_class["valid"]):
        key = f"{name}/{i:04d}"
        rng = msd.rng_for(key + "/plan", seed)
        is_valid = i >= spec.per_class["train"]
        split = "valid" if is_valid else "train"
        n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
        labels = sorted(rng.choice(classes, size=n, replace=False).tolist())
        stamps = [str(rng.choice(objects[c][split])) for c in labels]
        items.append(msd.Item(f"images/image_{i + 1:04d}.jpg", key, stamps, labels, is_valid))
    return items


def plan(name: str, spec: EvalSet, seed: int = SEED) -> list[msd.Item]:
    """Items ``<split>/<class>/<class>_NNNN.jpg``, cycling over each split's objects (or, for a
    multi-label set, ``plan_multilabel``)."""
    if spec.multilabel:
        return plan_multilabel(name, spec, seed)
    items = []
    for cls in sorted(spec.classes):
        objects = split_objects(msd.find_stamps(spec.classes[cls]), spec.holdout_at)
        start = 0
        for split in ("train", "valid"):
            pool = objects[split]
            for j in range(spec.per_class[split]):
                file_name = f"{cls}_{start + j + 1:04d}"
                items.append(
                    msd.Item(
                        path=f"{split}/{cls}/{file_name}.jpg",
                        key=f"{name}/{file_name}",
                        stamps=[pool[j % len(pool)]],
                        labels=[cls],
                        is_valid=split == "valid",
                    )
                )
            start += spec.per_class[split]
    return items


def paste_clutter(rng: np.random.Generator, im: Image.Image, stamps: list[Image.Image]) -> None:
    """Paste small ``stamps`` anywhere on ``im`` (overlaps allowed), in place."""
    frame_area = im.width * im.height
    for stamp in stamps:
        stamp = msd.jitter_stamp(rng, stamp)
        scale = np.sqrt(rng.uniform(*CLUTTER_AREA) * frame_area / (stamp.width * stamp.height))
        size = (max(2, round(stamp.width * scale)), max(2, round(stamp.height * scale)))
        x = round(rng.uniform(-0.2 * size[0], im.width - 0.8 * size[0]))
        y = round(rng.uniform(-0.2 * size[1], im.height - 0.8 * size[1]))
        obj = stamp.resize(size, Image.BICUBIC)
        im.paste(obj.convert("RGB"), (x, y), obj.getchannel("A"))


class Renderer:
    """Renders items of one set; caches stamps and backgrounds."""

    def __init__(self, spec: EvalSet, seed: int):
        self.spec, self.seed = spec, seed
        self.backgrounds = msd.load_backgrounds()
        self.cache: dict[str, Image.Image] = {}
        self.clutter = msd.find_stamps(CLUTTER_STAMPS) if spec.busy else []

    def stamp(self, rel: str) -> Image.Image:
        if rel not in self.cache:
            self.cache[rel] = msd.load_stamp(rel)
        return self.cache[rel]

    def __call__(self, item: msd.Item) -> Image.Image:
        rng = msd.rng_for(item.key, self.seed)
        im = msd.random_crop(rng, self.backgrounds[rng.integers(len(self.backgrounds))])
        if self.spec.busy:
            n = int(rng.integers(CLUTTER_COUNT[0], CLUTTER_COUNT[1] + 1))
            picks = rng.choice(len(self.clutter), size=n, replace=False)
            paste_clutter(rng, im, [self.stamp(self.clutter[i]) for i in picks])
        im = msd.paste_objects(rng, im, [self.stamp(rel) for rel in item.stamps])
        if self.spec.small_gray:
            im = im.convert("L").resize(SMALL_SIZE, Image.LANCZOS)
        return im


def eval_set_path(name: str, out: Path = DEFAULT_OUT) -> Path:
    """Folder of evaluation set ``name``; exits with the command to build it when missing."""
    folder = Path(out) / name
    if not ((folder / "valid").is_dir() or (folder / "labels.csv").is_file()):
        sys.exit(
            f"Evaluation set '{name}' is not in {out}. Build it with:\n"
            f"  python classification/tools/make_eval_sets.py --out {out}"
        )
    return folder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--only", nargs="+", choices=list(EVAL_SETS), default=list(EVAL_SETS), metavar="SET"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    msd.check_packages()
    plans = {name: plan(name, EVAL_SETS[name], args.seed) for name in args.only}
    with tqdm(total=sum(map(len, plans.values())), unit="image") as pbar:
        for name, items in plans.items():
            pbar.set_description(name)
            render = Renderer(EVAL_SETS[name], args.seed)
            folder = msd.write_set(args.out, name, items, render, pbar)
            n_valid = sum(item.is_valid for item in items)
            tqdm.write(f"{folder}: {len(items)} images, {n_valid} for validation")


if __name__ == "__main__":
    main()
