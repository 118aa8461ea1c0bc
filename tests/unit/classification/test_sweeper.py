"""ParameterSweeper: the grid, parameter checks, the resumable results CSV, result helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

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


# Tiny real runs: 32 px, one head epoch, batches of 8 (about a second each).
TINY = {"im_size": 32, "epochs": 1, "batch_size": 8, "training_schedule": "head_only"}


@pytest.fixture
def spy_training(monkeypatch):
    """Real training that also records its calls: (dataset folder name, params, files)."""
    calls = []
    real = sweeper_module.train_one_setting

    def spy(data_path, params, files=None, early_stopping=False, patience=3, seed=42):
        calls.append((data_path.name, dict(params), files))
        return real(data_path, params, files, early_stopping, patience, seed)

    monkeypatch.setattr(sweeper_module, "train_one_setting", spy)
    return calls


def is_eighths(values) -> bool:
    """True when every value is k/8 (accuracy on the 8 validation images of objects_tiny)."""
    return all(0 <= v <= 1 and abs(v * 8 - round(v * 8)) < 1e-6 for v in values)


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
    assert check_parameter("freeze_bn_stats", [True, False, True]) == [True, False]


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
        ({"freeze_bn_stats": [1]}, "True or False"),
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


# --- running (tiny real training) -----------------------------------------------------------


def test_run_trains_every_run_and_writes_csv(spy_training, two_datasets, tmp_path):
    out_dir = tmp_path / "out"
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2], **TINY)
    df = sweeper.run(two_datasets, reps=1, out_dir=out_dir, progress=False)

    assert len(spy_training) == 2 * 2
    assert list(df.index.names) == ["rep", "parameters", "dataset"]
    assert list(df.columns) == ["accuracy", "duration"]
    assert len(df) == 4
    assert set(df.index.get_level_values("dataset")) == {"set_a", "set_b"}
    assert is_eighths(df["accuracy"]) and (df["duration"] > 0).all()
    # The same seed and data give the same model: set_a and set_b (copies) agree per run.
    by_set = df["accuracy"].unstack("dataset")
    assert (by_set["set_a"] == by_set["set_b"]).all()

    csv = pd.read_csv(out_dir / RESULTS_FILE)
    assert list(csv.columns) == results_columns()
    assert len(csv) == 4
    assert sorted(csv["accuracy"]) == pytest.approx(sorted(df["accuracy"]))
    # The data check ran once per dataset, wrote its CSV there, and training used its files.
    for name in ("set_a", "set_b"):
        assert (out_dir / "datacheck" / name / "data_issues.csv").is_file()
        assert len(sweeper.data_reports[name].good_files) == 24
    assert all(files is not None and len(files) == 24 for _, _, files in spy_training)
    assert all(params["im_size"] == 32 for _, params, _ in spy_training)


def test_interrupted_sweep_resumes(spy_training, monkeypatch, two_datasets, tmp_path):
    out_dir = tmp_path / "out"
    sweeper = ParameterSweeper(**TINY)
    spy = sweeper_module.train_one_setting

    def dies_on_second(*args, **kwargs):
        if len(spy_training) == 1:
            raise KeyboardInterrupt
        return spy(*args, **kwargs)

    monkeypatch.setattr(sweeper_module, "train_one_setting", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        sweeper.run(two_datasets, reps=1, out_dir=out_dir, progress=False)
    assert len(read_finished_runs(out_dir / RESULTS_FILE)) == 1

    monkeypatch.setattr(sweeper_module, "train_one_setting", spy)
    df = sweeper.run(two_datasets, reps=1, out_dir=out_dir, progress=False)
    assert len(spy_training) == 2  # 1 before the kill + the 1 left
    assert len(df) == 2
    assert len(pd.read_csv(out_dir / RESULTS_FILE)) == 2

    # Nothing left to do: no training, same results; more reps train only the new ones.
    again = sweeper.run(two_datasets, reps=1, out_dir=out_dir, progress=False)
    pd.testing.assert_frame_equal(again, df)
    assert len(spy_training) == 2
    sweeper.run(two_datasets, reps=2, out_dir=out_dir, progress=False)
    assert len(spy_training) == 4


def test_line_cut_by_a_kill_is_retrained(spy_training, tmp_path):
    out_dir = tmp_path / "out"
    data = sample_data_path("objects_tiny")
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2], **TINY)
    sweeper.run(data, reps=1, out_dir=out_dir, progress=False)
    csv = out_dir / RESULTS_FILE
    csv.write_text(csv.read_text()[:-3])  # the last row loses the end of its duration
    assert len(read_finished_runs(csv)) == 1
    sweeper.run(data, reps=1, out_dir=out_dir, progress=False)
    assert len(spy_training) == 3
    assert len(read_finished_runs(csv)) == 2
    sweeper.run(data, reps=1, out_dir=out_dir, progress=False)
    assert len(spy_training) == 3


def test_foreign_results_file_is_refused(spy_training, tmp_path):
    (tmp_path / RESULTS_FILE).write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results file"):
        ParameterSweeper().run(sample_data_path("objects_tiny"), reps=1, out_dir=tmp_path)
    assert spy_training == []


def test_bad_inputs_fail_before_training(spy_training, tmp_path):
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
    assert spy_training == []
    assert not (tmp_path / "out" / RESULTS_FILE).exists()


# --- reading results ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> pd.DataFrame:
    """A real tiny sweep: 2 learning rates x 2 datasets x 2 reps (dropout fixed)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    datasets = []
    for name in ("set_a", "set_b"):
        datasets.append(Path(shutil.copytree(sample_data_path("objects_tiny"), tmp_path / name)))
    sweeper = ParameterSweeper(learning_rate=[1e-3, 1e-2], dropout=0.2, **TINY)
    return sweeper.run(datasets, reps=2, out_dir=tmp_path / "out", progress=False)


def test_clean_keeps_only_varying_parameters(results):
    df = results
    clean = clean_sweeper_df(df)
    assert set(clean.index.get_level_values("parameters")) == {
        "learning_rate=0.001",
        "learning_rate=0.01",
    }
    assert clean.index.names == df.index.names
    assert (clean.values == df.values).all()
    single = df[df.index.get_level_values("parameters").str.contains("learning_rate=0.001")]
    assert clean_sweeper_df(single).index.equals(single.index)  # nothing varies: labels kept


def test_average_over_reps_and_datasets(results):
    clean = clean_sweeper_df(results)
    by_dataset = average_sweeper_df(clean, over="rep")
    assert list(by_dataset.index.names) == ["parameters", "dataset"]
    assert len(by_dataset) == 4
    first = by_dataset.loc[("learning_rate=0.001", "set_a")]
    rows = clean.xs(("learning_rate=0.001", "set_a"), level=("parameters", "dataset"))
    assert first["accuracy"] == pytest.approx(rows["accuracy"].mean())
    assert first["duration"] == pytest.approx(rows["duration"].mean())
    overall = average_sweeper_df(clean, over=["rep", "dataset"])
    assert list(overall.index) == ["learning_rate=0.001", "learning_rate=0.01"]
    for label in overall.index:
        rows = clean[clean.index.get_level_values("parameters") == label]
        assert overall.loc[label, "accuracy"] == pytest.approx(rows["accuracy"].mean())
    with pytest.raises(ValueError, match="Cannot average"):
        average_sweeper_df(clean, over="epochs")


def test_plot_writes_values_on_bars(results):
    overall = average_sweeper_df(clean_sweeper_df(results), over=["rep", "dataset"])
    fig = plot_sweeper_df(overall, sort_by="accuracy")
    ax_accuracy, ax_duration = fig.axes
    best_first = overall.sort_values("accuracy", ascending=False)
    texts = [t.get_text() for t in ax_accuracy.texts]
    assert texts == [f"{v:.3f}" for v in best_first["accuracy"]]
    assert [t.get_text() for t in ax_duration.texts] == [f"{v:.1f}" for v in best_first["duration"]]
    labels = [t.get_text() for t in ax_accuracy.get_yticklabels()]
    assert labels == list(best_first.index)
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
        freeze_bn_stats=False,
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
