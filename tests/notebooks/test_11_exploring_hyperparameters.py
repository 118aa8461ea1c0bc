"""Notebook 11: a two-run parameter sweep (64 px, one head epoch) on the tiny sample set records
its scraps."""

from __future__ import annotations

import pandas as pd
import pytest

from utils_cv.classification.data import sample_data_path

NOTEBOOK = "11_exploring_hyperparameters.ipynb"


@pytest.mark.notebooks
def test_11_exploring_hyperparameters(run_notebook, tmp_path):
    out_dir = tmp_path / "sweep"
    scraps = run_notebook(
        NOTEBOOK,
        {
            "DATA": [str(sample_data_path("objects_tiny"))],
            "REPS": 1,
            "ARCHITECTURES": ["efficientnet_lite0"],
            "IM_SIZES": [64],
            "RESIZES": [None],
            "LEARNING_RATES": [1e-3, 1e-2],
            "EPOCHS_HEAD": [1],
            "EPOCHS": [0],
            "OUTPUT_DIR": str(out_dir),
        },
    )

    assert scraps["nr_elements"] == 2
    assert 0 <= scraps["min_accuracy"] <= scraps["max_accuracy"] <= 1
    assert 0 < scraps["min_duration"] <= scraps["max_duration"]
    results = pd.read_csv(out_dir / "sweep_results.csv")
    assert results["lr"].tolist() == [1e-3, 1e-2]
    assert set(results["im_size"]) == {64} and set(results["epochs_head"]) == {1}
    assert (out_dir / "datacheck" / "objects_tiny" / "data_issues.csv").is_file()
    assert scraps["recorded_runs"] == 2  # one record per run, read back (records.read_runs)
