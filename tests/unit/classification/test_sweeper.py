"""ParameterSweeper: the grid, parameter checks, the resumable results CSV, result helpers."""

from __future__ import annotations

import shutil

import matplotlib
import pandas as pd
import pytest

from utils_cv.classification import sweeper as sweeper_module
from utils_cv.classification.data import sample_data_path
from utils_cv.classification.sweeper import (
    DEFAULT_PARAMS,
    RESULTS_FILE,
    ParameterSweeper,
    average_sweeper_df,
    check_parameter,
    clean_sweeper_df,
    plot_sweeper_df,
    read_finished_runs,
    results_columns,
    schedule_epochs,
)

matplotlib.use("Agg")


@pytest.fixture
def fake_training(monkeypatch):
    """Replace training with a fast fake; ``calls`` records (dataset folder name, params)."""
    calls = []

    def fake(data_path, params, files=None, early_stopping=False, patience=3, seed=42):
        calls.append((data_path.name, dict(params), files))
        return 0.5 + params["learning_rate"], 1.0 + seed

    monkeypatch.setattr(sweeper_module, "train_and_evaluate", fake)
    return calls


@pytest.fixture
def two_datasets(tmp_path):
    """Copies of the tiny sample set under two names."""
    paths = []
    for name in ("set_a", "set_b"):
        paths.append(tmp_path / name)
        shutil.copytree(sample_data_path("objects_tiny"), paths[-1])
    return paths


# --- the grid ----------------------------------------------------------------------------


def test_default_sweeper_has_one_permutation_of_defaults():
    assert ParameterSweeper().permutations == [DEFAULT_PARAMS]


def test_permutation_count_is_product_of_value_counts():
    sweeper = ParameterSweeper(
        learning_rate=[1e-4, 1e-3, 1e-2], im_size=[64, 96], transform=[True, False]
    )
    perms = sweeper.permutations
    assert len(perms) == 3 * 2 * 2
    assert len({tuple(p.values()) for p in perms}) == len(perms)
    assert all(set(p) == set(DEFAULT_PARAMS) for p in perms)
    sweeper.update_parameters(architecture=["efficientnet_lite0", "resnet18"], epochs=3)
    assert len(sweeper.permutations) == 24
    assert {p["epochs"] for p in sweeper.permutations} == {3}


def test_values_are_canonical_and_deduplicated():
    assert check_parameter("learning_rate", [1, 1.0, 0.001]) == [1.0, 0.001]
    assert check_parameter("epochs", 2) == [2]
    assert check_parameter("training_schedule", "body_only") == ["body_only"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"learning_rates": [1e-3]}, "Did you mean 'learning_rate'"),
        ({"lr": 1e-3}, "Unknown sweep parameter 'lr'"),
        ({"training_schedule": ["foo"]}, "'foo' must be one of head_only"),
        ({"learning_rate": [-1.0]}, "must be a number > 0"),
        ({"epochs": [1.5]}, "whole number"),
        ({"im_size": [True]}, "whole number"),
        ({"dropout": [1.0]}, "0 <= dropout < 1"),
        ({"transform": ["yes"]}, "True or False"),
        ({"architecture": ["no_such_net"]}, "Unknown architecture"),
        ({"batch_size": []}, "at least one value"),
    ],
)
def test_bad_parameters_raise_clear_errors(params, message):
    with pytest.raises(ValueError, match=message):
        ParameterSweeper(**params)


def test_bad_update_changes_nothing():
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2])
    with pytest.raises(ValueError):
        sweeper.update_parameters(im_size=[64], dropout=[2.0])
    assert sweeper.params["im_size"] == [DEFAULT_PARAMS["im_size"]]


def test_schedule_epochs_mapping():
    assert schedule_epochs("head_only", 4) == (4, 0)
    assert schedule_epochs("body_only", 4) == (0, 4)
    assert schedule_epochs("head_first_then_body", 4) == (1, 4)
    with pytest.raises(ValueError):
        schedule_epochs("sideways", 4)


# --- running (fake training) ---------------------------------------------------------------


def test_run_trains_every_run_and_writes_csv(fake_training, two_datasets, tmp_path):
    out_dir = tmp_path / "out"
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2], im_size=[64, 96])
    df = sweeper.run(two_datasets, reps=2, out_dir=out_dir, progress=False)

    assert len(fake_training) == 4 * 2 * 2
    assert list(df.index.names) == ["rep", "parameters", "dataset"]
    assert list(df.columns) == ["accuracy", "duration"]
    assert len(df) == 16
    assert set(df.index.get_level_values("dataset")) == {"set_a", "set_b"}
    assert df.xs(1, level="rep")["duration"].eq(44.0).all()  # rep 1 is seeded 42 + 1

    csv = pd.read_csv(out_dir / RESULTS_FILE)
    assert list(csv.columns) == results_columns()
    assert len(csv) == 16
    assert sorted(csv["accuracy"].unique()) == pytest.approx([0.501, 0.51])
    # The data check ran once per dataset, wrote its CSV there, and training used its files.
    for name in ("set_a", "set_b"):
        assert (out_dir / "datacheck" / name / "data_issues.csv").is_file()
        assert len(sweeper.data_reports[name].good_files) == 24
    assert all(files is not None and len(files) == 24 for _, _, files in fake_training)


def test_interrupted_sweep_resumes(fake_training, monkeypatch, two_datasets, tmp_path):
    out_dir = tmp_path / "out"
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2, 1e-1])
    fake = sweeper_module.train_and_evaluate

    def dies_on_third(*args, **kwargs):
        if len(fake_training) == 2:
            raise KeyboardInterrupt
        return fake(*args, **kwargs)

    monkeypatch.setattr(sweeper_module, "train_and_evaluate", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        sweeper.run(two_datasets, reps=1, out_dir=out_dir, progress=False)
    assert len(read_finished_runs(out_dir / RESULTS_FILE)) == 2

    monkeypatch.setattr(sweeper_module, "train_and_evaluate", fake)
    df = sweeper.run(two_datasets, reps=1, out_dir=out_dir, progress=False)
    assert len(fake_training) == 6  # 2 before the kill + the 4 left
    assert len(df) == 6
    assert len(pd.read_csv(out_dir / RESULTS_FILE)) == 6

    # Nothing left to do: no training, same results; more reps train only the new ones.
    again = sweeper.run(two_datasets, reps=1, out_dir=out_dir, progress=False)
    pd.testing.assert_frame_equal(again, df)
    sweeper.run(two_datasets, reps=2, out_dir=out_dir, progress=False)
    assert len(fake_training) == 12


def test_line_cut_by_a_kill_is_retrained(fake_training, tmp_path):
    out_dir = tmp_path / "out"
    data = sample_data_path("objects_tiny")
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2])
    sweeper.run(data, reps=1, out_dir=out_dir, progress=False)
    csv = out_dir / RESULTS_FILE
    csv.write_text(csv.read_text()[:-3])  # the last row loses the end of its duration
    assert len(read_finished_runs(csv)) == 1
    sweeper.run(data, reps=1, out_dir=out_dir, progress=False)
    assert len(fake_training) == 3
    assert len(read_finished_runs(csv)) == 2
    sweeper.run(data, reps=1, out_dir=out_dir, progress=False)
    assert len(fake_training) == 3


def test_foreign_results_file_is_refused(fake_training, tmp_path):
    (tmp_path / RESULTS_FILE).write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results file"):
        ParameterSweeper().run(sample_data_path("objects_tiny"), reps=1, out_dir=tmp_path)
    assert fake_training == []


def test_bad_inputs_fail_before_training(fake_training, tmp_path):
    data = sample_data_path("objects_tiny")
    with pytest.raises(FileNotFoundError):
        ParameterSweeper().run([data, tmp_path / "missing"], reps=1)
    with pytest.raises(ValueError, match="reps"):
        ParameterSweeper().run(data, reps=0)
    twin = tmp_path / "objects_tiny"
    shutil.copytree(data, twin)
    with pytest.raises(ValueError, match="Two datasets are named"):
        ParameterSweeper().run([data, twin], reps=1)
    one_class = tmp_path / "one_class"
    shutil.copytree(data / "train" / "apple", one_class / "apple")
    with pytest.raises(ValueError, match="one class"):
        ParameterSweeper().run([data, one_class], reps=1, out_dir=tmp_path / "out")
    assert fake_training == []
    assert not (tmp_path / "out" / RESULTS_FILE).exists()


# --- reading results ---------------------------------------------------------------------


def _results(fake_training, two_datasets, tmp_path) -> pd.DataFrame:
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2], dropout=0.2)
    return sweeper.run(two_datasets, reps=2, out_dir=tmp_path / "out", progress=False)


def test_clean_keeps_only_varying_parameters(fake_training, two_datasets, tmp_path):
    df = _results(fake_training, two_datasets, tmp_path)
    clean = clean_sweeper_df(df)
    assert set(clean.index.get_level_values("parameters")) == {
        "learning_rate=0.001",
        "learning_rate=0.01",
    }
    assert clean.index.names == df.index.names
    assert (clean.values == df.values).all()
    single = df[df.index.get_level_values("parameters").str.contains("learning_rate=0.001")]
    assert clean_sweeper_df(single).index.equals(single.index)  # nothing varies: labels kept


def test_average_over_reps_and_datasets(fake_training, two_datasets, tmp_path):
    clean = clean_sweeper_df(_results(fake_training, two_datasets, tmp_path))
    by_dataset = average_sweeper_df(clean, over="rep")
    assert list(by_dataset.index.names) == ["parameters", "dataset"]
    assert len(by_dataset) == 4
    assert by_dataset["duration"].eq(43.5).all()  # 1 + seed, seeds 42 and 43
    overall = average_sweeper_df(clean, over=["rep", "dataset"])
    assert list(overall.index) == ["learning_rate=0.001", "learning_rate=0.01"]
    assert overall["accuracy"].tolist() == pytest.approx([0.501, 0.51])
    with pytest.raises(ValueError, match="Cannot average"):
        average_sweeper_df(clean, over="epochs")


def test_plot_writes_values_on_bars(fake_training, two_datasets, tmp_path):
    clean = clean_sweeper_df(_results(fake_training, two_datasets, tmp_path))
    overall = average_sweeper_df(clean, over=["rep", "dataset"])
    fig = plot_sweeper_df(overall, sort_by="accuracy")
    ax_accuracy, ax_duration = fig.axes
    assert [t.get_text() for t in ax_accuracy.texts] == ["0.510", "0.501"]  # best on top
    assert [t.get_text() for t in ax_duration.texts] == ["43.5", "43.5"]
    labels = [t.get_text() for t in ax_accuracy.get_yticklabels()]
    assert labels == ["learning_rate=0.01", "learning_rate=0.001"]
    matplotlib.pyplot.close(fig)


# --- real training (tiny) ------------------------------------------------------------------


def test_real_sweep_on_tiny_data(tmp_path):
    """Two real runs: the frozen-body and the early-stopping unfrozen code paths."""
    sweeper = ParameterSweeper(
        training_schedule=["head_only", "body_only"],
        epochs=1,
        im_size=32,
        batch_size=8,
        transform=False,
        discriminative_lr=False,
        one_cycle_policy=False,
    )
    df = sweeper.run(
        sample_data_path("objects_tiny"),
        reps=1,
        out_dir=tmp_path,
        early_stopping=True,
        patience=1,
        progress=False,
    )
    assert len(df) == 2
    assert df["accuracy"].between(0, 1).all()
    assert (df["duration"] > 0).all()
    assert len(pd.read_csv(tmp_path / RESULTS_FILE)) == 2
