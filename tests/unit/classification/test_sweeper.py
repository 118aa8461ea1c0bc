"""ParameterSweeper: parameters are ModelSpec and TrainConfig fields, every run trains through
train.train, the resumable results CSV and the result helpers.

Real runs are tiny: objects_tiny at 64 px, one head epoch, one augmented pass, batches of 8.
"""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from utils_cv.classification import sweeper as sweeper_module
from utils_cv.classification import train as train_module
from utils_cv.classification.data import sample_data_path
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.sweeper import (
    CONFIG_PARAMS,
    DEFAULT_PARAMS,
    NOT_SWEPT,
    RESULTS_FILE,
    SPEC_PARAMS,
    ParameterSweeper,
    average_sweeper_df,
    check_parameter,
    clean_sweeper_df,
    plot_sweeper_df,
    read_finished_runs,
    resolve,
    results_columns,
    settings,
)
from utils_cv.classification.train import TrainConfig

matplotlib.use("Agg")

TINY_CONFIG = {"epochs_head": 1, "aug_passes": 1, "batch_size": 8}
TINY = {"im_size": 64, **TINY_CONFIG}
LRS = [1e-3, 1e-2]


def is_eighths(values) -> bool:
    """True when every value is k/8 (accuracy on the 8 validation images of objects_tiny)."""
    return all(0 <= v <= 1 and abs(v * 8 - round(v * 8)) < 1e-6 for v in values)


def copy_tiny(folder: Path, names=("set_a", "set_b")) -> list[Path]:
    """Copies of objects_tiny under ``names`` in ``folder``."""
    return [Path(shutil.copytree(sample_data_path("objects_tiny"), folder / n)) for n in names]


def spy_on(monkeypatch, name: str, module=sweeper_module) -> list:
    """Record the calls of ``module.name`` (still calling the real function); returns the list."""
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything starts training."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(sweeper_module, "train_one_setting", refuse)


# --- parameters: the fields of ModelSpec and TrainConfig ------------------------------------


def test_parameters_and_defaults_are_the_dataclasses():
    config_fields = [f.name for f in fields(TrainConfig)]
    assert list(CONFIG_PARAMS) == [n for n in config_fields if n not in NOT_SWEPT]
    assert set(NOT_SWEPT) <= set(config_fields)
    assert set(SPEC_PARAMS) <= {f.name for f in fields(ModelSpec)}
    assert list(DEFAULT_PARAMS) == [*SPEC_PARAMS, *CONFIG_PARAMS]
    config = TrainConfig()
    assert all(DEFAULT_PARAMS[n] == getattr(config, n) for n in CONFIG_PARAMS)
    assert DEFAULT_PARAMS["dropout"] == ModelSpec().dropout
    assert DEFAULT_PARAMS["im_size"] is None and DEFAULT_PARAMS["resize"] is None
    # The defaults resolve to exactly what train.train trains with by default.
    spec, config = settings({})
    assert spec == ModelSpec() and config == TrainConfig()
    assert ParameterSweeper().permutations == [resolve({})]
    assert resolve({})["im_size"] == ModelSpec().im_size == 300


def test_settings_builds_the_spec_and_config_of_a_run():
    spec, config = settings({"backbone": "resnet18", "resize": "pad", "lr": 0.01}, seed=7)
    assert (spec.backbone, spec.im_size, spec.resize) == ("resnet18", 224, "pad")
    assert (config.lr, config.seed, config.epochs_head) == (0.01, 7, TrainConfig().epochs_head)
    with pytest.raises(ValueError, match="Unknown sweep parameter 'seed'"):
        settings({"seed": 1})


def test_permutation_count_is_product_of_value_counts():
    sweeper = ParameterSweeper(lr=[1e-4, 1e-3, 1e-2], im_size=[64, 96], transform=[True, False])
    perms = sweeper.permutations
    assert len(perms) == 3 * 2 * 2
    assert len({tuple(p.values()) for p in perms}) == len(perms)
    assert all(list(p) == list(DEFAULT_PARAMS) for p in perms)
    sweeper.update_parameters(backbone=["efficientnet_lite0", "resnet18"], epochs=3)
    assert len(sweeper.permutations) == 24
    assert {p["epochs"] for p in sweeper.permutations} == {3}


def test_permutations_resolve_backbone_defaults_and_merge_duplicates():
    sweeper = ParameterSweeper(im_size=[None, 300, 160], backbone=["efficientnet_lite0"])
    assert [p["im_size"] for p in sweeper.permutations] == [300, 160]
    assert {p["resize"] for p in sweeper.permutations} == {"squish"}
    sizes = ParameterSweeper(backbone=["efficientnet_lite0", "efficientnet_lite2"]).permutations
    assert [p["im_size"] for p in sizes] == [300, 260]


def test_values_are_canonical_and_deduplicated():
    assert check_parameter("lr", [1, 1.0, 0.001]) == [1.0, 0.001]
    assert all(isinstance(v, float) for v in check_parameter("lr", [1, 2]))
    assert check_parameter("epochs", 2) == [2]
    assert check_parameter("resize", "crop") == ["crop"]
    assert check_parameter("im_size", [None, 64]) == [None, 64]
    assert check_parameter("freeze_bn_stats", [True, False, True]) == [True, False]
    assert check_parameter("dropout", [0, 0.5]) == [0.0, 0.5]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lrs": [1e-3]}, "Did you mean 'lr'"),
        ({"epochs_heads": [1]}, "Did you mean 'epochs_head'"),
        ({"learning_rate": 1e-3}, "Use lr instead"),
        ({"architecture": "resnet18"}, "Use backbone instead"),
        ({"training_schedule": "head_only"}, "Use epochs_head and epochs"),
        ({"seed": 1}, "not swept: repetition r is seeded"),
        ({"valid_pct": 0.3}, "not swept"),
        ({"lr": [-1.0]}, "Sweep parameter 'lr': -1.0 is not valid; expected a number > 0"),
        ({"epochs": [1.5]}, "Sweep parameter 'epochs': 1.5 is not valid; expected a whole"),
        ({"im_size": [True]}, "Sweep parameter 'im_size': True is not valid"),
        ({"resize": ["stretch"]}, "expected one of squish, crop, pad"),
        ({"head": ["deep"]}, "Sweep parameter 'head': 'deep' is not valid; expected one of mlp"),
        ({"dropout": [1.0]}, "0 <= dropout < 1"),
        ({"transform": ["yes"]}, "True or False"),
        ({"freeze_bn_stats": [1]}, "Sweep parameter 'freeze_bn_stats': 1 is not valid"),
        ({"body_lr_ratio": [0.5]}, "a number >= 1"),
        ({"backbone": ["no_such_net"]}, "Sweep parameter 'backbone': Unknown backbone"),
        ({"batch_size": []}, "'batch_size' needs at least one value"),
    ],
)
def test_bad_parameters_raise_clear_errors(params, message):
    with pytest.raises(ValueError, match=message):
        ParameterSweeper(**params)


def test_bad_update_changes_nothing():
    sweeper = ParameterSweeper(lr=[1e-3, 1e-2])
    with pytest.raises(ValueError):
        sweeper.update_parameters(im_size=[64], dropout=[2.0])
    assert sweeper.params["im_size"] == [None]


# --- a real tiny sweep through train.train --------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 learning rates x 2 datasets (copies of objects_tiny) x 2 reps, with train.train spied.

    Returns (sweeper, df, out_dir, datasets, calls of train.train).
    """
    tmp_path = tmp_path_factory.mktemp("sweep")
    datasets = copy_tiny(tmp_path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = spy_on(monkeypatch, "train", train_module)
        sweeper = ParameterSweeper(lr=LRS, **TINY)
        df = sweeper.run(datasets, reps=2, out_dir=tmp_path / "out", progress=False)
    return sweeper, df, tmp_path / "out", datasets, calls


def test_every_run_trains_through_train_train(sweep):
    sweeper, df, out_dir, datasets, calls = sweep
    assert len(calls) == 2 * 2 * 2
    seen = set()
    for args, kwargs in calls:
        data_path, spec, config = args
        assert spec == ModelSpec(im_size=64)
        assert config == TrainConfig(lr=config.lr, seed=config.seed, **TINY_CONFIG)
        assert kwargs["progress"] is False and kwargs["record_train_metrics"] is False
        # training used the data check's good files
        assert sorted(kwargs["files"]) == sorted(sweeper.data_reports[data_path.name].good_files)
        seen.add((data_path.name, config.lr, config.seed))
    assert seen == {(d.name, lr, 42 + rep) for d in datasets for lr in LRS for rep in (0, 1)}


def test_run_returns_results_and_writes_csv(sweep):
    sweeper, df, out_dir, _, _ = sweep
    assert list(df.index.names) == ["rep", "parameters", "dataset"]
    assert list(df.columns) == ["accuracy", "duration"]
    assert len(df) == 8
    assert set(df.index.get_level_values("dataset")) == {"set_a", "set_b"}
    assert is_eighths(df["accuracy"]) and (df["duration"] > 0).all()
    # The same seed and data give the same model: set_a and set_b (copies) agree per run.
    by_set = df["accuracy"].unstack("dataset")
    assert (by_set["set_a"] == by_set["set_b"]).all()

    csv = pd.read_csv(out_dir / RESULTS_FILE)
    assert list(csv.columns) == results_columns()
    assert len(csv) == 8
    assert sorted(csv["lr"].unique()) == LRS
    assert set(csv["im_size"]) == {64} and set(csv["resize"]) == {"squish"}
    assert set(csv["epochs_head"]) == {1} and set(csv["dropout"]) == {ModelSpec().dropout}
    assert sorted(csv["accuracy"]) == pytest.approx(sorted(df["accuracy"]))
    # The data check ran once per dataset and wrote its CSV.
    for name in ("set_a", "set_b"):
        assert (out_dir / "datacheck" / name / "data_issues.csv").is_file()
        assert len(sweeper.data_reports[name].good_files) == 24


def test_interrupted_sweep_resumes(sweep, monkeypatch, tmp_path):
    sweeper, df, out_dir, datasets, _ = sweep
    out = Path(shutil.copytree(out_dir, tmp_path / "out"))
    csv = out / RESULTS_FILE
    lines = csv.read_text().splitlines(keepends=True)
    # Killed while writing the 7th run: 6 complete runs and a cut line.
    csv.write_text("".join(lines[:7]) + lines[7][:-5])
    assert len(read_finished_runs(csv)) == 6

    # Killed again before anything finished: nothing is lost.
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeper_module, "train_one_setting", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sweeper.run(datasets, reps=2, out_dir=out, progress=False)
    assert len(read_finished_runs(csv)) == 6
    monkeypatch.undo()

    calls = spy_on(monkeypatch, "train_one_setting")
    resumed = sweeper.run(datasets, reps=2, out_dir=out, progress=False)
    assert len(calls) == 2  # the cut run and the one never started
    pd.testing.assert_series_equal(resumed["accuracy"], df["accuracy"])
    assert len(read_finished_runs(csv)) == 8
    assert len(pd.read_csv(csv)) == 8  # the cut line was removed, not kept as a row

    # Nothing left to do: no training, same results.
    again = sweeper.run(datasets, reps=2, out_dir=out, progress=False)
    pd.testing.assert_frame_equal(again, resumed)
    assert len(calls) == 2


def test_old_results_file_is_refused_and_kept(no_training, tmp_path):
    old = (
        "rep,dataset,learning_rate,epochs,batch_size,im_size,architecture,transform,dropout,"
        "weight_decay,training_schedule,discriminative_lr,one_cycle_policy,freeze_bn_stats,"
        "accuracy,duration\n"
        "0,objects_tiny,0.001,5,16,224,efficientnet_lite0,True,0.5,0.01,head_first_then_body,"
        "True,True,True,0.75,12.5\n"
    )
    (tmp_path / RESULTS_FILE).write_text(old)
    with pytest.raises(ValueError, match="earlier version of the sweeper") as err:
        ParameterSweeper().run(sample_data_path("objects_tiny"), reps=1, out_dir=tmp_path)
    assert "Choose another output folder" in str(err.value)
    assert "learning_rate -> lr" in str(err.value)
    assert (tmp_path / RESULTS_FILE).read_text() == old


def test_foreign_results_file_is_refused(no_training, tmp_path):
    (tmp_path / RESULTS_FILE).write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results file"):
        ParameterSweeper().run(sample_data_path("objects_tiny"), reps=1, out_dir=tmp_path)


def test_bad_inputs_fail_before_training(no_training, tmp_path):
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
    assert not (tmp_path / "out" / RESULTS_FILE).exists()
    # A timm architecture without pretrained weights fails before any data check or training.
    with pytest.raises(ValueError, match="Backbone 'resnet26d': no pretrained weights"):
        ParameterSweeper(backbone="resnet26d").run(data, reps=1, out_dir=tmp_path / "timm")
    assert not (tmp_path / "timm").exists()


# --- reading results -----------------------------------------------------------------------


def test_clean_keeps_only_varying_parameters(sweep):
    df = sweep[1]
    clean = clean_sweeper_df(df)
    assert set(clean.index.get_level_values("parameters")) == {"lr=0.001", "lr=0.01"}
    assert clean.index.names == df.index.names
    assert (clean.values == df.values).all()
    single = df[df.index.get_level_values("parameters").str.contains("lr=0.001")]
    assert clean_sweeper_df(single).index.equals(single.index)  # nothing varies: labels kept


def test_average_over_reps_and_datasets(sweep):
    clean = clean_sweeper_df(sweep[1])
    by_dataset = average_sweeper_df(clean, over="rep")
    assert list(by_dataset.index.names) == ["parameters", "dataset"]
    assert len(by_dataset) == 4
    first = by_dataset.loc[("lr=0.001", "set_a")]
    rows = clean.xs(("lr=0.001", "set_a"), level=("parameters", "dataset"))
    assert first["accuracy"] == pytest.approx(rows["accuracy"].mean())
    assert first["duration"] == pytest.approx(rows["duration"].mean())
    overall = average_sweeper_df(clean, over=["rep", "dataset"])
    assert list(overall.index) == ["lr=0.001", "lr=0.01"]
    for label in overall.index:
        rows = clean[clean.index.get_level_values("parameters") == label]
        assert overall.loc[label, "accuracy"] == pytest.approx(rows["accuracy"].mean())
    with pytest.raises(ValueError, match="Cannot average"):
        average_sweeper_df(clean, over="epochs")


def test_plot_writes_values_on_bars(sweep):
    overall = average_sweeper_df(clean_sweeper_df(sweep[1]), over=["rep", "dataset"])
    fig = plot_sweeper_df(overall, sort_by="accuracy")
    ax_accuracy, ax_duration = fig.axes
    best_first = overall.sort_values("accuracy", ascending=False)
    texts = [t.get_text() for t in ax_accuracy.texts]
    assert texts == [f"{v:.3f}" for v in best_first["accuracy"]]
    assert [t.get_text() for t in ax_duration.texts] == [f"{v:.1f}" for v in best_first["duration"]]
    labels = [t.get_text() for t in ax_accuracy.get_yticklabels()]
    assert labels == list(best_first.index)
    matplotlib.pyplot.close(fig)


# --- the fine-tuning path ------------------------------------------------------------------


def test_real_sweep_with_fine_tuning(tmp_path, monkeypatch):
    """Two real runs through the whole recipe: head, then fine-tuning with early stopping, with
    batch-norm statistics frozen or updating, a linear head and cropped images."""
    calls = spy_on(monkeypatch, "train", train_module)
    sweeper = ParameterSweeper(
        **{**TINY, "epochs": 1},
        patience=1,
        freeze_bn_stats=[True, False],
        transform=False,
        one_cycle=False,
        body_lr_ratio=1,
        resize="crop",
        head="linear",
        dropout=0.5,
    )
    df = sweeper.run(sample_data_path("objects_tiny"), reps=1, out_dir=tmp_path, progress=False)
    assert len(df) == 2
    assert is_eighths(df["accuracy"]) and (df["duration"] > 0).all()
    configs = [args[2] for args, _ in calls]
    assert [c.freeze_bn_stats for c in configs] == [True, False]
    assert all(
        (c.epochs, c.patience, c.one_cycle, c.body_lr_ratio) == (1, 1, False, 1.0) for c in configs
    )
    assert {(args[1].resize, args[1].head, args[1].dropout) for args, _ in calls} == {
        ("crop", "linear", 0.5)
    }
    csv = pd.read_csv(tmp_path / RESULTS_FILE)
    assert csv["freeze_bn_stats"].tolist() == [True, False]
    assert set(clean_sweeper_df(df).index.get_level_values("parameters")) == {
        "freeze_bn_stats=True",
        "freeze_bn_stats=False",
    }
