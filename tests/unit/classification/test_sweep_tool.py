"""classification/tools/sweep.py: flags, clear errors before training, a tiny resumable sweep."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from utils_cv.classification.data import sample_data_path

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "classification" / "tools" / "sweep.py"
FLAGS = [
    "--learning-rates",
    "--epochs",
    "--batch-sizes",
    "--im-sizes",
    "--architectures",
    "--transforms",
    "--dropouts",
    "--weight-decays",
    "--training-schedules",
    "--discriminative-lrs",
    "--one-cycle-policies",
    "--inputs",
    "--repeat",
    "--early-stopping",
    "--output",
]


@pytest.fixture(scope="module")
def tool():
    """The tool's module, imported from its file."""
    spec = importlib.util.spec_from_file_location("sweep_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything starts training."""
    from utils_cv.classification import sweeper

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(sweeper, "train_one_setting", refuse)


def test_help_explains_every_flag(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text
    assert "head_first_then_body" in text and "efficientnet_lite0" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--training-schedules", "foo"], "invalid choice: 'foo'"),
        (["--architectures", "resnet18", "nonet"], "invalid choice: 'nonet'"),
        (["--transforms", "maybe"], "'maybe' is not one of"),
        (["--learning-rates", "-0.1"], "'learning_rate': -0.1 must be a number > 0"),
        (["--dropouts", "1.5"], "0 <= dropout < 1"),
        (["--repeat", "0"], "--repeat"),
        (["--inputs", "no/such/folder"], "dataset folder not found"),
    ],
)
def test_bad_values_exit_before_training(tool, capsys, tmp_path, no_training, args, message):
    out_dir = tmp_path / "out"
    inputs = [] if "--inputs" in args else ["--inputs", str(sample_data_path("objects_tiny"))]
    with pytest.raises(SystemExit) as exit_info:
        tool.main([*args, *inputs, "--output", str(out_dir)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out_dir.exists()


def test_str_to_bool(tool):
    assert [tool.str_to_bool(w) for w in ("True", "yes", "ON", "1")] == [True] * 4
    assert [tool.str_to_bool(w) for w in ("false", "No", "off", "0")] == [False] * 4


def test_tiny_sweep_writes_csv_prints_table_and_resumes(tmp_path):
    out_dir = tmp_path / "out"
    command = [
        sys.executable,
        str(TOOL),
        *("--learning-rates", "1e-3", "1e-2"),
        *("--im-sizes", "32", "--epochs", "1", "--batch-sizes", "8"),
        *("--training-schedules", "head_only", "--transforms", "off"),
        *("--inputs", str(sample_data_path("objects_tiny"))),
        *("--repeat", "1", "--output", str(out_dir)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    csv = pd.read_csv(out_dir / "sweep_results.csv")
    assert len(csv) == 2
    assert csv["learning_rate"].tolist() == [0.001, 0.01]
    assert csv["accuracy"].between(0, 1).all() and (csv["duration"] > 0).all()
    assert (out_dir / "datacheck" / "objects_tiny" / "data_issues.csv").is_file()
    assert "24 good images" in result.stdout  # the data check summary
    assert "learning_rate=0.001" in result.stdout and "accuracy" in result.stdout
    assert "sweep" in result.stderr  # the progress bar

    # The same command again: everything is finished, nothing trains, same table.
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(pd.read_csv(out_dir / "sweep_results.csv")) == 2
    table = result.stdout[result.stdout.index("Accuracy (fraction)") :]
    assert again.stdout.endswith(table)
