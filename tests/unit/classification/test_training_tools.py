"""The training tools on the one training path: learning-rate finder, early stopping and the
best epoch's weights, resumable training, the experiment record, live curves; and test-time
augmentation of predictors. Real tiny trainings (64 px EfficientNet-Lite0 on objects_tiny)."""

from __future__ import annotations

import csv
import json
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from utils_cv.classification.checkpoint import (
    CheckpointError,
    decode_state,
    encode_state,
    load_checkpoint,
)
from utils_cv.classification.listeners import BestEpoch, TrainingListener
from utils_cv.classification.live import LiveCurves
from utils_cv.classification.lr_finder import lr_find_fine_tune, lr_find_head
from utils_cv.classification.predict import load_predictor, main, predict_files
from utils_cv.classification.records import read_metrics, read_run, read_runs
from utils_cv.classification.train import (
    ConfigError,
    TrainConfig,
    create_learner,
    extract_features,
    train,
    train_head,
)

# Head 4 epochs, then 2 of fine-tuning: both stages, a few seconds on a CPU.
TWO_STAGES = TrainConfig(epochs_head=4, epochs=2, batch_size=8, lr=1e-2)


class Interrupt(TrainingListener):
    """Stops the process (as Ctrl-C or a lost machine would) after ``epoch`` of ``stage``."""

    order = 200  # after the checkpoint was written

    def __init__(self, stage: str, epoch: int):
        self.stage, self.epoch = stage, epoch

    def after_epoch(self, learn, row, state):
        if (row["stage"], row["epoch"]) == (self.stage, self.epoch):
            raise KeyboardInterrupt


def head_features(learn):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x_train, y_train = extract_features(learn, learn.dls.train)
    x_valid, y_valid = extract_features(learn, learn.dls.valid)
    return x_train, y_train, x_valid, y_valid


@pytest.fixture(scope="module")
def fresh_learner(make_dls, objects_tiny, tiny_spec):
    torch.manual_seed(0)
    return create_learner(make_dls(objects_tiny), tiny_spec)


@pytest.fixture(scope="module")
def full_run(objects_tiny, tiny_spec, tmp_path_factory):
    """An uninterrupted two-stage run with a record, checkpoints, TensorBoard and live curves."""
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    live = LiveCurves(show=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn = train(
            objects_tiny,
            tiny_spec,
            TWO_STAGES,
            progress=False,
            run_dir=run_dir,
            log_to=["tensorboard", "mlflow"],
            listeners=[live],
        )
    return learn, run_dir, live, [str(w.message) for w in caught]


def state_of(learn) -> dict:
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["keep_best", "lr_find"])
def test_new_config_fields_are_checked(field):
    assert getattr(TrainConfig(), field) is False
    with pytest.raises(ConfigError, match=f"TrainConfig field '{field}': 'yes' is not valid"):
        TrainConfig(**{field: "yes"})


# --- learning-rate finder ----------------------------------------------------------------------


def test_head_lr_finder_suggests_a_rate_and_leaves_head_and_random_state(fresh_learner):
    x_train, y_train, _, _ = head_features(fresh_learner)
    head = fresh_learner.model[1]
    before = {k: v.clone() for k, v in head.state_dict().items()}
    rng = torch.get_rng_state()
    result = lr_find_head(fresh_learner, x_train, y_train, num_it=60)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    assert 1e-6 <= result.suggestion <= 1.0
    assert result.lrs[0] == pytest.approx(1e-6) and np.all(np.diff(result.lrs) > 0)
    assert len(result.losses) == len(result.lrs) and np.isfinite(result.losses).all()
    # the loss falls from its start before the suggestion (the valley rule)
    assert result.losses[result.index] < result.losses[0]
    fig = result.plot()
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].lines) == 2


def test_fine_tune_lr_finder_restores_the_network(fresh_learner):
    before = state_of(fresh_learner)
    result = lr_find_fine_tune(fresh_learner, num_it=8)
    after = fresh_learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.stage == "fine_tune" and 1e-7 <= result.suggestion <= 1.0
    assert len(result.lrs) >= 4
    fresh_learner.freeze()


def test_lr_find_trains_at_the_suggested_rate(objects_tiny, tiny_spec):
    config = TrainConfig(epochs_head=2, batch_size=8)
    found = train(objects_tiny, tiny_spec, config.replace(lr_find=True), progress=False)
    rate = found.lr_finds["head"].suggestion
    given = train(objects_tiny, tiny_spec, config.replace(lr=rate), progress=False)
    assert found.timings["lr_find_s"] > 0
    for k, v in given.model.state_dict().items():
        torch.testing.assert_close(found.model.state_dict()[k], v)


# --- early stopping, best weights ---------------------------------------------------------------


def test_early_stopping_and_keeping_the_best_head(fresh_learner):
    x_train, y_train, x_valid, y_valid = head_features(fresh_learner)
    rest = fresh_learner.model[1][1:]
    start = {k: v.clone() for k, v in rest.state_dict().items()}
    best = BestEpoch(patience=3, keep_best=True)
    torch.manual_seed(0)
    # a high rate for many epochs overfits 16 images: the validation loss turns up
    train_head(fresh_learner, x_train, y_train, x_valid, y_valid, 40, 0.05, progress=False,
               listeners=[best])  # fmt: skip
    found = best.best["head"]
    assert found["stopped_at"] == found["epoch"] + 3 < 40
    rest.eval()
    with torch.no_grad():
        loss = float(fresh_learner.loss_func(rest(x_valid), y_valid))
    assert loss == pytest.approx(found["valid_loss"], abs=1e-5)
    rest.load_state_dict(start)


# --- checkpoints and resuming -------------------------------------------------------------------


def test_state_encoding_round_trip_keeps_types():
    state = {
        "t": torch.arange(3.0),
        "ints": {0: (1, 2.5, float("inf")), 1: None},
        "rng": random.getstate(),
        "np": np.random.get_state(),
        "flag": np.bool_(True),
    }
    skeleton, tensors = encode_state(state)
    json.dumps(skeleton, allow_nan=False)  # plain JSON
    back = decode_state(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["t"], state["t"])
    assert back["ints"] == {0: (1, 2.5, float("inf")), 1: None}
    random.setstate(back["rng"])
    np.random.set_state(back["np"])
    assert back["flag"] is True
    with pytest.raises(TypeError, match="cannot store a function"):
        encode_state({"f": test_state_encoding_round_trip_keeps_types})


def test_resumed_training_matches_an_uninterrupted_run(full_run, objects_tiny, tiny_spec, tmp_path):
    learn, run_dir, _, _ = full_run
    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(objects_tiny, tiny_spec, TWO_STAGES, progress=False, run_dir=run,
              listeners=[Interrupt("head", 2)])  # fmt: skip
    assert load_checkpoint(run)["epoch"] == 2
    with pytest.raises(KeyboardInterrupt):  # resumed in the head stage, stopped again
        train(objects_tiny, progress=False, resume=run, listeners=[Interrupt("fine_tune", 1)])
    saved = load_checkpoint(run)
    assert (saved["stage"], saved["epoch"]) == ("fine_tune", 1)
    resumed = train(objects_tiny, progress=False, resume=run)
    # the same weights up to float rounding (CPU kernels are not bit-reproducible across
    # processes; Adam amplifies it on near-zero gradients)
    expected = learn.model.state_dict()
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-3, atol=1e-3)
        assert (v - expected[k]).abs().float().gt(1e-4).float().mean() < 1e-3
    got, want = read_run(run)["metrics"], read_run(run_dir)["metrics"]
    assert list(got["stage"]) == list(want["stage"]) and list(got["step"]) == list(want["step"])
    for column in ("train_loss", "valid_loss", "accuracy", "lr"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-3, atol=1e-4)
    assert not (run / "checkpoint").exists()  # removed once finished
    with pytest.raises(CheckpointError, match="No checkpoint in .*the run finished"):
        train(objects_tiny, progress=False, resume=run)


def test_resume_refuses_another_configuration(objects_tiny, tiny_spec, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(epochs_head=3, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        train(objects_tiny, tiny_spec, config, progress=False, run_dir=run,
              listeners=[Interrupt("head", 1)])  # fmt: skip
    with pytest.raises(CheckpointError, match=r"config differs .*\(fields lr\)"):
        train(objects_tiny, tiny_spec, config.replace(lr=0.1), progress=False, resume=run)


# --- the record, loggers, live curves -----------------------------------------------------------


def test_run_record_has_config_spec_metrics_and_timings(full_run):
    learn, run_dir, _, messages = full_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["finished"]
    assert info["config"] == TWO_STAGES.to_dict()
    assert info["spec"]["classes"] == list(learn.spec.classes) and info["spec"]["im_size"] == 64
    assert info["epochs"] == {"head": 4, "fine_tune": 2}
    assert set(info["timings"]) >= {"features_s", "head_s", "fine_tune_s", "total_s"}
    assert info["timings"]["total_s"] == pytest.approx(learn.training_seconds)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], int(r["epoch"]), int(r["step"])) for r in rows] == [
        ("head", 1, 1), ("head", 2, 2), ("head", 3, 3), ("head", 4, 4),
        ("fine_tune", 1, 5), ("fine_tune", 2, 6),
    ]  # fmt: skip
    with learn.no_bar(), learn.no_logging():  # the last row is the final network's
        assert float(rows[-1]["accuracy"]) == pytest.approx(float(learn.validate()[1]))
    # TensorBoard event file (tensorboardX or torch.utils.tensorboard)
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and b"head/valid_loss" in events[0].read_bytes()
    try:
        import mlflow  # noqa: F401

        assert (run_dir / "mlruns").is_dir()
    except ImportError:
        assert any("mlflow is not installed" in m and "pip install mlflow" in m for m in messages)
        assert info["loggers"]["mlflow"].startswith("not installed")


def test_runs_read_back(full_run):
    _, run_dir, _, _ = full_run
    table = read_runs(run_dir.parent)
    assert list(table.index) == ["full"]
    row = table.loc["full"]
    assert (row["lr"], row["im_size"], row["status"]) == (1e-2, 64, "finished")
    assert 0 <= row["valid_accuracy"] <= 1 and row["epochs_done_fine_tune"] == 2
    metrics = read_metrics(run_dir.parent)
    assert list(metrics["step"]) == [1, 2, 3, 4, 5, 6] and set(metrics["run"]) == {"full"}


def test_live_curves_hold_every_epoch(full_run):
    _, run_dir, live, _ = full_run
    metrics = read_run(run_dir)["metrics"]
    assert [r["valid_loss"] for r in live.rows] == pytest.approx(list(metrics["valid_loss"]))
    loss_axis = live.figure.axes[0]
    train_line, valid_line = loss_axis.lines[:2]
    assert list(valid_line.get_ydata()) == pytest.approx(list(metrics["valid_loss"]))
    assert list(train_line.get_xdata()) == [1, 2, 3, 4, 5, 6]


def test_log_to_needs_a_run_folder_and_known_names(objects_tiny, tmp_path):
    with pytest.raises(ValueError, match="log_to=.*needs run_dir"):
        train(objects_tiny, log_to=["tensorboard"])
    with pytest.raises(ValueError, match="unknown logger 'wandb'"):
        train(objects_tiny, config=TrainConfig(epochs_head=0), run_dir=tmp_path, log_to=["wandb"])


# --- test-time augmentation --------------------------------------------------------------------


def test_tta_averages_the_mirrored_image_on_every_runtime(tiny_model_dir, tiny_valid_images):
    plain = load_predictor(tiny_model_dir)
    torch_tta = load_predictor(tiny_model_dir, tta=True)
    onnx_tta = load_predictor(tiny_model_dir, "onnx", tta=True)
    ims = [Image.open(p).convert("RGB") for p in tiny_valid_images]
    x = plain.preprocess(ims)
    expected = (plain.run(x) + plain.run(np.ascontiguousarray(x[..., ::-1]))) / 2
    got = torch_tta.predict_proba(ims)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the mirrored batch is the mirrored photo, up to resampling
    mirrored = plain.predict_proba([ImageOps.mirror(im) for im in ims])
    np.testing.assert_allclose(got, (plain.predict_proba(ims) + mirrored) / 2, atol=0.05)
    assert np.abs(got - plain.predict_proba(ims)).max() > 1e-4  # it does change something
    np.testing.assert_allclose(onnx_tta.predict_proba(ims), got, atol=1e-4)
    df = predict_files(onnx_tta, tiny_valid_images, progress=False)
    probs = df[[f"prob_{c}" for c in plain.classes]].to_numpy()
    from_files = torch_tta.predict_proba(tiny_valid_images)  # JPEG draft decoding, as the CSV
    np.testing.assert_allclose(probs, from_files, atol=1e-4)


def test_predict_command_tta_flag(tiny_model_dir, tiny_valid_images, tmp_path):
    import pandas as pd

    out = tmp_path / "p.csv"
    paths = [str(p) for p in tiny_valid_images[:3]]
    assert main([str(tiny_model_dir), *paths, "--out", str(out), "--tta", "--no-progress"]) == 0
    expected = load_predictor(tiny_model_dir, tta=True).predict_proba(paths)
    classes = load_predictor(tiny_model_dir).classes
    got = pd.read_csv(out)[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
