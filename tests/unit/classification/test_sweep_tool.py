"""classification/tools/sweep.py: one flag per sweep parameter, clear errors before training,
a tiny resumable sweep."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from utils_cv.classification.data import sample_data_path
from utils_cv.classification.sweeper import DEFAULT_PARAMS

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "classification" / "tools" / "sweep.py"
FLAGS = [
    "--backbones",
    "--im-sizes",
    "--resizes",
    "--heads",
    "--dropouts",
    "--feature-stages",
    "--epochs-heads",
    "--epochs",
    "--lrs",
    "--batch-sizes",
    "--weight-decays",
    "--aug-passes",
    "--body-lr-ratios",
    "--one-cycles",
    "--freeze-bn-stats",
    "--transforms",
    "--patience",
    "--label-smoothings",
    "--inputs",
    "--repeat",
    "--output",
    "--seed",
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


def test_one_flag_per_sweep_parameter(tool):
    assert [name for name, *_ in tool.SWEEP_FLAGS] == list(DEFAULT_PARAMS)
    assert len({flag for _, flag, *_ in tool.SWEEP_FLAGS}) == len(DEFAULT_PARAMS)


def test_help_explains_every_flag(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text
    assert "efficientnet_lite0" in text and "squish, crop, pad" in text
    assert "(default: the backbone's)" in text and "(default: 0.003)" in text


def test_flags_become_sweep_parameters(tool):
    args = tool.build_parser().parse_args(
        ["--lrs", "1e-3", "1e-2", "--epochs-heads", "5", "--resizes", "crop", "pad"]
        + ["--freeze-bn-stats", "true", "off", "--patience", "2"]
    )
    assert tool.sweep_parameters(args) == {
        "resize": ["crop", "pad"],
        "epochs_head": [5],
        "lr": [1e-3, 1e-2],
        "freeze_bn_stats": [True, False],
        "patience": [2],
    }
    sweeper = tool.sweeper_from_args(args)
    assert len(sweeper.permutations) == 2 * 2 * 2
    assert all(p["epochs_head"] == 5 and p["batch_size"] == 16 for p in sweeper.permutations)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resizes", "stretch"], "invalid choice: 'stretch'"),
        (["--heads", "deep"], "invalid choice: 'deep'"),
        (["--backbones", "resnet18", "nonet"], "Sweep parameter 'backbone': Unknown backbone"),
        (["--transforms", "maybe"], "'maybe' is not one of"),
        (["--lrs", "-0.1"], "Sweep parameter 'lr': -0.1 is not valid; expected a number > 0"),
        (["--dropouts", "1.5"], "0 <= dropout < 1"),
        (["--epochs-heads", "1.5"], "invalid int value: '1.5'"),
        (["--learning-rates", "1e-3"], "--learning-rates is gone: use --lrs"),
        (["--early-stopping"], "--early-stopping is gone: use --patience N"),
        (["--training-schedules", "head_only"], "use --epochs-heads and --epochs"),
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


def test_old_results_folder_exits_with_a_clear_error(tool, capsys, tmp_path, no_training):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = "rep,dataset,learning_rate,architecture,training_schedule,accuracy,duration\n"
    (out_dir / "sweep_results.csv").write_text(old)
    code = tool.main(["--inputs", str(sample_data_path("objects_tiny")), "--output", str(out_dir)])
    assert code == 2
    assert "earlier version of the sweeper" in capsys.readouterr().err
    assert (out_dir / "sweep_results.csv").read_text() == old


def test_str_to_bool(tool):
    assert [tool.str_to_bool(w) for w in ("True", "yes", "ON", "1")] == [True] * 4
    assert [tool.str_to_bool(w) for w in ("false", "No", "off", "0")] == [False] * 4


def test_tiny_sweep_writes_csv_prints_table_and_resumes(tmp_path):
    out_dir = tmp_path / "out"
    command = [
        sys.executable,
        str(TOOL),
        *("--lrs", "1e-3", "1e-2"),
        *("--im-sizes", "64", "--epochs-heads", "1", "--aug-passes", "1", "--batch-sizes", "8"),
        *("--transforms", "off"),
        *("--inputs", str(sample_data_path("objects_tiny"))),
        *("--repeat", "1", "--output", str(out_dir)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    csv = pd.read_csv(out_dir / "sweep_results.csv")
    assert len(csv) == 2
    assert csv["lr"].tolist() == [0.001, 0.01]
    assert set(csv["im_size"]) == {64} and set(csv["epochs_head"]) == {1}
    assert set(csv["transform"]) == {False} and set(csv["epochs"]) == {0}
    assert csv["accuracy"].between(0, 1).all() and (csv["duration"] > 0).all()
    assert (out_dir / "datacheck" / "objects_tiny" / "data_issues.csv").is_file()
    assert "24 good images" in result.stdout  # the data check summary
    assert "lr=0.001" in result.stdout and "accuracy" in result.stdout
    assert "sweep" in result.stderr  # the progress bar

    # The same command again: everything is finished, nothing trains, same table.
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(pd.read_csv(out_dir / "sweep_results.csv")) == 2
    assert "Data check" not in again.stdout
    table = result.stdout[result.stdout.index("Accuracy (fraction)") :]
    assert again.stdout.endswith(table)
