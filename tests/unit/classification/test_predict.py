"""Predictors (PyTorch, ONNX Runtime), their inputs and outputs, ImageNet predictions, ONNX
export, comparing and timing, and the ``predict`` command end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from utils_cv.classification.backbones import get_backbone
from utils_cv.classification.predict import (
    OnnxPredictor,
    Predictor,
    TorchPredictor,
    agreement,
    as_image_list,
    compare_predictors,
    decisions,
    export_onnx,
    image_paths,
    imagenet_predictor,
    load_predictor,
    main,
    measure_model,
    measure_speed,
    median_ms,
    onnx_bytes,
    predict_files,
    to_predictions,
)
from utils_cv.classification.saved import WEIGHTS_FILE, load_model, model_size_mb
from utils_cv.classification.spec import ModelSpec

CLASSES = ["apple", "citrus", "flower", "tool"]
COFFEE = {"espresso", "cup", "coffee mug"}
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model_dir) -> TorchPredictor:
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir, tmp_path_factory) -> tuple[TorchPredictor, OnnxPredictor]:
    """(PyTorch predictor, ONNX Runtime predictor on its exported file)."""
    predictor = load_model(tiny_model_dir)
    path = export_onnx(predictor, tmp_path_factory.mktemp("onnx") / "sub" / "tiny.onnx")
    assert path.is_file()
    return predictor, OnnxPredictor(path, predictor.spec, threads=1)


@pytest.fixture(scope="module")
def multilabel_images(multilabel_tiny) -> list[Path]:
    return sorted((multilabel_tiny / "images").glob("*.jpg"))[:6]


# --- the interface ------------------------------------------------------------------------------


def test_predictor_properties(tiny_predictor, tiny_onnx):
    for predictor in (tiny_predictor, tiny_onnx[1]):
        assert predictor.classes == CLASSES
        assert (predictor.multilabel, predictor.im_size) == (False, 64)
    assert (tiny_predictor.runtime, tiny_onnx[1].runtime) == ("torch", "onnx")
    with pytest.raises(ValueError, match="needs a specification with classes"):
        Predictor(ModelSpec())
    with pytest.raises(NotImplementedError):
        Predictor(tiny_predictor.spec).run(np.zeros((1, 3, 64, 64), np.float32))


def test_predict_returns_sorted_top_k(tiny_predictor, tiny_valid_images):
    probs = tiny_predictor.predict_proba(tiny_valid_images)
    for top_k in (1, 2, 10):
        predictions = tiny_predictor.predict(tiny_valid_images, top_k=top_k)
        assert len(predictions) == 8
        for row, prediction in zip(probs, predictions):
            assert len(prediction) == min(top_k, 4)
            values = [p["probability"] for p in prediction]
            assert values == sorted(values, reverse=True)
            assert prediction[0]["label"] == CLASSES[int(row.argmax())]
            for p in prediction:
                assert set(p) == {"label", "probability"}
                assert p["probability"] == pytest.approx(row[CLASSES.index(p["label"])])


def test_single_image_list_and_folder_inputs(tiny_predictor, tiny_valid_images, objects_tiny):
    paths = tiny_valid_images[:3]
    pil = [Image.open(p).convert("RGB") for p in paths]
    arrays = [np.asarray(im) for im in pil]
    from_paths = tiny_predictor.predict_proba(paths)
    assert from_paths.shape == (3, 4)
    # The same pixels give the same numbers, whatever form they come in (files may be
    # decoded at reduced scale, as the training loader does, so decoded images differ a bit).
    from_pil = tiny_predictor.predict_proba(pil)
    assert np.array_equal(tiny_predictor.predict_proba(arrays), from_pil)
    assert np.array_equal(tiny_predictor.predict_proba([str(p) for p in paths]), from_paths)
    assert np.abs(from_pil - from_paths).max() < 0.05
    # One image (path, PIL image or array) is a batch of one.
    for single, expected in (
        (paths[0], from_paths),
        (str(paths[0]), from_paths),
        (pil[0], from_pil),
        (arrays[0], from_pil),
    ):
        np.testing.assert_allclose(tiny_predictor.predict_proba(single), expected[:1], atol=1e-5)
        assert len(tiny_predictor.predict(single)) == 1
    # A folder is walked recursively, in sorted order (valid/<class>/<image>).
    folder = tiny_predictor.predict_proba(objects_tiny / "valid")
    np.testing.assert_allclose(folder, tiny_predictor.predict_proba(tiny_valid_images), atol=1e-6)
    mixed = tiny_predictor.predict_proba([paths[0], objects_tiny / "valid" / "tool"])
    assert mixed.shape == (3, 4)
    # Batching does not change the result (beyond float rounding).
    np.testing.assert_allclose(
        tiny_predictor.predict_proba(paths, batch_size=1), from_paths, atol=1e-5
    )
    assert tiny_predictor.predict_proba([]).shape == (0, 4)
    assert tiny_predictor.predict([]) == []


def test_predict_rejects_other_inputs(tiny_predictor, tmp_path):
    with pytest.raises(TypeError, match="Expected a PIL image, numpy array or path, got int"):
        tiny_predictor.predict_proba([42])
    with pytest.raises(FileNotFoundError):
        tiny_predictor.predict_proba(tmp_path / "missing.jpg")


def test_multilabel_predict_returns_labels_at_or_above_the_threshold(
    multilabel_model_dir, multilabel_images
):
    predictor = load_model(multilabel_model_dir)
    assert predictor.multilabel and predictor.spec.threshold == 0.4
    probs = predictor.predict_proba(multilabel_images)
    assert probs.shape == (6, 4)
    assert ((probs > 0) & (probs < 1)).all()
    assert not np.allclose(probs.sum(axis=1), 1)  # sigmoid, not softmax
    with torch.no_grad():
        logits = predictor.model(torch.from_numpy(predictor.preprocess(multilabel_images)))
    np.testing.assert_allclose(probs, logits.sigmoid().numpy(), atol=1e-6)
    for row, prediction in zip(probs, predictor.predict(multilabel_images, top_k=1)):
        expected = {CLASSES[i] for i in np.flatnonzero(row >= 0.4)}
        assert {p["label"] for p in prediction} == expected
        values = [p["probability"] for p in prediction]
        assert values == sorted(values, reverse=True)


def test_to_predictions_hand_computed():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.4]], dtype=np.float32)
    single = ModelSpec(classes=("a", "b", "c"), multilabel=False)
    assert to_predictions(probs, single, top_k=2) == [
        [
            {"label": "b", "probability": pytest.approx(0.6)},
            {"label": "c", "probability": pytest.approx(0.3)},
        ],
        [
            {"label": "a", "probability": pytest.approx(0.5)},
            {"label": "c", "probability": pytest.approx(0.4)},
        ],
    ]
    multi = single.replace(multilabel=True, threshold=0.4)
    predictions = to_predictions(probs, multi, top_k=1)  # top_k does not cut a label set
    assert [[p["label"] for p in row] for row in predictions] == [["b"], ["a", "c"]]
    assert to_predictions(probs, multi.replace(threshold=0.7)) == [[], []]
    # Ties keep the class order.
    tie = np.array([[0.25, 0.5, 0.25]], dtype=np.float32)
    assert [p["label"] for p in to_predictions(tie, single)[0]] == ["b", "a", "c"]


# --- inputs ---------------------------------------------------------------------------------


def write_image(path: Path, colour=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_image_paths_walks_folders_and_keeps_files(tmp_path):
    a = write_image(tmp_path / "data" / "b" / "deep" / "a.png")
    b = write_image(tmp_path / "data" / "a.JPG")
    write_image(tmp_path / "data" / ".hidden" / "c.png")
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    other = write_image(tmp_path / "other.bmp")
    assert image_paths([tmp_path / "data"]) == [b, a]
    assert image_paths([other, tmp_path / "data"]) == [other, b, a]
    # A file given by name is kept, image or not: the caller learns why it cannot be read.
    assert image_paths([tmp_path / "data" / "notes.txt"]) == [tmp_path / "data" / "notes.txt"]
    with pytest.raises(FileNotFoundError, match="No such file or folder: .*missing"):
        image_paths([tmp_path / "missing"])
    im = Image.new("RGB", (4, 4))
    assert as_image_list(im) == [im]
    assert as_image_list([im, tmp_path / "data"]) == [im, b, a]
    assert as_image_list(str(other)) == [str(other)]


# --- ImageNet ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
)
def test_imagenet_predictor_recognises_coffee_and_a_cat(backbone):
    predictor = imagenet_predictor(backbone)
    assert len(predictor.classes) == 1000
    assert predictor.im_size == get_backbone(backbone).imagenet_size
    assert predictor.spec.mean == get_backbone(backbone).mean
    coffee, cat = predictor.predict([skdata.coffee(), skdata.chelsea()], top_k=1)
    assert coffee[0]["label"] in COFFEE, coffee
    assert cat[0]["label"] in CATS, cat
    assert coffee[0]["probability"] > 0.5 and cat[0]["probability"] > 0.5


# --- ONNX ---------------------------------------------------------------------------------------


def test_onnx_matches_pytorch(tiny_onnx, tiny_valid_images):
    predictor, onnx_predictor = tiny_onnx
    p_torch = predictor.predict_proba(tiny_valid_images)
    p_onnx = onnx_predictor.predict_proba(tiny_valid_images)
    assert p_onnx.shape == (8, 4) and p_onnx.dtype == np.float32
    assert np.abs(p_torch - p_onnx).max() < 1e-5
    assert (p_torch.argmax(1) == p_onnx.argmax(1)).all()
    np.testing.assert_allclose(p_onnx.sum(axis=1), 1, atol=1e-5)  # softmax inside the file
    # Dynamic batch size: one image at a time gives the same.
    np.testing.assert_allclose(
        onnx_predictor.predict_proba(tiny_valid_images, batch_size=1), p_onnx, atol=1e-5
    )
    assert [p[0]["label"] for p in onnx_predictor.predict(tiny_valid_images, top_k=1)] == [
        p[0]["label"] for p in predictor.predict(tiny_valid_images, top_k=1)
    ]
    assert onnx_predictor.predict_proba([]).shape == (0, 4)


def test_onnx_file_declares_its_inputs_and_outputs(tiny_onnx):
    _, onnx_predictor = tiny_onnx
    (inp,) = onnx_predictor.session.get_inputs()
    (out,) = onnx_predictor.session.get_outputs()
    assert (inp.name, out.name) == ("image", "probabilities")
    assert inp.shape[1:] == [3, 64, 64]
    assert isinstance(inp.shape[0], str)  # dynamic batch axis


def test_export_leaves_the_predictor_usable(tiny_onnx, tiny_valid_images, tiny_predictor):
    predictor, _ = tiny_onnx
    np.testing.assert_allclose(
        predictor.predict_proba(tiny_valid_images),
        tiny_predictor.predict_proba(tiny_valid_images),
        atol=1e-6,
    )
    assert not predictor.model.training
    assert next(predictor.model.parameters()).device == predictor.device


def test_multilabel_onnx_exports_sigmoid_outputs(multilabel_model_dir, multilabel_images):
    predictor = load_model(multilabel_model_dir)
    onnx_predictor = OnnxPredictor(onnx_bytes(predictor), predictor.spec)  # in memory
    p_torch = predictor.predict_proba(multilabel_images)
    p_onnx = onnx_predictor.predict_proba(multilabel_images)
    assert np.abs(p_torch - p_onnx).max() < 1e-5
    assert not np.allclose(p_onnx.sum(axis=1), 1, atol=1e-3)
    assert [{p["label"] for p in row} for row in onnx_predictor.predict(multilabel_images)] == [
        {p["label"] for p in row} for row in predictor.predict(multilabel_images)
    ]


class ReverseClasses(torch.nn.Module):
    def forward(self, logits):
        return logits.flip(1)


def test_load_predictor_runtimes(tiny_model_dir, tmp_path, tiny_valid_images, tiny_predictor):
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    expected = tiny_predictor.predict_proba(tiny_valid_images)
    torch_predictor = load_predictor(model_dir)
    assert isinstance(torch_predictor, TorchPredictor)
    onnx_predictor = load_predictor(model_dir, "onnx", threads=1)  # exported in memory
    assert isinstance(onnx_predictor, OnnxPredictor)
    assert np.abs(onnx_predictor.predict_proba(tiny_valid_images) - expected).max() < 1e-5
    # A model.onnx in the folder, newer than the weights, is used as it is...
    reversed_classes = torch.nn.Sequential(torch_predictor.model, ReverseClasses())
    export_onnx(TorchPredictor(reversed_classes, torch_predictor.spec), model_dir / "model.onnx")
    from_file = load_predictor(model_dir, "onnx").predict_proba(tiny_valid_images)
    np.testing.assert_allclose(from_file, expected[:, ::-1], atol=1e-5)
    # ...but not once it is older than the weights (the model was saved again).
    weights_time = (model_dir / "model.onnx").stat().st_mtime + 10
    os.utime(model_dir / WEIGHTS_FILE, (weights_time, weights_time))
    fresh = load_predictor(model_dir, "onnx").predict_proba(tiny_valid_images)
    assert np.abs(fresh - expected).max() < 1e-5
    with pytest.raises(ValueError, match="runtime must be one of torch, onnx, got 'tflite'"):
        load_predictor(model_dir, "tflite")


# --- comparing and timing -----------------------------------------------------------------------


def test_compare_predictors(tiny_onnx, tiny_valid_images):
    predictor, onnx_predictor = tiny_onnx
    same = compare_predictors(predictor, predictor, tiny_valid_images)
    assert same == {"max_abs_diff": 0.0, "agreement": 1.0}
    result = compare_predictors(predictor, onnx_predictor, tiny_valid_images)
    assert set(result) == {"max_abs_diff", "agreement"}
    assert 0 <= result["max_abs_diff"] < 1e-5 and result["agreement"] == 1.0
    assert compare_predictors(predictor, onnx_predictor, []) == {
        "max_abs_diff": 0.0,
        "agreement": 1.0,
    }


def test_decisions_and_agreement_hand_computed():
    single = ModelSpec(classes=("a", "b", "c"), multilabel=False)
    p_ref = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25]])
    p_new = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.3, 0.45, 0.25]])
    assert decisions(p_ref, single).tolist() == [0, 1, 2, 0]
    assert agreement(p_ref, p_new, single) == 0.5
    multi = single.replace(multilabel=True, threshold=0.35)
    assert decisions(p_ref, multi).tolist() == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
        [True, True, False],
    ]
    # Row 1 (c joins) and row 3 (a leaves) change their label sets.
    assert agreement(p_ref, p_new, multi) == 0.5
    assert agreement(p_ref[:0], p_new[:0], single) == 1.0


def test_measure_speed_for_pytorch_and_onnx(tiny_onnx):
    for predictor in tiny_onnx:
        speed = measure_speed(predictor, batch_size=4, repeats=1)
        assert set(speed) == {"latency_ms", "throughput"}
        assert 0 < speed["latency_ms"] < 10_000
        assert speed["throughput"] > 0


def test_measure_model_size_and_speed(tiny_model_dir):
    before = sorted(p.name for p in tiny_model_dir.iterdir())
    result = measure_model(tiny_model_dir)  # PyTorch; ONNX loading: test_load_predictor_runtimes
    assert set(result) == {"model_size_mb", "latency_ms", "throughput"}
    assert result["model_size_mb"] == model_size_mb(tiny_model_dir)
    assert result["latency_ms"] > 0 and result["throughput"] > 0
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == before  # nothing added


def test_median_ms_times_the_call():
    calls = []
    ms = median_ms(lambda x: calls.append(x), 7, repeats=3, warmup=2)
    assert calls == [7] * 5
    assert 0 <= ms < 100


# --- predicting files to a table ----------------------------------------------------------------


def test_predict_files_table(tiny_predictor, tiny_valid_images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(tiny_valid_images[0].read_bytes()[:500])
    paths = [tiny_valid_images[0], broken, tiny_valid_images[1]]
    df = predict_files(tiny_predictor, paths, top_k=2, batch_size=2, progress=False)
    assert list(df.columns) == ["file", "status", "predicted", "top_k"] + [
        f"prob_{c}" for c in CLASSES
    ]
    assert list(df["file"]) == [str(p) for p in paths]  # the order given
    assert list(df["status"][[0, 2]]) == ["ok", "ok"]
    assert df["status"][1].startswith("unreadable: image file is truncated")
    assert df.loc[1, ["predicted", "top_k", "prob_apple"]].isna().all()
    probs = tiny_predictor.predict_proba([paths[0], paths[2]])
    np.testing.assert_allclose(df.loc[[0, 2], [f"prob_{c}" for c in CLASSES]], probs, atol=1e-5)
    assert list(df["predicted"][[0, 2]]) == [CLASSES[i] for i in probs.argmax(1)]
    first = [f"{p['label']}:{p['probability']:.4f}" for p in tiny_predictor.predict(paths[0], 2)[0]]
    assert df["top_k"][0] == "; ".join(first)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        predict_files(tiny_predictor, paths, top_k=0)


# --- the command ---------------------------------------------------------------------------------


def run_predict(*args: str) -> subprocess.CompletedProcess:
    """``python -m utils_cv.classification.predict ARGS`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "utils_cv.classification.predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, tiny_valid_images) -> Path:
    """The 8 validation images in nested folders, with a truncated JPEG, a text file named
    .png, and a text file."""
    folder = tmp_path_factory.mktemp("images")
    for i, path in enumerate(tiny_valid_images):
        nested = folder / path.parent.name / ("deeper" if i % 2 else "") / path.name
        nested.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, nested)
    (folder / "broken.jpg").write_bytes(tiny_valid_images[0].read_bytes()[:500])
    (folder / "fake.png").write_text("not a png")
    (folder / "notes.txt").write_text("not an image, not picked up")
    return folder


@pytest.fixture(scope="module")
def cli_torch(tiny_model_dir, image_folder, tmp_path_factory):
    """(completed process, CSV) of ``predict`` on the folder with the default options."""
    out = tmp_path_factory.mktemp("cli") / "sub" / "predictions.csv"
    result = run_predict(tiny_model_dir, image_folder, "--out", out)
    return result, out


def test_cli_writes_one_row_per_image(cli_torch, image_folder, tiny_predictor):
    result, out = cli_torch
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["file", "status", "predicted", "top_k"] + [
        f"prob_{c}" for c in CLASSES
    ]
    # Nested folders are walked; the text file is not an image and is not listed.
    files = [Path(f) for f in df["file"]]
    assert sorted(files) == sorted([*image_folder.rglob("*.jpg"), image_folder / "fake.png"])
    assert len(files) == 10 and image_folder / "notes.txt" not in files
    assert any("deeper" in f.parts for f in files)
    ok = df[df["status"] == "ok"]
    assert len(ok) == 8
    probs = tiny_predictor.predict_proba(list(ok["file"]))
    np.testing.assert_allclose(ok[[f"prob_{c}" for c in CLASSES]], probs, atol=1e-5)
    assert list(ok["predicted"]) == [CLASSES[i] for i in probs.argmax(1)]
    assert all(len(top.split("; ")) == 3 for top in ok["top_k"])  # --top-k 3 by default
    for top, row in zip(ok["top_k"], probs):
        assert top.split("; ")[0] == f"{CLASSES[row.argmax()]}:{row.max():.4f}"


def test_cli_reports_unreadable_files(cli_torch, image_folder):
    result, out = cli_torch
    df = pd.read_csv(out).set_index("file")
    broken, fake = str(image_folder / "broken.jpg"), str(image_folder / "fake.png")
    assert df.loc[broken, "status"].startswith("unreadable: image file is truncated")
    assert df.loc[fake, "status"] == "unreadable: cannot identify image file"
    assert df.loc[[broken, fake], ["predicted", "prob_apple"]].isna().all().all()
    lines = result.stderr.splitlines()
    assert f"predict: {broken}: {df.loc[broken, 'status']}" in lines
    assert f"predict: {fake}: unreadable: cannot identify image file" in lines
    assert f"8 of 10 images classified; predictions in {out}" in lines
    assert "10/10" in result.stderr  # the progress bar
    assert result.stdout == ""


def test_cli_onnx_runtime_gives_the_same_predictions(
    cli_torch, tiny_model_dir, image_folder, tmp_path
):
    out = tmp_path / "onnx.csv"
    result = run_predict(
        tiny_model_dir,
        image_folder,
        "--out",
        out,
        "--runtime",
        "onnx",
        "--top-k",
        "2",
        "--batch-size",
        "3",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "10/10" not in result.stderr
    onnx, torch_df = pd.read_csv(out), pd.read_csv(cli_torch[1])
    assert list(onnx["file"]) == list(torch_df["file"])
    assert list(onnx["status"]) == list(torch_df["status"])
    assert list(onnx["predicted"].fillna("")) == list(torch_df["predicted"].fillna(""))
    probs = [f"prob_{c}" for c in CLASSES]
    ok = onnx["status"] == "ok"
    assert np.abs(onnx.loc[ok, probs].to_numpy() - torch_df.loc[ok, probs].to_numpy()).max() < 1e-5
    assert all(len(top.split("; ")) == 2 for top in onnx.loc[ok, "top_k"])


def test_cli_fails_when_nothing_could_be_classified(tiny_model_dir, image_folder, tmp_path):
    out = tmp_path / "none.csv"
    result = run_predict(
        tiny_model_dir, image_folder / "broken.jpg", image_folder / "fake.png", "--out", out
    )
    assert result.returncode == 1
    assert "0 of 2 images classified" in result.stderr
    assert list(pd.read_csv(out)["status"].str.startswith("unreadable")) == [True, True]


def test_main_multilabel_and_errors(multilabel_model_dir, multilabel_tiny, tmp_path, capsys):
    out = tmp_path / "multi.csv"
    folder = multilabel_tiny / "images"
    assert main([str(multilabel_model_dir), str(folder), "--out", str(out), "--no-progress"]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    predictor = load_model(multilabel_model_dir)
    probs = predictor.predict_proba(list(df["file"]))
    expected = [" ".join(p["label"] for p in row) for row in to_predictions(probs, predictor.spec)]
    assert list(df["predicted"]) == expected  # every label at or above the threshold 0.4
    assert not np.allclose(df[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1)  # sigmoid
    capsys.readouterr()
    # Errors: no image in the paths (1), a missing path or model folder (2), bad options (2).
    (tmp_path / "empty").mkdir()
    assert main([str(multilabel_model_dir), str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "no image files in" in capsys.readouterr().err
    assert main([str(multilabel_model_dir), str(tmp_path / "missing")]) == 2
    assert "No such file or folder" in capsys.readouterr().err
    assert main([str(tmp_path), str(folder)]) == 2
    assert "No model.json in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([str(multilabel_model_dir), str(folder), "--top-k", "0"])
    assert info.value.code == 2
