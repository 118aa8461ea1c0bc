"""Class activation maps (TorchCAM's Grad-CAM) through predictors and learners, the overlay
grid, top losses, and the results widget's map option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utils_cv.classification.cam import (
    class_activation_maps,
    overlay,
    per_image_loss,
    plot_cams,
    plot_top_losses_cam,
    top_losses,
)
from utils_cv.classification.predict import load_predictor
from utils_cv.classification.saved import load_model
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import create_learner
from utils_cv.classification.widgets.results import ResultsWidget


def test_grad_cam_of_a_saved_model(tiny_model_dir, tiny_valid_images):
    predictor = load_model(tiny_model_dir)
    cams, probs, explained = class_activation_maps(predictor, tiny_valid_images[:3])
    assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0 and np.allclose(cams.max(axis=(1, 2)), 1, atol=1e-4)
    np.testing.assert_allclose(probs, predictor.predict_proba(tiny_valid_images[:3]), atol=1e-5)
    assert explained == list(probs.argmax(axis=1))
    # another class gives another map; a class can be named
    other = [(c + 1) % 4 for c in explained]
    by_name = [predictor.classes[c] for c in other]
    cams_other, _, explained_other = class_activation_maps(
        predictor, tiny_valid_images[:3], by_name
    )
    assert explained_other == other and not np.allclose(cams_other, cams)
    # the model's parameters are left without gradients
    assert all(p.grad is None for p in predictor.model.parameters())


def test_grad_cam_works_on_a_resnet_learner(make_dls, objects_tiny, tiny_valid_images):
    spec = ModelSpec(backbone="resnet18", im_size=64)
    torch.manual_seed(0)
    learn = create_learner(make_dls(objects_tiny, spec), spec, pretrained=False)
    learn.freeze()  # a frozen body still gets its map
    cams, _, _ = class_activation_maps(learn, tiny_valid_images[:2], method="gradcampp")
    assert cams.shape == (2, 64, 64) and np.isfinite(cams).all()


def test_grad_cam_refuses_onnx_and_unknown_classes(tiny_model_dir, tiny_valid_images):
    with pytest.raises(TypeError, match="ONNX predictor has no gradients"):
        class_activation_maps(load_predictor(tiny_model_dir, "onnx"), tiny_valid_images[:1])
    with pytest.raises(ValueError, match="Unknown class 'banana'"):
        class_activation_maps(load_model(tiny_model_dir), tiny_valid_images[:1], "banana")
    with pytest.raises(ValueError, match="method must be one of"):
        class_activation_maps(load_model(tiny_model_dir), tiny_valid_images[:1], method="magic")


def test_overlay_mixes_heat_map_and_image():
    im = Image.new("RGB", (100, 50), (255, 255, 255))
    cam = np.zeros((32, 32), np.float32)
    only_image = np.asarray(overlay(im, cam, alpha=0.0))
    assert only_image.shape == (32, 32, 3) and (only_image == 255).all()
    cam[:, 16:] = 1.0
    hot = np.asarray(overlay(im, cam, alpha=1.0, cmap="gray"))
    assert (hot[:, :16] == 0).all() and (hot[:, 16:] == 255).all()


def test_top_losses_order_and_loss_values():
    y_true = np.array([0, 1, 1])
    y_score = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6]])
    np.testing.assert_allclose(per_image_loss(y_true, y_score), -np.log([0.9, 0.2, 0.6]))
    assert list(top_losses(y_true, y_score, 2)) == [1, 2]
    multi = per_image_loss(np.array([[1, 0]]), np.array([[0.5, 0.5]]))
    np.testing.assert_allclose(multi, [np.log(2)])


def test_overlay_grid_and_top_losses_figures(tiny_learner, tiny_valid_images):
    from utils_cv.classification.train import get_preds

    fig = plot_cams(tiny_learner, tiny_valid_images[:5], ncols=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5
    assert all(ax.images[0].get_array().shape == (64, 64, 3) for ax in shown)
    y_score, y_true = get_preds(tiny_learner)
    files = [str(p) for p in tiny_learner.dls.valid_ds.items]
    fig = plot_top_losses_cam(tiny_learner, files, y_true, y_score, k=4, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    worst = top_losses(y_true, y_score, 4)
    assert len(titles) == 4
    assert titles[0].endswith(f"{per_image_loss(y_true, y_score)[worst[0]]:.2f}")


def test_results_widget_shows_the_map_when_asked(tiny_model_dir, tiny_valid_images):
    predictor = load_model(tiny_model_dir)
    y_score = predictor.predict_proba(tiny_valid_images)
    y_true = np.repeat(np.arange(4), 2)
    widget = ResultsWidget(
        tiny_valid_images, y_true, y_score, predictor.classes, cam_model=predictor
    )
    plain = widget.image.value
    widget.cam_checkbox.value = True
    with_map = widget.image.value
    assert with_map[:2] == b"\xff\xd8" and with_map != plain  # a JPEG, another picture
    widget.cam_checkbox.value = False
    assert widget.image.value == plain
    assert ResultsWidget(
        tiny_valid_images, y_true, y_score, predictor.classes
    ).cam_checkbox.disabled
