"""Training survives a messy real-world folder: notebook 01 and the sweep tool report every bad
file and train on exactly the good ones (issue 6)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from messy_data import TRAIN_VALID, make_messy_dataset

from utils_cv.classification.data import sample_data_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def messy(tmp_path):
    return make_messy_dataset(tmp_path / "messy", sample_data_path("objects"), TRAIN_VALID)


def reported_paths(csv: Path) -> dict[str, str]:
    issues = pd.read_csv(csv)
    return {str(Path(p).resolve()): r for p, r in zip(issues["path"], issues["reason"])}


def assert_every_bad_file_reported(messy, csv: Path):
    reported = reported_paths(csv)
    for path, reason in messy["bad"].items():
        assert str(Path(path).resolve()) in reported, f"{path} ({reason}) not in {csv}"


@pytest.mark.notebooks
def test_notebook_01_trains_on_the_good_files_of_a_messy_folder(messy, run_notebook, tmp_path):
    out = tmp_path / "out"
    scraps = run_notebook(
        "01_training_introduction.ipynb",
        {
            "DATA_PATH": str(messy["root"]),
            "IM_SIZE": 64,
            "EPOCHS_HEAD": 1,
            "EPOCHS": 0,
            "BATCH_SIZE": 4,
            "OUTPUT_DIR": str(out),
        },
    )
    assert scraps["num_images_used"] == messy["n_good"]
    assert_every_bad_file_reported(messy, out / "data_issues.csv")


@pytest.mark.notebooks
def test_sweep_tool_trains_on_a_messy_folder(messy, tmp_path):
    out = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "classification/tools/sweep.py"),
            "--inputs",
            str(messy["root"]),
            "--lrs",
            "0.01",
            "--epochs-heads",
            "1",
            "--im-sizes",
            "64",
            "--batch-sizes",
            "4",
            "--repeat",
            "1",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    csvs = list(out.rglob("data_issues.csv"))
    assert len(csvs) == 1
    assert_every_bad_file_reported(messy, csvs[0])
    results = pd.read_csv(out / "sweep_results.csv")
    assert len(results) == 1 and 0 <= results["accuracy"][0] <= 1
