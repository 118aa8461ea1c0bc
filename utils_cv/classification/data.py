"""Classification data: shipped sample sets, public dataset URLs, labels, data loaders."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from utils_cv.classification.labels import (
    LABELS_FILE,
    LabelsError,
    check_labels_csv,
    format_problems,
    labels_columns,
    labels_image_dir,
    read_labels_csv,
)
from utils_cv.classification.spec import ModelSpec
from utils_cv.common.image_io import IMAGE_EXTENSIONS, load_rgb

SAMPLE_DATA_DIR = Path(__file__).resolve().parent / "sample_data"


class Urls:
    """The original public datasets (zip archives); use ``unzip_url`` to fetch one when online."""

    base = "https://cvbp-secondary.z19.web.core.windows.net/datasets/image_classification"
    fridge_objects_path = f"{base}/fridgeObjects.zip"
    fridge_objects_watermark_path = f"{base}/fridgeObjectsWatermark.zip"
    fridge_objects_tiny_path = f"{base}/fridgeObjectsTiny.zip"
    fridge_objects_watermark_tiny_path = f"{base}/fridgeObjectsWatermarkTiny.zip"
    fridge_objects_negatives_path = f"{base}/fridgeObjectsNegative.zip"
    fridge_objects_negatives_tiny_path = f"{base}/fridgeObjectsNegativeTiny.zip"
    multilabel_fridge_objects_path = f"{base}/multilabelFridgeObjects.zip"
    multilabel_fridge_objects_watermark_path = f"{base}/multilabelFridgeObjectsWatermark.zip"
    multilabel_fridge_objects_tiny_path = f"{base}/multilabelFridgeObjectsTiny.zip"
    multilabel_fridge_objects_watermark_tiny_path = (
        f"{base}/multilabelFridgeObjectsWatermarkTiny.zip"
    )
    food_101_subset_path = f"{base}/food101Subset.zip"
    fashion_texture_path = f"{base}/fashionTexture.zip"
    flickr_logos_32_subset_path = f"{base}/flickrLogos32Subset.zip"
    lettuce_path = f"{base}/lettuce.zip"
    recycle_path = f"{base}/recycle_v3.zip"

    @classmethod
    def all(cls) -> list[str]:
        """Every dataset URL."""
        return [v for k, v in vars(cls).items() if k.endswith("_path")]


# Shipped sample sets (no download): name -> folder under sample_data/.
SAMPLE_DATASETS = {
    "objects": "objects",  # single-label, train/ and valid/ split by source object
    "objects_tiny": "objects_tiny",
    "objects_multilabel": "objects_multilabel",  # images/ + labels.csv (filename, labels, is_valid)
    "objects_multilabel_tiny": "objects_multilabel_tiny",
    "negatives": "negatives",  # photos with none of the classes
    "negatives_tiny": "negatives_tiny",
}


def sample_data_path(name: str = "objects") -> Path:
    """Folder of the shipped sample set ``name`` (one of ``SAMPLE_DATASETS``)."""
    if name not in SAMPLE_DATASETS:
        raise ValueError(
            f"Unknown sample set '{name}'. Choose one of: {', '.join(SAMPLE_DATASETS)}."
        )
    path = SAMPLE_DATA_DIR / SAMPLE_DATASETS[name]
    if not path.is_dir():
        raise FileNotFoundError(
            f"Sample set '{name}' is missing at {path}. Rebuild it with "
            f"`python classification/tools/make_sample_data.py`."
        )
    return path


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in model output order (offline, from torchvision)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


SKIPPED_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")


def is_skipped_name(name: str) -> bool:
    """True for hidden names (leading dot) and system clutter like ``__MACOSX``."""
    return name.startswith(".") or name in SKIPPED_NAMES


def is_inside(path: str | Path, root: str | Path) -> bool:
    """True when ``path``, with every link resolved, lies in ``root`` (also resolved)."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


@dataclass
class Walk:
    """What ``walk_files`` found: ``files`` (sorted), ``n_skipped`` hidden / system entries,
    and ``outside``: links to files or folders outside the root, not followed (sorted)."""

    files: list[Path]
    n_skipped: int = 0
    outside: list[Path] = field(default_factory=list)


def walk_files(folder: str | Path, root: str | Path | None = None, follow_links: bool = False):
    """Visible files under ``folder``, recursively, staying inside ``root`` (default: folder).

    Links whose target lies inside ``root`` are followed (once: link loops end); links that
    lead outside are listed in ``Walk.outside`` and not followed, unless ``follow_links``.
    Nothing is read or opened: named pipes and devices are files here, to be refused by the
    file check before any read.
    """
    folder = Path(folder)
    root = folder if root is None else Path(root)
    walk, seen = Walk([]), set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link loop
            dirs[:] = []
            continue
        seen.add(real)
        walk.n_skipped += sum(map(is_skipped_name, dirs)) + sum(map(is_skipped_name, names))

        def inside(name: str, here: str = here) -> bool:
            """False (and listed as outside) for a link out of ``root``; skipped names too."""
            full = Path(here, name)
            if is_skipped_name(name):
                return False
            if not follow_links and os.path.islink(full) and not is_inside(full, root):
                walk.outside.append(full)
                return False
            return True

        dirs[:] = [d for d in dirs if inside(d)]
        walk.files += [Path(here, n) for n in names if inside(n)]
    walk.files.sort()
    walk.outside.sort()
    return walk


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an image extension (any case)."""
    path = Path(path)
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not is_skipped_name(path.name)
        and path.is_file()
        and stat.S_ISREG(path.stat().st_mode)
    )


def get_image_files(
    folder: str | Path, recurse: bool = True, follow_links: bool = False
) -> list[Path]:
    """Sorted image files under ``folder``, skipping hidden files and folders
    (``.ipynb_checkpoints``), named pipes and devices, and links that lead outside ``folder``
    (unless ``follow_links``)."""
    folder = Path(folder)
    if recurse:
        files = walk_files(folder, follow_links=follow_links).files
    else:
        files = [
            p
            for p in sorted(folder.iterdir())
            if follow_links or not os.path.islink(p) or is_inside(p, folder)
        ]
    return [p for p in files if is_image_file(p)]


def is_data_multilabel(path: str | Path) -> bool:
    """True when ``path`` holds a ``labels.csv`` in which some image has more than one label.

    A folder of class folders is single-label. A labels.csv with one label per image is
    single-label too; use ``read_labels_csv`` to load it either way.
    """
    path = Path(path)
    csv = path / LABELS_FILE if path.is_dir() else path
    if not csv.is_file():
        return False
    df = read_labels_csv(csv)
    return bool((df["labels"].map(len) > 1).any())


def describe_split(path: str | Path) -> str:
    """How ``get_dls`` will split ``path``: 'folders', 'column' or 'random'."""
    path = Path(path)
    if (path / "train").is_dir() and (path / "valid").is_dir():
        return "folders"
    csv = path / LABELS_FILE
    if csv.is_file() and "is_valid" in labels_columns(csv):
        return "column"
    return "random"


def dataset_paths(dataset) -> list[Path]:
    """Image paths of a ``get_dls`` dataset (``dls.train_ds``, ``dls.valid_ds``), in its order:
    its items are paths for class folders and a DataFrame (column ``path``) for labels.csv."""
    items = dataset.items
    if hasattr(items, "columns"):
        items = items["path"]
    return [Path(p) for p in items]


def downsize_imagelist(
    im_paths: Sequence[str | Path], out_dir: str | Path, dim: int = 500, root: str | Path = None
) -> list[Path]:
    """Save copies of ``im_paths`` whose longer side is at most ``dim`` pixels into ``out_dir``.

    Keeps the folder structure relative to ``root`` (default: the common parent). Originals are
    never changed. Returns the new paths, in the order given.
    """
    from PIL import Image

    im_paths = [Path(p) for p in im_paths]
    out_dir = Path(out_dir)
    if root is None:
        import os

        root = Path(os.path.commonpath([p.parent for p in im_paths])) if im_paths else Path(".")
    root = Path(root)
    if out_dir.resolve() == root.resolve():
        raise ValueError(
            "out_dir must differ from the images' folder: originals are never overwritten."
        )
    out_paths = []
    for path in im_paths:
        dst = out_dir / path.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im = load_rgb(path)
        im.thumbnail((dim, dim), Image.BILINEAR)
        im.save(dst, quality=95) if dst.suffix.lower() in (".jpg", ".jpeg") else im.save(dst)
        out_paths.append(dst)
    return out_paths


# --- data loaders ----------------------------------------------------------------


def _rgb_image_block(draft_size: int | None = None):
    from fastai.vision.all import ImageBlock, PILImage

    class RGBImage(PILImage):
        """fastai image type that opens files with ``load_rgb`` (EXIF, alpha, 16-bit handled;
        JPEGs decoded at reduced scale down to ``draft_size``, as prediction does)."""

        @classmethod
        def create(cls, fn, **kwargs):
            if isinstance(fn, (str, Path)):
                return cls(load_rgb(fn, draft_size=draft_size))
            return super().create(fn, **kwargs)

    return ImageBlock(cls=RGBImage)


def spec_item_tfms(spec: ModelSpec) -> list:
    """fastai item transforms resizing as ``spec`` says: ``spec.resize_im``, centred for
    validation, at random positions for training ("crop" and "pad")."""
    import random

    from fastai.vision.all import RandTransform
    from PIL import Image

    class ResizeToSpec(RandTransform):
        order, split_idx = 1, None  # where fastai's Resize runs, on both splits

        def before_call(self, b, split_idx):
            self.pcts = (0.5, 0.5) if split_idx else (random.random(), random.random())

        def encodes(self, x):  # no annotation: plum cannot resolve this module's local names
            return spec.resize_im(x, self.pcts) if isinstance(x, Image.Image) else x

    return [ResizeToSpec()]


def spec_batch_tfms(spec: ModelSpec, transform: bool = True) -> list:
    """fastai batch transforms: augmentation (training batches only) and normalisation."""
    from fastai.vision.all import Normalize, aug_transforms

    tfms = aug_transforms() if transform else []
    for tfm in tfms:  # validation images go through exactly what prediction does
        tfm.before_call = _train_only(tfm)
    return [*tfms, Normalize.from_stats(list(spec.mean), list(spec.std))]


def _train_only(tfm):
    """``tfm.before_call`` that also switches ``tfm`` off on validation batches (fastai's
    affine transform otherwise resamples them through an identity grid)."""
    before_call = tfm.before_call

    def wrapped(b, split_idx=None):
        before_call(b, split_idx=split_idx)
        if split_idx:
            tfm.do = False

    return wrapped


def get_dls(
    path: str | Path,
    spec: ModelSpec | None = None,
    batch_size: int = 16,
    valid_pct: float = 0.2,
    seed: int = 42,
    transform: bool = True,
    multilabel: bool | None = None,
    files: Sequence[str | Path] | None = None,
    num_workers: int | None = None,
    device=None,
):
    """fastai DataLoaders for a folder of class folders, or ``images/`` + ``labels.csv``.

    spec : the model specification (image size, resize method, normalisation); default
    ``ModelSpec()``. The split is taken as given when ``path`` holds ``train/`` and ``valid/``
    folders or the labels.csv has an ``is_valid`` column; otherwise ``valid_pct`` of the images,
    drawn with ``seed``, are held out. ``files`` restricts training to those image paths (for
    example the good files of a data check). ``multilabel`` defaults to ``spec.multilabel``,
    then to ``is_data_multilabel(path)``; True on class folders gives each image its folder's
    label as a multi-label target (sigmoid outputs, an image may get none of the labels).
    ``transform`` turns training augmentation on.
    """
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        ColSplitter,
        DataBlock,
        GrandparentSplitter,
        MultiCategoryBlock,
        RandomSplitter,
        parent_label,
    )

    from utils_cv.common.gpu import db_num_workers, torch_device

    spec = ModelSpec() if spec is None else spec
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec should be a ModelSpec, got {type(spec).__name__}.")
    if multilabel is None:
        multilabel = spec.multilabel
    # absolute, links kept: a file reached through a link inside the folder keeps its class
    path = Path(os.path.abspath(path))
    if not path.is_dir():
        raise FileNotFoundError(f"Data folder not found: {path}")
    split = describe_split(path)
    csv = path / LABELS_FILE
    keep = None if files is None else {Path(os.path.abspath(f)) for f in files}
    item_tfms = spec_item_tfms(spec)
    batch_tfms = spec_batch_tfms(spec, transform)

    if csv.is_file():
        im_dir = labels_image_dir(path)
        df, problems = check_labels_csv(csv, im_dir, path)
        if problems and keep is None:  # with files (a data check's), its bad rows are left out
            raise LabelsError(format_problems(csv, problems))
        df["path"] = [os.path.abspath(p) for p in df["path"]]
        if keep is not None:
            df = df[[Path(p) in keep for p in df["path"]]].reset_index(drop=True)
            if keep and df.empty:
                raise ValueError(
                    f"files: none of the {len(keep)} given paths is listed in {csv} "
                    f"(for example {min(keep)})."
                )
        if multilabel is None:
            multilabel = bool((df["labels"].map(len) > 1).any())
        if not multilabel:
            df["labels"] = df["labels"].map(lambda labels: labels[0])
        splitter = ColSplitter("is_valid") if split == "column" else RandomSplitter(valid_pct, seed)
        block = DataBlock(
            blocks=(
                _rgb_image_block(spec.draft_size),
                MultiCategoryBlock if multilabel else CategoryBlock,
            ),
            get_x=ColReader("path"),
            get_y=ColReader("labels"),
            splitter=splitter,
            item_tfms=item_tfms,
            batch_tfms=batch_tfms,
        )
        source = df
    else:
        items = get_image_files(path) if keep is None else sorted(keep)
        outside = [p for p in items if not p.is_relative_to(path)]
        if outside:
            raise ValueError(
                f"files: {len(outside)} of the given paths are not in {path} "
                f"(for example {outside[0]}); relative paths are relative to the working directory."
            )
        if split == "folders":
            items = [p for p in items if p.relative_to(path).parts[0] in ("train", "valid")]
            splitter = GrandparentSplitter(train_name="train", valid_name="valid")
        else:
            splitter = RandomSplitter(valid_pct, seed)
        # multilabel=True: one label per image, learnt as independent yes/no decisions
        block = DataBlock(
            blocks=(
                _rgb_image_block(spec.draft_size),
                MultiCategoryBlock if multilabel else CategoryBlock,
            ),
            get_items=lambda _: items,
            get_y=(lambda p: [parent_label(p)]) if multilabel else parent_label,
            splitter=splitter,
            item_tfms=item_tfms,
            batch_tfms=batch_tfms,
        )
        source = path
    if len(source if csv.is_file() else items) == 0:
        among = " among the given files" if keep is not None else ""
        raise ValueError(f"No images to train on in {path}{among}.")
    if num_workers is None:
        num_workers = db_num_workers()
    return block.dataloaders(
        source,
        bs=batch_size,
        num_workers=num_workers,
        device=device if device is not None else torch_device(),
        seed=seed,
    )
