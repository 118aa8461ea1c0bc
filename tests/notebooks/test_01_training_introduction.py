"""Notebook 01 with small parameters: trains, records per-batch losses and per-epoch accuracies."""

import pytest

from utils_cv.classification.data import sample_data_path


@pytest.mark.notebooks
def test_training_introduction_small(run_notebook, tmp_path):
    scraps = run_notebook(
        "01_training_introduction.ipynb",
        {
            "DATA_PATH": str(sample_data_path("objects_tiny")),
            "IM_SIZE": 64,
            "EPOCHS_HEAD": 3,
            "EPOCHS": 1,
            "BATCH_SIZE": 4,
            "OUTPUT_DIR": str(tmp_path / "out"),
        },
    )
    # 3 cached head epochs + 1 fine-tuning epoch
    assert len(scraps["training_accuracies"]) == 4
    assert all(0 <= a <= 1 for a in scraps["training_accuracies"])
    assert len(scraps["training_losses"]) >= 4
    assert all(loss > 0 for loss in scraps["training_losses"])
    assert 0 <= scraps["validation_accuracy"] <= 1
    assert scraps["num_images_used"] == 24
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "data_issues.csv").is_file()
    assert (tmp_path / "out" / "run" / "metrics.csv").is_file()  # the run's record
