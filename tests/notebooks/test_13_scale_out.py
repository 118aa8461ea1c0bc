"""Notebook 13 with small parameters: 2 torchrun processes, a Ray Tune sweep, Ray Data prediction."""

import importlib.util

import pytest

from utils_cv.classification.data import sample_data_path

MISSING = [m for m in ("ray", "accelerate") if importlib.util.find_spec(m) is None]


@pytest.mark.notebooks
@pytest.mark.distributed
@pytest.mark.skipif(bool(MISSING), reason=f"needs the distributed extra ({MISSING} missing)")
def test_scale_out_small(run_notebook, tmp_path):
    scraps = run_notebook(
        "13_scale_out.ipynb",
        {
            "DATA_PATH": str(sample_data_path("objects_tiny")),
            "OUTPUT_DIR": str(tmp_path / "out"),
            "IM_SIZE": 64,
            "EPOCHS_HEAD": 2,
            "SWEEP_LRS": [1e-3, 1e-2],
        },
    )
    assert scraps["processes"] == 2
    assert 0 <= scraps["accuracy_1_process"] <= 1 and 0 <= scraps["accuracy_n_processes"] <= 1
    assert len(scraps["sweep_accuracies"]) == 2
    assert scraps["n_predictions"] == 24
    assert scraps["prediction_columns"][:4] == ["file", "status", "predicted", "top_k"]
