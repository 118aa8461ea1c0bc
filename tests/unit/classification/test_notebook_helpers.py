"""Small helpers the notebooks call: data.dataset_paths (validation images of either layout) and
predict.measure_model (size and speed of a saved model, notebook 03)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from utils_cv.classification.data import dataset_paths
from utils_cv.classification.predict import measure_model
from utils_cv.classification.saved import model_size_mb, save_model
from utils_cv.classification.spec import ModelSpec

# --- data.dataset_paths ---------------------------------------------------------------------


def test_dataset_paths_of_class_folders_and_of_labels_csv():
    paths = ["/d/valid/b/2.jpg", "/d/valid/a/1.jpg"]
    assert dataset_paths(SimpleNamespace(items=paths)) == [Path(p) for p in paths]
    df = pd.DataFrame({"path": paths, "labels": [["a"], ["b", "a"]]})
    assert dataset_paths(SimpleNamespace(items=df)) == [Path(p) for p in paths]


def test_dataset_paths_of_real_dataloaders(make_dls, objects_tiny, multilabel_tiny):
    dls = make_dls(objects_tiny)
    valid = dataset_paths(dls.valid_ds)
    assert valid == list(dls.valid_ds.items) and len(valid) == 8
    dls = make_dls(multilabel_tiny)
    valid = dataset_paths(dls.valid_ds)
    assert len(valid) == 5 and all(p.is_file() for p in valid)
    assert valid == [Path(p) for p in dls.valid_ds.items["path"]]


# --- predict.measure_model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained 32 px EfficientNet-Lite0 with two classes, saved with save_model."""
    spec = ModelSpec(im_size=32, classes=("a", "b"), multilabel=False)
    learn = SimpleNamespace(spec=spec, model=spec.build_network(pretrained=False))
    return save_model(learn, tmp_path_factory.mktemp("measure") / "model")


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_measure_model_reports_size_and_speed(model_dir, runtime):
    size = model_size_mb(model_dir)
    result = measure_model(model_dir, runtime, threads=1)
    assert set(result) == {"model_size_mb", "latency_ms", "throughput"}
    # The size is the saved folder's, not counting anything the runtime adds.
    assert result["model_size_mb"] == size and 1 < size < 30
    assert result["latency_ms"] > 0 and result["throughput"] > 0
    assert model_size_mb(model_dir) == size


def test_measure_model_refuses_an_unknown_runtime(model_dir):
    with pytest.raises(ValueError, match="runtime must be one of torch, onnx"):
        measure_model(model_dir, "tensorrt")
