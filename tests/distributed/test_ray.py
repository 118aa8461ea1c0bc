"""Ray Tune sweeps and Ray Data batch prediction on one local Ray instance (2 CPUs)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from utils_cv.classification.data import sample_data_path
from utils_cv.classification.predict import image_paths, load_predictor, main, predict_files
from utils_cv.classification.sweeper import RESULTS_FILE, ParameterSweeper, read_finished_runs

pytestmark = pytest.mark.distributed

TINY = dict(im_size=64, epochs_head=2, batch_size=4)


def test_ray_sweep_gives_the_serial_table(local_ray, tmp_path):
    data = sample_data_path("objects_tiny")
    sweeper = ParameterSweeper(lr=[1e-3, 1e-2], **TINY)
    serial = sweeper.run(data, reps=1, out_dir=tmp_path / "serial", progress=False)
    ray = sweeper.run(
        data, reps=1, out_dir=tmp_path / "ray", backend="ray", workers=2, progress=False
    )
    assert list(ray.index) == list(serial.index)
    assert np.allclose(ray["accuracy"], serial["accuracy"], atol=0.1)
    assert (ray["duration"] > 0).all()
    on_disk = read_finished_runs(tmp_path / "ray" / RESULTS_FILE)
    assert len(on_disk) == 2
    # resumed: nothing is trained again, the same table comes back
    again = sweeper.run(data, reps=1, out_dir=tmp_path / "ray", backend="ray", progress=False)
    pd.testing.assert_frame_equal(again, ray)


def test_ray_sweep_reports_failed_trials_and_resumes_them(local_ray, tmp_path):
    from utils_cv.classification.sweeper_ray import SweepTrialsFailed

    # balance="weights" is refused at training time on multi-label data: a real failure
    data = sample_data_path("objects_multilabel_tiny")
    sweeper = ParameterSweeper(balance=["none", "weights"], **TINY)
    with pytest.raises(SweepTrialsFailed, match="1 of 2 trials failed") as failed:
        sweeper.run(data, reps=1, out_dir=tmp_path, backend="ray", progress=False)
    assert "balance=weights" in str(failed.value) and "multi-label" in str(failed.value)
    assert len(read_finished_runs(tmp_path / RESULTS_FILE)) == 1  # the good one is kept
    # rerun: only the failed trial is tried again (and fails again)
    with pytest.raises(SweepTrialsFailed, match="1 of 1 trials failed"):
        sweeper.run(data, reps=1, out_dir=tmp_path, backend="ray", progress=False)
    done = sweeper.update_parameters(balance="none").run(
        data, reps=1, out_dir=tmp_path, backend="ray", progress=False
    )
    assert len(done) == 1


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from utils_cv.classification.saved import save_model
    from utils_cv.classification.spec import ModelSpec
    from utils_cv.classification.train import TrainConfig, train

    learn = train(
        sample_data_path("objects_tiny"),
        ModelSpec(im_size=64),
        TrainConfig(epochs_head=2, batch_size=4),
        progress=False,
    )
    return save_model(learn, tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ray_batch_prediction_has_the_single_machine_columns(local_ray, tiny_model, tmp_path, fmt):
    from utils_cv.classification.batch_predict import predict_files_ray, read_predictions

    images = tmp_path / "images"
    shutil.copytree(sample_data_path("objects_tiny") / "valid", images)
    (images / "apple" / "broken.jpg").write_bytes(b"not a jpeg")
    shards = predict_files_ray(tiny_model, [images], tmp_path / "out", batch_size=3, fmt=fmt)
    assert len(shards) >= 2 and all(s.suffix == f".{fmt}" for s in shards)
    got = read_predictions(tmp_path / "out").sort_values("file").reset_index(drop=True)
    files = image_paths([images])
    want = predict_files(load_predictor(tiny_model, "onnx"), files, progress=False)
    want = want.sort_values("file").reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    assert list(got["file"]) == list(want["file"])
    assert list(got["status"]) == list(want["status"])
    assert got["status"].str.startswith("unreadable").sum() == 1
    ok = got["status"] == "ok"
    assert list(got["predicted"][ok]) == list(want["predicted"][ok])
    probs = [c for c in got.columns if c.startswith("prob_")]
    np.testing.assert_allclose(got[probs][ok].to_numpy(float), want[probs][ok].to_numpy(float))


def test_predict_command_ray_flag(local_ray, tiny_model, tmp_path, capsys):
    folder = sample_data_path("objects_tiny") / "valid"
    out = tmp_path / "shards"
    code = main([str(tiny_model), str(folder), "--ray", "--out", str(out), "--workers", "1"])
    assert code == 0
    assert "8 of 8 images classified" in capsys.readouterr().err
    assert len(list(out.glob("*.csv"))) >= 1
    # a folder with earlier shards is refused, naming it
    assert main([str(tiny_model), str(folder), "--ray", "--out", str(out)]) == 2
    assert "already holds .csv files" in capsys.readouterr().err
