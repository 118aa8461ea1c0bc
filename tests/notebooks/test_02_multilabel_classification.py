"""Notebook 02 with small parameters."""

import pytest

from utils_cv.classification.data import sample_data_path


@pytest.mark.notebooks
def test_multilabel_small(run_notebook, tmp_path):
    scraps = run_notebook(
        "02_multilabel_classification.ipynb",
        {
            "DATA_PATH": str(sample_data_path("objects_multilabel_tiny")),
            "IM_SIZE": 64,
            "EPOCHS_HEAD": 3,
            "EPOCHS": 1,
            "BATCH_SIZE": 4,
            "OUTPUT_DIR": str(tmp_path / "out"),
        },
    )
    assert len(scraps["training_accuracies"]) == 4
    assert 0 <= scraps["acc_zol"] <= scraps["acc_hl"] <= 1
    assert 0 <= scraps["best_threshold"] <= 1
