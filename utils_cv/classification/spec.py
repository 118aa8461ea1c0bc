"""The model specification: everything between pixels and probabilities, in one record.

``ModelSpec`` says which backbone a model uses, how images are resized and normalised, which
classes it predicts, whether it is multi-label (and its threshold) and what its head is. It is
the single truth of a model from data to service:

- ``utils_cv.classification.data.get_dls`` builds the DataLoaders' transforms from it;
- ``utils_cv.classification.network.build_classifier`` builds the network from it;
- ``utils_cv.classification.saved`` writes it into ``model.json`` and reads it back, strictly
  validated (``spec_from_json``);
- every predictor (PyTorch, ONNX Runtime, the ``predict`` command, the scoring service)
  preprocesses with ``preprocess`` below, the same code the training data loader runs.

Defaults come from the backbone registry's record; any field can be overridden. A bad value
fails at construction with a ``SpecError`` naming the field and the accepted values.

This module needs only numpy and Pillow at import time (the scoring service and the ONNX
predictor use it without fastai).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

RESIZE_METHODS = ("squish", "crop", "pad")
HEADS = ("mlp", "linear")
# of model.json; version 1 files (before the specification) and version 2 files (before
# feature_stages) still load
FORMAT_VERSION = 3
MAX_FEATURE_STAGES = 4
MIN_IM_SIZE, MAX_IM_SIZE = 16, 2048
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 500  # characters
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_DROPOUT = 0.2  # measured: benchmarks/README.md, "Recipe choices"


class SpecError(ValueError):
    """A model specification field has an invalid value; the message names the field."""


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(name: str, value, accepted: str) -> SpecError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SpecError(f"ModelSpec field '{name}': {shown} is not valid; expected {accepted}.")


def _triple(name: str, value, accepted: str, check) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise _fail(name, value, accepted)
    if not all(check(v) for v in value):
        raise _fail(name, value, accepted)
    return tuple(value)


@dataclass(frozen=True)
class ModelSpec:
    """What a classifier is, besides its weights.

    backbone : a registered backbone (``list_backbones()``) or any timm architecture name.
    im_size : square input side in pixels (default: the backbone's), 16..2048.
    resize : how an image becomes im_size x im_size: "squish" (stretch the whole image),
        "crop" (the centre square at prediction; random squares when training) or "pad"
        (letterbox with ``pad_color``). Default: the backbone's.
    pad_color : RGB 0..255 of the padding for "pad".
    mean, std : per-channel normalisation of images scaled to 0..1 (default: the backbone's).
    classes : class names in output order (unique, non-empty); () until the data is known.
    multilabel : sigmoid outputs and one decision per class (True), or softmax (False);
        None until the data is known.
    threshold : probability at or above which a multi-label model predicts a class, 0..1.
    head : "mlp" (fastai's head with a 512-unit hidden layer) or "linear".
    dropout : dropout of the head, 0 <= p < 1.
    feature_stages : how many block stages before the backbone's final feature maps join
        them as features of the head (``backbones.StagesBody``), 0..4; 0: the final maps only.
        Default (None): decided with ``multilabel``: the backbone's ``multilabel_feature_stages``
        for multi-label data (2 for EfficientNet-Lite0), 0 for single-label data.
    """

    backbone: str = DEFAULT_BACKBONE
    im_size: int | None = None
    resize: str | None = None
    pad_color: tuple = (0, 0, 0)
    mean: tuple | None = None
    std: tuple | None = None
    classes: tuple = ()
    multilabel: bool | None = None
    threshold: float = 0.5
    head: str = "mlp"
    dropout: float = DEFAULT_DROPOUT
    feature_stages: int | None = None

    def __post_init__(self):
        from utils_cv.classification.backbones import get_backbone

        if not isinstance(self.backbone, str) or not self.backbone:
            raise _fail("backbone", self.backbone, "a backbone name (list_backbones())")
        try:
            record = get_backbone(self.backbone)
        except ValueError as err:
            raise SpecError(f"ModelSpec field 'backbone': {err}") from None
        set_ = object.__setattr__.__get__(self)
        set_("backbone", record.name)
        for name in ("im_size", "resize", "mean", "std"):
            if getattr(self, name) is None:
                set_(name, getattr(record, name))
        if not _is_int(self.im_size) or not MIN_IM_SIZE <= self.im_size <= MAX_IM_SIZE:
            raise _fail("im_size", self.im_size, f"a whole number {MIN_IM_SIZE}..{MAX_IM_SIZE}")
        set_("im_size", int(self.im_size))
        if self.resize not in RESIZE_METHODS:
            raise _fail("resize", self.resize, f"one of {', '.join(RESIZE_METHODS)}")
        set_(
            "pad_color",
            tuple(
                int(v)
                for v in _triple(
                    "pad_color",
                    self.pad_color,
                    "3 whole numbers 0..255 (R, G, B)",
                    lambda v: _is_int(v) and 0 <= v <= 255,
                )
            ),
        )
        finite = lambda v: _is_real(v) and math.isfinite(v)  # noqa: E731
        set_("mean", tuple(float(v) for v in _triple("mean", self.mean, "3 numbers", finite)))
        set_(
            "std",
            tuple(
                float(v)
                for v in _triple("std", self.std, "3 numbers > 0", lambda v: finite(v) and v > 0)
            ),
        )
        set_("classes", _check_classes(self.classes))
        if self.multilabel is not None and not isinstance(self.multilabel, bool):
            raise _fail("multilabel", self.multilabel, "True, False or None")
        if not _is_real(self.threshold) or not 0 <= self.threshold <= 1:
            raise _fail("threshold", self.threshold, "a number 0..1")
        set_("threshold", float(self.threshold))
        if self.head not in HEADS:
            raise _fail("head", self.head, f"one of {', '.join(HEADS)}")
        if not _is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise _fail("dropout", self.dropout, "a number with 0 <= dropout < 1")
        set_("dropout", float(self.dropout))
        stages = self.feature_stages
        if stages is None and self.multilabel is not None:
            stages = record.multilabel_feature_stages if self.multilabel else 0
        if stages is None:  # decided when the data (multilabel) is known
            return
        if not _is_int(stages) or not 0 <= stages <= MAX_FEATURE_STAGES:
            raise _fail("feature_stages", stages, f"None or a whole number 0..{MAX_FEATURE_STAGES}")
        if stages and record.split_stages is None:
            raise _fail(
                "feature_stages", stages, f"0: backbone '{record.name}' cannot join stage features"
            )
        set_("feature_stages", int(stages))

    # --- convenience ---------------------------------------------------------------------

    def replace(self, **changes) -> ModelSpec:
        """A copy with ``changes`` applied (validated like a new specification)."""
        return replace(self, **changes)

    def with_data(self, classes: Sequence[str], multilabel: bool) -> ModelSpec:
        """This specification for data with ``classes`` (output order) and ``multilabel``."""
        return replace(self, classes=tuple(str(c) for c in classes), multilabel=bool(multilabel))

    @property
    def is_complete(self) -> bool:
        """True when classes and multilabel are known (what a saved model needs)."""
        return bool(self.classes) and self.multilabel is not None

    def to_dict(self) -> dict:
        """Plain JSON-able values of every field."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def build_network(self, pretrained: bool = False, weights_file=None):
        """``nn.Sequential(body, head)`` for this specification (see ``network.build_classifier``)."""
        from utils_cv.classification.network import build_classifier

        return build_classifier(self, pretrained=pretrained, weights_file=weights_file)

    # --- preprocessing ---------------------------------------------------------------------

    def resize_im(self, im: Image.Image, pcts: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
        """``im`` (RGB) resized to im_size x im_size as the specification says.

        pcts : where the crop (or the image inside the padding) sits, as fractions of the free
        space: (0.5, 0.5) centres it (prediction, validation); training draws them at random.
        """
        return resize_im(im, self.im_size, self.resize, self.pad_color, pcts)

    def normalize(self, arrays: np.ndarray) -> np.ndarray:
        """uint8 images (n, h, w, 3) -> float32 (n, 3, h, w), scaled to 0..1 and normalised."""
        x = arrays.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    @property
    def draft_size(self) -> int:
        """Side in pixels down to which JPEG files are decoded at reduced scale (Pillow's draft
        mode; see ``image_io.load_rgb``). The one rule that training, prediction and the service
        all follow, so they see the same pixels."""
        return self.im_size

    def im_array(self, im) -> np.ndarray:
        """One image (PIL, numpy array or path) as the uint8 array (im_size, im_size, 3) the
        model sees before normalisation: decoded (JPEG files at reduced scale when they are
        much larger than im_size, as the training loader does), RGB, resized."""
        return np.asarray(self.resize_im(as_rgb(im, self.draft_size)), dtype=np.uint8)

    def preprocess(self, ims: Sequence) -> np.ndarray:
        """Model input (n, 3, im_size, im_size) float32 for ``ims``: PIL images, uint8 numpy
        arrays (h, w[, c]) or image file paths, exactly as the validation data loader makes it."""
        arrays = [self.im_array(im) for im in ims]
        if not arrays:
            return np.zeros((0, 3, self.im_size, self.im_size), np.float32)
        return self.normalize(np.stack(arrays))


def _check_classes(classes) -> tuple:
    accepted = f"a list of at most {MAX_CLASSES} unique, non-empty class names (strings)"
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise _fail("classes", classes, accepted)
    if len(classes) > MAX_CLASSES:
        raise SpecError(
            f"ModelSpec field 'classes': {len(classes)} class names; at most {MAX_CLASSES}."
        )
    for c in classes:
        if not isinstance(c, str) or not c or len(c) > MAX_CLASS_NAME:
            raise _fail("classes", c, f"class names as strings of 1..{MAX_CLASS_NAME} characters")
    if len(set(classes)) != len(classes):
        seen, dup = set(), None
        for c in classes:
            if c in seen:
                dup = c
                break
            seen.add(c)
        raise SpecError(f"ModelSpec field 'classes': '{dup}' appears more than once.")
    return tuple(classes)


# --- resizing: one implementation for training, prediction and the service -------------------


def crop_pad_box(w: int, h: int, size: int, method: str, pcts=(0.5, 0.5)) -> tuple[int, ...]:
    """The region (left, top, right, bottom) of a w x h image that becomes the square output.

    "squish": the whole image. "crop": the largest square inside the image. "pad": the
    smallest square around it (extending past the edges). ``pcts`` places the region in the
    free space (0.5: centred).
    """
    if method == "squish":
        return (0, 0, w, h)
    # the square's side: the shorter side (crop) or the longer one (pad), in whole pixels
    # (int(w / size * size) can lose a pixel to float rounding, e.g. w=230 at size 224)
    side = min(w, h) if method == "crop" else max(w, h)
    left, top = int(pcts[0] * (w - side)), int(pcts[1] * (h - side))
    return (left, top, left + side, top + side)


def resize_im(
    im: Image.Image, size: int, method: str = "squish", pad_color=(0, 0, 0), pcts=(0.5, 0.5)
) -> Image.Image:
    """``im`` resized to ``size`` x ``size`` pixels by ``method`` (see ``crop_pad_box``),
    with bilinear interpolation; padding is filled with ``pad_color``."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {method!r}.")
    w, h = im.size
    left, top, right, bottom = crop_pad_box(w, h, size, method, pcts)
    if (left, top, right, bottom) != (0, 0, w, h):
        if left >= 0 and top >= 0 and right <= w and bottom <= h:
            im = im.crop((left, top, right, bottom))
        else:
            canvas = Image.new(im.mode, (right - left, bottom - top), tuple(pad_color))
            canvas.paste(im, (-left, -top))
            im = canvas
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return im


def as_rgb(im, draft_size: int | None = None) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, a numpy array or an image file path (JPEG
    files decoded at reduced scale down to ``draft_size``, see ``image_io.load_rgb``)."""
    from utils_cv.common.image_io import load_rgb, to_rgb

    if isinstance(im, (str, Path)):
        return load_rgb(im, draft_size=draft_size)
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    if not isinstance(im, Image.Image):
        raise TypeError(f"Expected a PIL image, numpy array or path, got {type(im).__name__}.")
    return to_rgb(im)


# --- model.json ------------------------------------------------------------------------------

MAX_META_BYTES = 16 * 1024 * 1024  # model.json larger than this is refused unread


def spec_to_json(spec: ModelSpec, weights_sha256: str) -> dict:
    """The ``model.json`` content for ``spec`` and the SHA-256 (hex) of its weights file."""
    if not spec.is_complete:
        raise SpecError("A saved model needs its classes and multilabel flag (spec.with_data).")
    return {"format_version": FORMAT_VERSION, **spec.to_dict(), "weights_sha256": weights_sha256}


_V1_FIELDS = {
    "architecture": "backbone",
    "classes": "classes",
    "im_size": "im_size",
    "mean": "mean",
    "std": "std",
    "multilabel": "multilabel",
    "threshold": "threshold",
    "dropout": "dropout",
    "head": "head",
}
_V1_OPTIONAL = {"multilabel": False, "threshold": 0.5, "dropout": 0.5, "head": "mlp"}
_V1_IGNORED = ("extra",)


def spec_from_json(data, source: str = "model.json") -> tuple[ModelSpec, str]:
    """Validate parsed ``model.json`` content strictly; return (spec, weights SHA-256).

    Checks types (booleans are not numbers, strings are not booleans), ranges, finite numbers,
    unique class names and the weights hash; unknown fields are refused. Files written before
    the specification existed (``format_version`` 1) are read too (resize "squish").
    Raises SpecError naming ``source`` and the field.
    """

    def bad(message: str) -> SpecError:
        return SpecError(f"{source}: {message}")

    if not isinstance(data, dict):
        raise bad("expected a JSON object.")
    version = data.get("format_version", 1)
    if not _is_int(version) or version < 1:
        raise bad(f"field 'format_version' should be a whole number >= 1, got {version!r}.")
    if version > FORMAT_VERSION:
        raise bad(
            f"format_version {version} is newer than this utils_cv understands "
            f"({FORMAT_VERSION}); upgrade utils_cv."
        )
    if version == 1:
        required = [k for k in _V1_FIELDS if k not in _V1_OPTIONAL]
        allowed = {*_V1_FIELDS, "format_version", "weights_sha256", *_V1_IGNORED}
        values = {**_V1_OPTIONAL, **{k: v for k, v in data.items() if k in _V1_FIELDS}}
        values = {_V1_FIELDS[k]: v for k, v in values.items()}
        values["resize"] = "squish"
        values["pad_color"] = [0, 0, 0]  # not in version 1; unused by "squish"
        if values["multilabel"] is None:  # version 1 read null as single-label
            values["multilabel"] = False
        values["feature_stages"] = 0
    else:
        spec_fields = [f.name for f in fields(ModelSpec)]
        if version == 2:  # before feature_stages: the final maps only
            spec_fields.remove("feature_stages")
        required = spec_fields
        allowed = {*spec_fields, "format_version", "weights_sha256"}
        values = {k: v for k, v in data.items() if k in spec_fields}
        values.setdefault("feature_stages", 0)
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(repr(k) for k in unknown)}.")
    missing = [k for k in required if k not in data]
    if missing:
        raise bad(f"missing field(s) {', '.join(repr(k) for k in missing)}.")
    types = {
        "backbone": str,
        "im_size": int,
        "resize": str,
        "pad_color": list,
        "mean": list,
        "std": list,
        "classes": list,
        "multilabel": bool,
        "threshold": (int, float),
        "head": str,
        "dropout": (int, float),
        "feature_stages": int,
    }
    for name, kind in types.items():
        value = values.get(name)
        if name == "multilabel" and value is None and version == 1:
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            kind_name = kind.__name__ if isinstance(kind, type) else "number"
            article = "an" if kind_name[0] in "aeiou" else "a"
            raise bad(
                f"field '{name}' should be {article} {kind_name}, got {type(value).__name__}."
            )
    if len(values["classes"]) > MAX_CLASSES:
        raise bad(f"field 'classes' has {len(values['classes'])} names; at most {MAX_CLASSES}.")
    if not values["classes"]:
        raise bad("field 'classes' is empty.")
    sha = data.get("weights_sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise bad(
            "field 'weights_sha256' should be the 64-character hex SHA-256 of the weights "
            "file; save the model again with utils_cv."
        )
    try:
        spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except SpecError as err:
        raise bad(str(err).replace("ModelSpec field", "field")) from None
    return spec, sha


# --- model types for "train on your own data" (notebook 03) -----------------------------------

# name -> the specification fields it sets (the rest keep their defaults)
MODEL_TYPES = {
    "high_accuracy": {"backbone": "efficientnet_lite2", "im_size": 260},
    "fast_inference": {"backbone": "efficientnet_lite0", "im_size": 300},
    "small_size": {"backbone": "efficientnet_lite0", "im_size": 160},
}


def spec_for_model_type(name: str, **overrides) -> ModelSpec:
    """The specification of a model type in ``MODEL_TYPES``, with ``overrides`` applied."""
    if name not in MODEL_TYPES:
        raise SpecError(f"Unknown model type '{name}'. Choose one of: {', '.join(MODEL_TYPES)}.")
    return ModelSpec(**{**MODEL_TYPES[name], **overrides})
