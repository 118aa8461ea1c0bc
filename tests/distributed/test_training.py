"""Data-parallel training: 2 gloo processes under torchrun against 1 process, same seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from utils_cv.classification.data import sample_data_path
from utils_cv.classification.predict import image_paths
from utils_cv.classification.saved import load_model

pytestmark = pytest.mark.distributed

ARGS = ["--im-size", "64", "--epochs-head", "10", "--batch-size", "16", "--seed", "42"]


def train_command(out, processes: int, *extra) -> dict:
    """Run the training command on the objects sample; return its JSON summary."""
    data = str(sample_data_path("objects"))
    module = ["-m", "utils_cv.classification.train", data, "--out", str(out), *ARGS, *extra]
    if processes == 1:
        cmd = [sys.executable, *module]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            "29533",
            *module,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # rank 0 only reports
    return json.loads(lines[0])


def predicted_accuracy(model_dir) -> float:
    predictor = load_model(model_dir)
    files = image_paths([sample_data_path("objects") / "valid"])
    truth = np.array([predictor.classes.index(f.parent.name) for f in files])
    return float((predictor.predict_proba(files).argmax(1) == truth).mean())


def test_two_gloo_processes_match_one(tmp_path):
    one = train_command(tmp_path / "one", 1)
    two = train_command(tmp_path / "two", 2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["validation_accuracy"] > 0.5  # 4 classes
    # within 0.05 (2 of the 40 validation images), compared without float rounding noise
    assert abs(two["validation_accuracy"] - one["validation_accuracy"]) <= 0.05 + 1e-9
    # same files, same format; loads and predicts what the training run measured
    for name in ("one", "two"):
        assert sorted(p.name for p in (tmp_path / name).glob("model.*")) == [
            "model.json",
            "model.safetensors",
        ]
    assert predicted_accuracy(tmp_path / "two") == pytest.approx(two["validation_accuracy"])


def test_two_processes_fine_tune_with_ddp(tmp_path):
    summary = train_command(tmp_path / "ft", 2, "--epochs-head", "3", "--epochs", "1")
    assert summary["processes"] == 2
    assert summary["validation_accuracy"] > 0.5
    assert predicted_accuracy(tmp_path / "ft") == pytest.approx(summary["validation_accuracy"])
