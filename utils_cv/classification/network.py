"""Building a classifier network from a model specification: backbone body + fastai head."""

from __future__ import annotations

from torch import nn

from utils_cv.classification.backbones import get_backbone
from utils_cv.classification.spec import HEADS, ModelSpec


def build_head(n_features: int, n_classes: int, dropout: float, head: str = "mlp") -> nn.Module:
    """A freshly initialised head for a body with ``n_features`` output channels.

    head : "mlp" (fastai's default head: concat pooling, batch norm, a 512-unit hidden layer)
    or "linear" (concat pooling, batch norm, dropout, one linear layer). Its first layer is the
    parameter-free concat pooling, so the rest can train on cached pooled features.
    """
    from fastai.vision.learner import apply_init, create_head

    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}.")
    lin_ftrs = [] if head == "linear" else None
    module = create_head(n_features, n_classes, lin_ftrs=lin_ftrs, ps=dropout)
    apply_init(module, nn.init.kaiming_normal_)
    return module


def build_classifier(spec: ModelSpec, pretrained: bool = True, weights_file=None) -> nn.Module:
    """``nn.Sequential(body, head)`` for ``spec`` (which must know its classes).

    pretrained : the body gets the registry's ImageNet weights; weights_file : or these
    (see ``backbones.read_weights_file``). The head has one output (logit) per class.
    """
    if not spec.classes:
        raise ValueError("The specification has no classes yet: use spec.with_data(...) first.")
    record = get_backbone(spec.backbone)
    body, n_features = record.create_body(pretrained, weights_file, spec.feature_stages)
    return nn.Sequential(body, build_head(n_features, len(spec.classes), spec.dropout, spec.head))
