"""Building classifier networks from a model specification: body + head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils_cv.classification.backbones import get_backbone
from utils_cv.classification.network import build_classifier, build_head
from utils_cv.classification.spec import ModelSpec


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_build_classifier_has_body_and_head():
    spec = ModelSpec(dropout=0.3).with_data(list("abcde"), False)
    model = build_classifier(spec, pretrained=False)
    body, head = model
    assert isinstance(model, nn.Sequential) and len(model) == 2
    dropouts = [m.p for m in head.modules() if isinstance(m, nn.Dropout)]
    assert dropouts[-1] == 0.3
    assert linears(head)[-1].out_features == 5
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


def test_spec_build_network_is_build_classifier():
    spec = ModelSpec(im_size=64, head="linear").with_data(["a", "b"], True)
    torch.manual_seed(0)
    a = spec.build_network()
    torch.manual_seed(0)
    b = build_classifier(spec, pretrained=False)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_pretrained_body_holds_the_backbone_weights():
    spec = ModelSpec(im_size=64).with_data(["a", "b"], False)
    pretrained = build_classifier(spec, pretrained=True)
    imagenet = get_backbone("efficientnet_lite0").create_imagenet_model(pretrained=True)
    first_conv = next(m for m in pretrained[0].modules() if isinstance(m, nn.Conv2d))
    assert torch.equal(first_conv.weight, imagenet.conv_stem.weight)
    untrained = build_classifier(spec, pretrained=False)
    first_untrained = next(m for m in untrained[0].modules() if isinstance(m, nn.Conv2d))
    assert not torch.equal(first_untrained.weight, imagenet.conv_stem.weight)


def test_build_classifier_torchvision_backbone():
    model = build_classifier(ModelSpec("resnet18").with_data(["a", "b", "c"], False), False)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_build_classifier_needs_classes():
    with pytest.raises(ValueError, match=r"no classes yet: use spec.with_data"):
        build_classifier(ModelSpec(), pretrained=False)


def test_linear_head_is_one_linear_layer_after_pooling():
    spec = ModelSpec(dropout=0.3, head="linear").with_data(["a", "b", "c"], False)
    model = build_classifier(spec, pretrained=False)
    (linear,) = linears(model[1])
    assert linear.in_features == 2 * 1280 and linear.out_features == 3
    assert [m.p for m in model[1].modules() if isinstance(m, nn.Dropout)] == [0.3]
    # Multi-label: concat pooling of Lite0's final maps (1280) and its last two stages (320 + 192)
    multi = ModelSpec(head="linear").with_data(["a", "b", "c"], True)
    (linear,) = linears(build_classifier(multi, pretrained=False)[1])
    assert linear.in_features == 2 * (1280 + 320 + 192)
    mlp = build_classifier(spec.replace(head="mlp"), pretrained=False)
    assert [m.out_features for m in linears(mlp[1])] == [512, 3]


def test_build_head_checks_the_head_type():
    head = build_head(1280, 4, 0.1, "linear")
    assert isinstance(head[0], nn.Module) and not list(head[0].parameters())  # concat pooling
    with torch.no_grad():
        assert head.eval()(torch.zeros(2, 1280, 2, 2)).shape == (2, 4)
    with pytest.raises(ValueError, match="head must be one of mlp, linear, got 'transformer'"):
        build_head(1280, 4, 0.1, "transformer")
