"""Notebook 03 with small parameters: the split it reports, speeds, size, ONNX parity."""

import shutil

import pytest

from utils_cv.classification.data import sample_data_path


@pytest.mark.notebooks
def test_accuracy_vs_speed_small(run_notebook, tmp_path):
    scraps = run_notebook(
        "03_training_accuracy_vs_speed.ipynb",
        {
            "DATA_PATH": str(sample_data_path("objects_tiny")),
            "MODEL_TYPE": "small_size",
            "EPOCHS_HEAD": 2,
            "EPOCHS_BODY": 1,
            "BATCH_SIZE": 4,
            "OUTPUT_DIR": str(tmp_path / "out"),
        },
    )
    assert scraps["split"] == "folders"
    assert len(scraps["training_accuracies"]) == 3
    assert 0 <= scraps["validation_accuracy"] <= 1
    assert scraps["training_seconds"] > 0
    assert scraps["inference_ms"] > 0 and scraps["onnx_inference_ms"] > 0
    # EfficientNet-Lite0 weights (float32) are about 14 MB
    assert 5 < scraps["model_size_mb"] < 30
    assert scraps["onnx_max_abs_diff"] < 1e-4


@pytest.mark.notebooks
def test_accuracy_vs_speed_random_split_of_class_folders(run_notebook, tmp_path):
    data = tmp_path / "data"
    for split_dir in (sample_data_path("objects_tiny") / "train").iterdir():
        shutil.copytree(split_dir, data / split_dir.name)
    scraps = run_notebook(
        "03_training_accuracy_vs_speed.ipynb",
        {
            "DATA_PATH": str(data),
            "MODEL_TYPE": "small_size",
            "EPOCHS_HEAD": 1,
            "EPOCHS_BODY": 0,
            "BATCH_SIZE": 4,
            "OUTPUT_DIR": str(tmp_path / "out"),
        },
    )
    assert scraps["split"] == "random"
    assert len(scraps["training_accuracies"]) == 1
