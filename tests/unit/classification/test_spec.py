"""The model specification: defaults from the registry, validation, model.json, resizing."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from PIL import Image

from utils_cv.classification.backbones import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD
from utils_cv.classification.spec import (
    FORMAT_VERSION,
    HEADS,
    MODEL_TYPES,
    RESIZE_METHODS,
    ModelSpec,
    SpecError,
    as_rgb,
    crop_pad_box,
    resize_im,
    spec_for_model_type,
    spec_from_json,
    spec_to_json,
)

SHA = "0123456789abcdef" * 4
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def complete(**changes) -> ModelSpec:
    return ModelSpec(im_size=64, **changes).with_data(["apple", "citrus"], False)


def saved_json(**changes) -> dict:
    """model.json content of a complete spec, with ``changes`` (KeyError deletes a field)."""
    data = spec_to_json(complete(), SHA)
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key)
        else:
            data[key] = value
    return data


def thirds(w: int, h: int) -> Image.Image:
    """A w x h image: red, green and blue thirds, left to right (or top to bottom if tall)."""
    im = Image.new("RGB", (w, h))
    if w >= h:
        for i, colour in enumerate((RED, GREEN, BLUE)):
            im.paste(colour, (i * w // 3, 0, (i + 1) * w // 3, h))
    else:
        for i, colour in enumerate((RED, GREEN, BLUE)):
            im.paste(colour, (0, i * h // 3, w, (i + 1) * h // 3))
    return im


# --- defaults come from the backbone registry ---------------------------------------------------


def test_defaults_of_an_efficientnet_lite():
    spec = ModelSpec()
    assert spec.backbone == "efficientnet_lite0"
    assert (spec.im_size, spec.resize, spec.mean, spec.std) == (300, "squish", HALF_MEAN, HALF_STD)
    assert (spec.pad_color, spec.classes, spec.multilabel) == ((0, 0, 0), (), None)
    assert (spec.threshold, spec.head, spec.dropout) == (0.5, "mlp", 0.2)
    assert not spec.is_complete
    assert ModelSpec("efficientnet_lite2").im_size == 260


def test_defaults_of_a_torchvision_backbone():
    spec = ModelSpec("resnet18")
    assert (spec.im_size, spec.mean, spec.std) == (224, IMAGENET_MEAN, IMAGENET_STD)
    assert spec.resize == "squish"


def test_defaults_of_any_timm_architecture_come_from_timm():
    spec = ModelSpec("resnet10t")
    assert spec.im_size == 176  # timm's pretrained configuration: 176 px training size
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_overrides_win_and_are_normalised():
    spec = ModelSpec(
        "resnet18",
        im_size=np.int64(96),
        resize="pad",
        pad_color=[255, 128, 0],
        mean=[0.5, 0.5, 0.5],
        std=(1, 1, 1),
        threshold=1,
        dropout=0,
    )
    assert (spec.im_size, type(spec.im_size)) == (96, int)
    assert (spec.resize, spec.pad_color) == ("pad", (255, 128, 0))
    assert (spec.mean, spec.std) == ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
    assert (spec.threshold, spec.dropout) == (1.0, 0.0)
    assert all(type(v) is float for v in (*spec.mean, *spec.std, spec.threshold, spec.dropout))


def test_frozen_replace_with_data_and_to_dict():
    spec = ModelSpec(im_size=64)
    with pytest.raises(FrozenInstanceError):
        spec.im_size = 128
    assert spec.replace(resize="crop").resize == "crop" and spec.resize == "squish"
    with pytest.raises(SpecError, match="'resize'"):
        spec.replace(resize="fit")
    full = spec.with_data(("b", "a"), 1)
    assert (full.classes, full.multilabel, full.is_complete) == (("b", "a"), True, True)
    data = full.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["classes"] == ["b", "a"] and data["mean"] == [0.5, 0.5, 0.5]
    assert ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}) == full


# --- each invalid field fails, naming the field -------------------------------------------------


@pytest.mark.parametrize(
    "field, value, accepted",
    [
        ("im_size", 0, "16..2048"),
        ("im_size", -64, "16..2048"),
        ("im_size", 1e9, "16..2048"),
        ("im_size", 10**9, "16..2048"),
        ("im_size", True, "whole number"),
        ("im_size", "224", "whole number"),
        ("im_size", 64.0, "whole number"),
        ("resize", "stretch", "squish, crop, pad"),
        ("pad_color", (0, 0), "3 whole numbers 0..255"),
        ("pad_color", (0, 0, 256), "3 whole numbers 0..255"),
        ("pad_color", "red", "3 whole numbers 0..255"),
        ("pad_color", (0.5, 0, 0), "3 whole numbers 0..255"),
        ("mean", (0.5, math.nan, 0.5), "3 numbers"),
        ("mean", (0.5, 0.5), "3 numbers"),
        ("std", (0.5, 0, 0.5), "3 numbers > 0"),
        ("std", (0.5, math.inf, 0.5), "3 numbers > 0"),
        ("classes", ("apple", "apple"), "more than once"),
        ("classes", "apple", "unique, non-empty class names"),
        ("classes", ("apple", ""), "strings of 1..500"),
        ("classes", ("apple", 3), "strings of 1..500"),
        ("multilabel", "false", "True, False or None"),
        ("threshold", "0.5", "a number 0..1"),
        ("threshold", 1.5, "a number 0..1"),
        ("threshold", math.nan, "a number 0..1"),
        ("head", "transformer", "mlp, linear"),
        ("dropout", 1.0, "0 <= dropout < 1"),
        ("dropout", -0.1, "0 <= dropout < 1"),
    ],
)
def test_invalid_field_is_named_with_the_accepted_values(field, value, accepted):
    with pytest.raises(SpecError, match=f"ModelSpec field '{field}'") as info:
        ModelSpec(**{field: value})
    assert accepted in str(info.value)


def test_duplicate_class_is_named():
    with pytest.raises(SpecError, match="'citrus' appears more than once"):
        ModelSpec(classes=("apple", "citrus", "tool", "citrus"))


def test_unknown_backbone_lists_the_closest_names():
    with pytest.raises(SpecError, match="ModelSpec field 'backbone': Unknown backbone") as info:
        ModelSpec("efficientnet_lite9")
    assert "Closest names: efficientnet_lite" in str(info.value)
    with pytest.raises(SpecError, match="ModelSpec field 'backbone'"):
        ModelSpec("")


def test_constants():
    assert RESIZE_METHODS == ("squish", "crop", "pad")
    assert HEADS == ("mlp", "linear")
    assert FORMAT_VERSION == 3


# --- model.json: written and read back strictly ------------------------------------------------


def test_spec_to_json_round_trip():
    spec = complete(resize="pad", pad_color=(1, 2, 3), head="linear")
    data = spec_to_json(spec, SHA)
    assert data["format_version"] == FORMAT_VERSION and data["weights_sha256"] == SHA
    assert spec_from_json(json.loads(json.dumps(data))) == (spec, SHA)


def test_spec_to_json_needs_classes_and_multilabel():
    with pytest.raises(SpecError, match="needs its classes and multilabel flag"):
        spec_to_json(ModelSpec(classes=("a", "b")), SHA)


@pytest.mark.parametrize("version", ["2", 2.0, True, None, 0])
def test_format_version_of_the_wrong_type(version):
    with pytest.raises(SpecError, match="src.json: field 'format_version' should be a whole"):
        spec_from_json(saved_json(format_version=version), "src.json")


def test_newer_format_version_asks_for_an_upgrade():
    with pytest.raises(SpecError, match="format_version 4 is newer .* upgrade utils_cv"):
        spec_from_json(saved_json(format_version=FORMAT_VERSION + 1))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("multilabel", "false", "field 'multilabel' should be a bool, got str"),
        ("multilabel", 0, "field 'multilabel' should be a bool, got int"),
        ("multilabel", None, "field 'multilabel' should be a bool"),
        ("threshold", "0.5", "field 'threshold' should be a number, got str"),
        ("threshold", True, "field 'threshold' should be a number, got bool"),
        ("threshold", 1.5, "field 'threshold': 1.5 is not valid"),
        ("threshold", math.nan, "field 'threshold': nan is not valid"),
        ("mean", [0.5, math.nan, 0.5], "field 'mean': .* is not valid"),
        ("std", [0.5, 0.5, math.inf], "field 'std': .* is not valid"),
        ("im_size", 64.0, "field 'im_size' should be an int, got float"),
        ("im_size", True, "field 'im_size' should be an int, got bool"),
        ("im_size", 4096, "field 'im_size': 4096 is not valid"),
        ("classes", "apple citrus", "field 'classes' should be a list, got str"),
        ("classes", [], "field 'classes' is empty"),
        ("classes", ["apple", "apple"], "field 'classes': 'apple' appears more than once"),
        ("classes", ["apple", 2], "field 'classes': 2 is not valid"),
        ("pad_color", [0, 0, 300], "field 'pad_color': .* is not valid"),
        ("resize", "stretch", "field 'resize': 'stretch' is not valid"),
        ("head", "transformer", "field 'head': 'transformer' is not valid"),
        ("backbone", "resnet19", "field 'backbone': Unknown backbone 'resnet19'"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(SpecError, match=f"^model.json: {message}"):
        spec_from_json(saved_json(**{field: value}))


def test_three_million_classes_are_refused_before_anything_is_built():
    classes = [f"c{i}" for i in range(3_000_000)]
    start = time.perf_counter()
    with pytest.raises(SpecError, match="'classes' has 3000000 names; at most 100000"):
        spec_from_json(saved_json(classes=classes))
    assert time.perf_counter() - start < 0.5  # counted, not checked name by name
    with pytest.raises(SpecError, match="3000000 class names; at most 100000"):
        ModelSpec(classes=classes)


@pytest.mark.parametrize("extra", [{"extra": {}}, {"colour": "red"}, {"architecture": "x"}])
def test_unknown_fields_are_refused(extra):
    key = next(iter(extra))
    with pytest.raises(SpecError, match=f"unknown field\\(s\\) '{key}'"):
        spec_from_json(saved_json(**extra))


@pytest.mark.parametrize("field", ["backbone", "resize", "pad_color", "classes", "multilabel"])
def test_missing_fields_are_named(field):
    with pytest.raises(SpecError, match=f"missing field\\(s\\) '{field}'"):
        spec_from_json(saved_json(**{field: KeyError}))


@pytest.mark.parametrize("sha", [KeyError, "", None, "abc", "A" * 64, "g" * 64, SHA + "0"])
def test_missing_or_malformed_weights_hash(sha):
    with pytest.raises(SpecError, match="'weights_sha256' should be the 64-character hex"):
        spec_from_json(saved_json(weights_sha256=sha))


def test_not_a_json_object():
    for data in ([1, 2], "model", None):
        with pytest.raises(SpecError, match="expected a JSON object"):
            spec_from_json(data)


V1 = {
    "architecture": "efficientnet_lite0",
    "classes": ["apple", "citrus", "flower", "tool"],
    "im_size": 64,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "multilabel": True,
    "threshold": 0.4,
    "dropout": 0.2,
    "head": "linear",
    "format_version": 1,
    "weights_sha256": SHA,
    "extra": {},
}


def test_version_1_model_json_still_loads():
    spec, sha = spec_from_json(V1)
    assert sha == SHA
    assert spec == ModelSpec(
        im_size=64,
        resize="squish",  # the only resize method before version 2
        classes=("apple", "citrus", "flower", "tool"),
        multilabel=True,
        threshold=0.4,
        head="linear",
        feature_stages=0,  # the final feature maps only, before version 3
    )


def test_version_2_model_json_loads_with_the_final_maps_only():
    data = saved_json(format_version=2, feature_stages=KeyError)
    spec, _ = spec_from_json(data)
    assert spec.feature_stages == 0 and spec == complete(feature_stages=0)
    with pytest.raises(SpecError, match="unknown field.*'feature_stages'"):
        spec_from_json(saved_json(format_version=2))  # version 2 had no such field
    with pytest.raises(SpecError, match="missing field.*'feature_stages'"):
        spec_from_json(saved_json(feature_stages=KeyError))  # version 3 must say it


@pytest.mark.parametrize(
    "backbone, value, message",
    [
        (
            "efficientnet_lite0",
            -1,
            "'feature_stages': -1 is not valid; expected None or a whole number 0..4",
        ),
        ("efficientnet_lite0", 1.0, "'feature_stages': 1.0 is not valid"),
        ("efficientnet_lite0", True, "'feature_stages': True is not valid"),
        ("resnet18", 2, "expected 0: backbone 'resnet18' cannot join stage features"),
    ],
)
def test_feature_stages_is_checked(backbone, value, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        ModelSpec(backbone, feature_stages=value)


def test_feature_stages_default_is_decided_with_multilabel():
    assert ModelSpec().feature_stages is None  # until the data is known
    assert ModelSpec().with_data(["a", "b"], multilabel=True).feature_stages == 2  # Lite0
    assert ModelSpec().with_data(["a", "b"], multilabel=False).feature_stages == 0
    assert ModelSpec(multilabel=True).feature_stages == 2
    assert ModelSpec("efficientnet_lite2", multilabel=True).feature_stages == 0
    assert ModelSpec("resnet18", multilabel=True).feature_stages == 0
    # An explicit value wins, for either kind of data.
    assert ModelSpec(feature_stages=2).with_data(["a", "b"], False).feature_stages == 2
    assert ModelSpec(feature_stages=0).with_data(["a", "b"], True).feature_stages == 0


def test_oldest_version_1_files_load_with_the_old_defaults():
    # Written before head, dropout, multilabel and format_version were recorded.
    oldest = {k: V1[k] for k in ("architecture", "classes", "im_size", "mean", "std")}
    spec, _ = spec_from_json({**oldest, "weights_sha256": SHA})
    assert (spec.multilabel, spec.threshold, spec.head, spec.dropout) == (False, 0.5, "mlp", 0.5)
    spec, _ = spec_from_json({**V1, "multilabel": None})  # version 1 read null as single-label
    assert spec.multilabel is False and spec.is_complete


def test_version_1_is_validated_too():
    with pytest.raises(SpecError, match="missing field\\(s\\) 'architecture'"):
        spec_from_json({k: v for k, v in V1.items() if k != "architecture"})
    with pytest.raises(SpecError, match="unknown field\\(s\\) 'resize'"):
        spec_from_json({**V1, "resize": "pad"})
    with pytest.raises(SpecError, match="'weights_sha256'"):
        spec_from_json({**V1, "weights_sha256": ""})
    with pytest.raises(SpecError, match="field 'im_size' should be an int"):
        spec_from_json({**V1, "im_size": "64"})


# --- resizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "w, h, size, method, pcts, box",
    [
        (100, 50, 32, "squish", (0.5, 0.5), (0, 0, 100, 50)),
        (100, 50, 32, "crop", (0.5, 0.5), (25, 0, 75, 50)),
        (50, 100, 32, "crop", (0.5, 0.5), (0, 25, 50, 75)),
        (100, 50, 32, "crop", (0.0, 0.0), (0, 0, 50, 50)),
        (100, 50, 32, "crop", (1.0, 1.0), (50, 0, 100, 50)),
        (100, 50, 32, "pad", (0.5, 0.5), (0, -25, 100, 75)),
        (50, 100, 32, "pad", (0.5, 0.5), (-25, 0, 75, 100)),
        (100, 50, 32, "pad", (0.0, 0.0), (0, 0, 100, 100)),
        (100, 50, 32, "pad", (1.0, 1.0), (0, -50, 100, 50)),
        (40, 40, 32, "crop", (0.5, 0.5), (0, 0, 40, 40)),
        (40, 40, 32, "pad", (0.5, 0.5), (0, 0, 40, 40)),
        # whole sides where w / size * size rounds down in floating point
        (230, 100, 224, "pad", (0.5, 0.5), (0, -65, 230, 165)),
        (61, 200, 224, "crop", (0.5, 0.5), (0, 69, 61, 130)),
    ],
)
def test_crop_pad_box(w, h, size, method, pcts, box):
    assert crop_pad_box(w, h, size, method, pcts) == box


def test_squish_keeps_the_whole_image():
    out = resize_im(thirds(120, 40), 30, "squish")
    assert out.size == (30, 30)
    assert out.getpixel((3, 15)) == RED
    assert out.getpixel((15, 15)) == GREEN
    assert out.getpixel((26, 15)) == BLUE


def test_crop_keeps_the_centre_square():
    wide = resize_im(thirds(120, 40), 30, "crop")
    assert wide.size == (30, 30)
    assert set(wide.getdata()) == {GREEN}  # the centre 40 x 40 is the green third
    tall = resize_im(thirds(40, 120), 30, "crop")
    assert set(tall.getdata()) == {GREEN}
    # Training places the square elsewhere: the left edge is the red third.
    assert set(resize_im(thirds(120, 40), 30, "crop", pcts=(0, 0)).getdata()) == {RED}


def test_pad_letterboxes_with_the_pad_colour():
    grey = (10, 20, 30)
    wide = resize_im(thirds(120, 40), 30, "pad", pad_color=grey)
    assert wide.size == (30, 30)
    # 120 x 40 inside 120 x 120: 40 rows of padding above and below -> 10 of 30 each.
    assert {wide.getpixel((x, y)) for x in range(30) for y in (0, 8, 21, 29)} == {grey}
    assert wide.getpixel((3, 15)) == RED
    assert wide.getpixel((15, 15)) == GREEN
    assert wide.getpixel((26, 15)) == BLUE
    tall = resize_im(thirds(40, 120), 30, "pad", pad_color=grey)
    assert {tall.getpixel((x, y)) for x in (0, 8, 21, 29) for y in range(30)} == {grey}
    assert [tall.getpixel((15, y)) for y in (3, 15, 26)] == [RED, GREEN, BLUE]


def test_spec_resize_im_uses_its_fields():
    spec = ModelSpec(im_size=30, resize="pad", pad_color=(10, 20, 30))
    im = thirds(120, 40)
    assert np.array_equal(
        np.asarray(spec.resize_im(im)), np.asarray(resize_im(im, 30, "pad", (10, 20, 30)))
    )
    assert spec.resize_im(Image.new("RGB", (30, 30), RED)).getpixel((0, 0)) == RED
    with pytest.raises(ValueError, match="resize must be one of squish, crop, pad"):
        resize_im(im, 30, "stretch")


# --- normalising and preprocessing ----------------------------------------------------------------


def test_normalize_scales_and_transposes():
    spec = ModelSpec("resnet18", im_size=16)
    white = np.full((2, 4, 5, 3), 255, np.uint8)
    x = spec.normalize(white)
    assert x.shape == (2, 3, 4, 5) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (1 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(x[1, :, 3, 4], expected, rtol=1e-6)


def test_preprocess_converts_and_normalises_any_input(tmp_path):
    spec = ModelSpec(im_size=16)  # mean = std = 0.5: 0..255 becomes -1..1
    white = Image.new("RGB", (40, 20), (255, 255, 255))
    black_grey = Image.new("L", (10, 10), 0)
    red_rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    x = spec.preprocess([white, black_grey, red_rgba])
    assert x.shape == (3, 3, 16, 16) and x.dtype == np.float32
    assert np.array_equal(x[0], np.ones((3, 16, 16), np.float32))
    assert np.array_equal(x[1], -np.ones((3, 16, 16), np.float32))
    assert (x[2, 0] == 1).all() and (x[2, 1:] == -1).all()
    path = tmp_path / "thirds.png"
    thirds(48, 30).save(path)
    from_path = spec.preprocess([path, str(path)])
    from_pil = spec.preprocess([thirds(48, 30)])
    from_array = spec.preprocess([np.asarray(thirds(48, 30))])
    assert np.array_equal(from_path[0], from_pil[0]) and np.array_equal(from_path[1], from_pil[0])
    assert np.array_equal(from_array, from_pil)
    assert spec.preprocess([]).shape == (0, 3, 16, 16)


def test_as_rgb_rejects_other_inputs():
    assert as_rgb(np.zeros((4, 5), np.uint8)).mode == "RGB"
    with pytest.raises(TypeError, match="Expected a PIL image, numpy array or path, got int"):
        as_rgb(42)


# --- model types -----------------------------------------------------------------------------


def test_model_types():
    assert MODEL_TYPES == {
        "high_accuracy": {"backbone": "efficientnet_lite2", "im_size": 260},
        "fast_inference": {"backbone": "efficientnet_lite0", "im_size": 300},
        "small_size": {"backbone": "efficientnet_lite0", "im_size": 160},
    }
    for name, values in MODEL_TYPES.items():
        spec = spec_for_model_type(name)
        assert (spec.backbone, spec.im_size) == (values["backbone"], values["im_size"])
        assert spec.mean == HALF_MEAN  # the rest from the registry


def test_spec_for_model_type_with_overrides():
    spec = spec_for_model_type("high_accuracy", im_size=64, resize="crop")
    assert (spec.backbone, spec.im_size, spec.resize) == ("efficientnet_lite2", 64, "crop")
    with pytest.raises(SpecError, match="'im_size'"):
        spec_for_model_type("small_size", im_size=0)


def test_unknown_model_type_lists_the_choices():
    with pytest.raises(SpecError, match="Unknown model type 'tiny'") as info:
        spec_for_model_type("tiny")
    for name in MODEL_TYPES:
        assert name in str(info.value)
