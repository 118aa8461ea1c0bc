"""Why did the model decide that? Class activation maps (Grad-CAM) over images.

Grad-CAM (Selvaraju et al. 2017) weighs the last feature map of the body by the gradient of a
class's score and keeps the positive part: the regions that raised that class. The maps come
from TorchCAM (``torchcam.methods``, a maintained library; "gradcam", "gradcampp",
"layercam", "xgradcam" or "smoothgradcampp" via ``method``) hooked on the body of our network
(``nn.Sequential(body, head)``), whose output is that last feature map for every convolutional
backbone (EfficientNet-Lite, ResNet, any timm CNN).

- ``class_activation_maps(model_source, ims)``: maps (n, im_size, im_size), values 0..1, for
  the predicted class or given ones, with the probabilities;
- ``overlay(im, cam)``: the map as a heat map over the image as the model saw it;
- ``plot_cams(model_source, ims)``: a grid of overlays with the prediction on each;
- ``top_losses`` and ``plot_top_losses_cam``: the validation images the model got most wrong,
  with what it looked at (notebook 01).

``model_source`` is a ``predict.TorchPredictor`` (e.g. ``saved.load_model``) or a fastai
learner from ``train.train`` (its network and ``spec``). Images are preprocessed by the
specification, exactly as for prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

METHODS = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMpp",
    "layercam": "LayerCAM",
    "xgradcam": "XGradCAM",
    "smoothgradcampp": "SmoothGradCAMpp",
}


def _model_and_spec(model_source):
    """(network, spec, device) of a TorchPredictor or a fastai learner with ``spec``."""
    spec = getattr(model_source, "spec", None)
    model = getattr(model_source, "model", None)
    if spec is None or model is None or not isinstance(model, torch.nn.Module):
        raise TypeError(
            "Class activation maps need a TorchPredictor (saved.load_model) or a learner from "
            f"train.train; got a {type(model_source).__name__}. An ONNX predictor has no "
            f"gradients: use load_model(model_dir) for the maps."
        )
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return model, spec, next(model.parameters()).device


def _cam_extractor(model, method: str, im_size: int):
    try:
        from torchcam import methods
    except ImportError:
        raise ImportError(
            "Class activation maps need TorchCAM: pip install torchcam (it is in utils_cv's "
            "install requirements; reinstall with pip install -e .)."
        ) from None
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    cls = getattr(methods, METHODS[method])
    return cls(model, target_layer=model[0], input_shape=(3, im_size, im_size))


def class_activation_maps(
    model_source,
    ims,
    classes: Sequence[int | str | None] | int | str | None = None,
    method: str = "gradcam",
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Class activation maps of ``ims`` (images, paths or a folder, as ``predict_proba`` takes).

    classes : per image the class to explain (index or name; None: the predicted class, for
    multi-label models the most probable one), or one for all images. method : a key of
    ``METHODS``. Returns (cams of shape (n, im_size, im_size), float32 in 0..1, upsampled to
    the model's input; probabilities (n, n_classes); the class index explained per image).
    """
    from utils_cv.classification.predict import as_image_list

    model, spec, device = _model_and_spec(model_source)
    ims = as_image_list(ims)
    targets = list(classes) if isinstance(classes, (list, tuple)) else [classes] * len(ims)
    if len(targets) != len(ims):
        raise ValueError(f"classes has {len(targets)} entries for {len(ims)} images.")
    was_training = model.training
    model.eval()
    x = torch.as_tensor(spec.preprocess(ims)).to(device)
    cams, probs, explained = [], [], []
    extractor = _cam_extractor(model, method, spec.im_size)
    try:
        with torch.enable_grad():
            for i in range(len(ims)):
                xi = x[i : i + 1].clone().requires_grad_(True)  # gradients reach a frozen body
                logits = model(xi)
                p = logits.sigmoid() if spec.multilabel else logits.softmax(dim=1)
                target = targets[i]
                if target is None:
                    target = int(p.argmax(dim=1))
                elif isinstance(target, str):
                    if target not in spec.classes:
                        raise ValueError(
                            f"Unknown class {target!r}; the model's classes: {list(spec.classes)}."
                        )
                    target = spec.classes.index(target)
                cam = extractor(int(target), logits)[0]
                cam = torch.nn.functional.interpolate(
                    cam[None].float(), size=(spec.im_size, spec.im_size), mode="bilinear"
                )[0, 0]
                cams.append(cam.clamp(0, 1).detach().cpu().numpy())
                probs.append(p.detach().float().cpu().numpy()[0])
                explained.append(int(target))
                model.zero_grad(set_to_none=True)
    finally:
        extractor.remove_hooks()
        model.train(was_training)
    n = spec.im_size
    cams_out = np.stack(cams).astype(np.float32) if cams else np.zeros((0, n, n), np.float32)
    probs_out = np.stack(probs) if probs else np.zeros((0, len(spec.classes)), np.float32)
    return cams_out, probs_out, explained


def overlay(im: Image.Image, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet"):
    """``cam`` (h, w), values 0..1, as a heat map over ``im`` resized to (w, h): RGB PIL image.

    alpha : weight of the heat map (0: only the image, 1: only the map).
    """
    import matplotlib

    im = im.convert("RGB").resize((cam.shape[1], cam.shape[0]))
    heat = matplotlib.colormaps[cmap](np.clip(cam, 0, 1))[..., :3]
    mixed = (1 - alpha) * np.asarray(im, np.float32) / 255 + alpha * heat
    return Image.fromarray((np.clip(mixed, 0, 1) * 255).astype(np.uint8))


def model_view(spec, im) -> Image.Image:
    """The image as the model sees it: read (path or image) and resized by ``spec``."""
    from utils_cv.classification.spec import as_rgb

    return spec.resize_im(as_rgb(im, spec.draft_size))


def plot_cams(
    model_source,
    ims,
    classes=None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    method: str = "gradcam",
    alpha: float = 0.5,
    tile_inches: float = 2.6,
):
    """A grid of Grad-CAM overlays, one per image, titled with the explained class and its
    probability (or ``titles``). Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    from utils_cv.classification.predict import as_image_list

    _, spec, _ = _model_and_spec(model_source)
    ims = as_image_list(ims)
    cams, probs, explained = class_activation_maps(model_source, ims, classes, method)
    n = max(1, len(ims))
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(tile_inches * ncols, tile_inches * nrows + 0.3), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, (im, cam) in enumerate(zip(ims, cams)):
        ax = axes.flat[i]
        ax.imshow(overlay(model_view(spec, im), cam, alpha))
        c = explained[i]
        default = f"{spec.classes[c]} ({probs[i, c]:.0%})"
        ax.set_title(titles[i] if titles is not None else default, fontsize="small")
    fig.tight_layout()
    return fig


def per_image_loss(y_true, y_score) -> np.ndarray:
    """Loss of each image: cross-entropy -log p(true class) for class indices (n,), mean
    binary cross-entropy over classes for multi-hot rows (n, n_classes). Natural log."""
    y_score = np.clip(np.asarray(y_score, dtype=np.float64), 1e-7, 1 - 1e-7)
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        bce = -(y_true * np.log(y_score) + (1 - y_true) * np.log(1 - y_score))
        return bce.mean(axis=1)
    return -np.log(y_score[np.arange(len(y_true)), y_true.astype(int)])


def top_losses(y_true, y_score, k: int = 6) -> np.ndarray:
    """Indices of the ``k`` images with the highest ``per_image_loss``, highest first."""
    losses = per_image_loss(y_true, y_score)
    return np.argsort(-losses, kind="stable")[:k]


def plot_top_losses_cam(
    model_source,
    files: Sequence,
    y_true,
    y_score,
    k: int = 6,
    ncols: int = 3,
    method: str = "gradcam",
):
    """Grad-CAM of the ``k`` validation images with the highest loss, for the predicted class,
    titled "predicted / true / loss" (single-label: class indices in ``y_true``). Returns the
    matplotlib Figure."""
    _, spec, _ = _model_and_spec(model_source)
    idx = top_losses(y_true, y_score, k)
    losses = per_image_loss(y_true, y_score)
    y_true = np.asarray(y_true)
    titles = []
    for i in idx:
        predicted = spec.classes[int(np.argmax(y_score[i]))]
        if y_true.ndim == 2:
            truth = ",".join(spec.classes[j] for j in np.flatnonzero(y_true[i] > 0.5)) or "-"
        else:
            truth = spec.classes[int(y_true[i])]
        titles.append(f"{predicted} / {truth} / {losses[i]:.2f}")
    fig = plot_cams(model_source, [files[i] for i in idx], None, titles, ncols, method)
    fig.suptitle("Top losses: predicted / true / loss (Grad-CAM of the prediction)")
    fig.tight_layout()
    return fig
