"""The layout matrix: notebooks 01, 02, 03, 11 and 12, the sweep tool and the predict command on
every data layout users bring (class folders, train/ + valid/, images/ + labels.csv single- and
multi-label, odd file names), with tiny parameters. Each run must leave the data folder unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from layouts import LAYOUTS, SINGLE_LABEL_LAYOUTS, make_layout, snapshot

from utils_cv.classification.data import get_image_files, sample_data_path
from utils_cv.classification.saved import read_spec

REPO = Path(__file__).resolve().parents[2]
TINY = {"EPOCHS_HEAD": 1, "BATCH_SIZE": 4}
CLASSES = {"apple", "citrus", "flower", "tool"}


@pytest.fixture
def data(request, tmp_path):
    """The layout named by the test's parameter, and a check that nothing in it changed."""
    root = make_layout(request.param, tmp_path / "data")
    before = snapshot(root)
    yield request.param, root
    assert snapshot(root) == before, f"the {request.param} data folder was modified"


def expected_classes(layout: str) -> set[str]:
    if layout == "odd_names":
        from layouts import ODD_CLASSES

        return set(ODD_CLASSES.values())
    return CLASSES


@pytest.mark.notebooks
@pytest.mark.parametrize("data", ["labels_single", "odd_names"], indirect=True)
def test_notebook_01(data, run_notebook, tmp_path):
    """Notebook 01 on the layouts its other tests do not cover (it is the slowest notebook):
    train/ + valid/ in test_01_training_introduction.py and test_messy_data_training.py, class
    folders in test_10_mixed_formats.py (notebook 10's output)."""
    layout, root = data
    out = tmp_path / "out"
    scraps = run_notebook(
        "01_training_introduction.ipynb",
        {"DATA_PATH": str(root), "IM_SIZE": 64, "EPOCHS": 0, "OUTPUT_DIR": str(out), **TINY},
    )
    assert scraps["num_images_used"] == 24
    assert 0 <= scraps["validation_accuracy"] <= 1
    assert set(read_spec(scraps["model_dir"])[0].classes) == expected_classes(layout)


@pytest.mark.notebooks
@pytest.mark.parametrize("data", ["labels_multi", "class_folders"], indirect=True)
def test_notebook_02(data, run_notebook, tmp_path):
    layout, root = data
    scraps = run_notebook(
        "02_multilabel_classification.ipynb",
        {"DATA_PATH": str(root), "IM_SIZE": 64, "EPOCHS": 0, "OUTPUT_DIR": str(tmp_path), **TINY},
    )
    assert 0 <= scraps["acc_hl"] <= 1 and 0 <= scraps["acc_zol"] <= 1
    assert 0 < scraps["best_threshold"] < 1


@pytest.mark.notebooks
@pytest.mark.parametrize("data", LAYOUTS, indirect=True)
def test_notebook_03_then_predict(data, run_notebook, tmp_path):
    """Notebook 03 trains on the layout; the predict command then classifies every image of the
    data folder with the saved model (names with spaces and non-ASCII letters kept in its CSV)."""
    layout, root = data
    out = tmp_path / "out"
    scraps = run_notebook(
        "03_training_accuracy_vs_speed.ipynb",
        {
            "DATA_PATH": str(root),
            "MODEL_TYPE": "small_size",
            "EPOCHS_BODY": 0,
            "OUTPUT_DIR": str(out),
        }
        | TINY,
    )
    split = {"class_folders": "random", "labels_single": "column", "labels_multi": "column"}
    assert scraps["split"] == split.get(layout, "folders")
    assert 0 <= scraps["validation_accuracy"] <= 1
    assert scraps["onnx_max_abs_diff"] < 1e-4

    model_dir = out / "small_size"
    spec = read_spec(model_dir)[0]
    assert spec.multilabel == (layout == "labels_multi")
    assert set(spec.classes) == expected_classes(layout)
    csv = tmp_path / "predictions.csv"
    command = [sys.executable, "-m", "utils_cv.classification.predict", str(model_dir), str(root)]
    result = subprocess.run(
        [*command, "--out", str(csv)], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = pd.read_csv(csv, encoding="utf-8", keep_default_na=False)
    assert sorted(predictions["file"]) == sorted(str(p) for p in get_image_files(root))
    assert (predictions["status"] == "ok").all()
    assert set(predictions.columns) >= {f"prob_{c}" for c in spec.classes}


@pytest.mark.notebooks
@pytest.mark.parametrize("data", LAYOUTS, indirect=True)
def test_notebook_11(data, run_notebook, tmp_path):
    layout, root = data
    scraps = run_notebook(
        "11_exploring_hyperparameters.ipynb",
        {
            "DATA": [str(root)],
            "REPS": 1,
            "IM_SIZES": [64],
            "LEARNING_RATES": [3e-3],
            "EPOCHS_HEAD": [1],
            "OUTPUT_DIR": str(tmp_path / "sweep"),
        },
    )
    assert scraps["nr_elements"] == 1
    assert 0 <= scraps["min_accuracy"] <= scraps["max_accuracy"] <= 1


@pytest.mark.notebooks
@pytest.mark.parametrize("data", SINGLE_LABEL_LAYOUTS, indirect=True)
def test_notebook_12(data, run_notebook, tmp_path):
    layout, root = data
    scraps = run_notebook(
        "12_hard_negative_sampling.ipynb",
        {
            "DATA_PATH": str(root),
            "NEGATIVE_PATH": str(sample_data_path("negatives_tiny")),
            "IM_SIZE": 64,
            "EPOCHS": 0,
            "NEGATIVE_NUM": 2,
            "ROUNDS": 1,
            "OUTPUT_DIR": str(tmp_path / "out"),
            **TINY,
        },
    )
    assert len(scraps["round_valid_accuracies"]) == 2
    assert all(0 <= a <= 1 for a in scraps["round_valid_accuracies"])
    # the working set has one folder per class of the data, and the negatives
    work = tmp_path / "out" / "data"
    for split in ("train", "valid"):
        names = {d.name for d in (work / split).iterdir()}
        assert names == expected_classes(layout) | {"negative"}
    assert sum(1 for _ in work.rglob("*.*")) - 1 == 24 + 2 + 2 + 3  # marker file not counted


@pytest.mark.notebooks
@pytest.mark.parametrize("data", LAYOUTS, indirect=True)
def test_sweep_tool(data, tmp_path):
    """The sweep tool (a command, not the notebook) trains on the layout."""
    layout, root = data
    out = tmp_path / "sweep"
    sweep = [sys.executable, str(REPO / "classification/tools/sweep.py"), "--inputs", str(root)]
    sweep += ["--epochs-heads", "1", "--im-sizes", "64", "--batch-sizes", "4", "--repeat", "1"]
    sweep += ["--output", str(out)]
    result = subprocess.run(sweep, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = pd.read_csv(out / "sweep_results.csv")
    assert len(results) == 1 and 0 <= results["accuracy"][0] <= 1
