"""The scoring script: init/run called directly, and served over HTTP by azmlinfsrv on 127.0.0.1.

That the service returns the training pipeline's probabilities for every resize method (and
two backbone families) is checked in test_parity.py; here: the request handling, limits,
errors, what the deployment ships, and the local server's life cycle.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from PIL import Image

from utils_cv.classification.saved import load_model, save_model
from utils_cv.classification.service import score
from utils_cv.classification.service.local import LocalScoringService, free_port
from utils_cv.classification.spec import ModelSpec
from utils_cv.common.deployment import prepare_source_dir, score_images
from utils_cv.common.image_io import load_rgb

# Limits for these tests: small enough to hit cheaply, large enough for the sample images.
LIMITS_ENV = {"SCORE_MAX_IMAGES": "4", "SCORE_MAX_IMAGE_BYTES": "1000000"}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    """The shared tiny EfficientNet-Lite0 model (conftest.py: 64 px, trained on objects_tiny)."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def resnet_model_dir(tmp_path_factory) -> Path:
    """An untrained resnet18 (torchvision family) saved for the 4 sample classes."""
    spec = ModelSpec("resnet18", im_size=64).with_data(["apple", "citrus", "flower", "tool"], False)
    learn = SimpleNamespace(spec=spec, model=spec.build_network(pretrained=False))
    return save_model(learn, tmp_path_factory.mktemp("score_resnet") / "model")


@pytest.fixture(scope="module")
def azureml_model_root(model_dir, tmp_path_factory) -> Path:
    """The model laid out as AzureML mounts a registered folder: <root>/<folder>/model.json."""
    root = tmp_path_factory.mktemp("azureml-models") / "utils-cv-classifier" / "1"
    shutil.copytree(model_dir, root / "model")
    return root


@pytest.fixture(scope="module")
def im_paths(tiny_valid_images) -> list[Path]:
    """The validation images of objects_tiny (two per class)."""
    return tiny_valid_images


@pytest.fixture
def scorer(azureml_model_root, monkeypatch):
    """The score module after init(), with the test limits; PIL's pixel limit restored after."""
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(azureml_model_root))
    for name, value in LIMITS_ENV.items():
        monkeypatch.setenv(name, value)
    max_pixels = Image.MAX_IMAGE_PIXELS
    score.init()
    yield score
    Image.MAX_IMAGE_PIXELS = max_pixels
    score._predictor = None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def body(items) -> str:
    return json.dumps({"data": items})


def png_bytes(width: int, height: int) -> bytes:
    """A black 1-bit PNG: tiny file, many pixels."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def bad_requests(im_path: Path) -> list[tuple[str, bytes, int]]:
    """(case, request body, expected status) for each kind of bad request (built once)."""
    jpeg = im_path.read_bytes()
    cases = [
        ("invalid JSON", '{"data": [', 400),
        ("not an object", "[1, 2]", 400),
        ("missing data", json.dumps({"images": [b64(jpeg)]}), 400),
        ("data not a list", json.dumps({"data": b64(jpeg)}), 400),
        ("empty list", body([]), 400),
        ("item not a string", body([42]), 400),
        ("bad base64", body(["this is not base64!"]), 400),
        ("not an image", body([b64(b"plain text, not an image")]), 400),
        ("truncated image", body([b64(jpeg[: len(jpeg) // 2])]), 400),
        ("image over the byte limit", body([b64(os.urandom(1_200_000))]), 413),
        ("image over the pixel limit", body([b64(png_bytes(7000, 7000))]), 413),
        ("decompression bomb", body([b64(png_bytes(10000, 10000))]), 413),
        ("too many images", body([b64(jpeg)] * 5), 413),
    ]
    return [(case, text.encode("utf-8"), status) for case, text, status in cases]


BAD_CASES = [
    "invalid JSON",
    "not an object",
    "missing data",
    "data not a list",
    "empty list",
    "item not a string",
    "bad base64",
    "not an image",
    "truncated image",
    "image over the byte limit",
    "image over the pixel limit",
    "decompression bomb",
    "too many images",
]


def bad_request(case: str, im_path: Path) -> tuple[bytes, int]:
    return next((data, status) for name, data, status in bad_requests(im_path) if name == case)


# --- helpers of the script ------------------------------------------------------------------


def test_find_model_dir(model_dir, azureml_model_root, tmp_path):
    assert score.find_model_dir(model_dir) == model_dir
    assert score.find_model_dir(azureml_model_root) == azureml_model_root / "model"
    with pytest.raises(FileNotFoundError, match="model.json"):
        score.find_model_dir(tmp_path)
    for name in ("a", "b"):
        shutil.copytree(model_dir, tmp_path / name)
    with pytest.raises(ValueError, match="Several models"):
        score.find_model_dir(tmp_path)


def test_limits_from_env():
    assert score.Limits.from_env({}) == score.Limits()
    assert score.Limits().max_images == 64 and score.Limits().max_image_bytes == 10 * 2**20
    limits = score.Limits.from_env({"SCORE_MAX_IMAGES": "8", "SCORE_TOP_K": "1"})
    assert (limits.max_images, limits.top_k) == (8, 1)
    with pytest.raises(ValueError, match="SCORE_MAX_PIXELS"):
        score.Limits.from_env({"SCORE_MAX_PIXELS": "many"})
    with pytest.raises(ValueError, match="1 or more"):
        score.Limits.from_env({"SCORE_MAX_IMAGES": "0"})


def test_init_without_model_dir_fails_clearly(monkeypatch):
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR"):
        score.init()


def test_score_before_init_raises():
    score._predictor = None
    with pytest.raises(RuntimeError, match="init"):
        score.score(body([]))


# --- init/run called directly ---------------------------------------------------------------


@pytest.mark.parametrize("resize", ["squish", "crop", "pad"])
def test_decode_image_resizes_as_the_spec_says(im_paths, resize):
    """The service decodes and resizes an image file as the model's specification reads it
    (what the data loader and the predictors do; a landscape sample JPEG, 320 x 240)."""
    spec = ModelSpec(im_size=64, resize=resize, pad_color=(255, 128, 0))
    path = im_paths[0]
    assert load_rgb(path).size == (320, 240)
    decoded = score.decode_image(b64(path.read_bytes()), 0, score.Limits(), spec)
    assert decoded.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(decoded), spec.im_array(path))
    np.testing.assert_array_equal(spec.im_array(decoded), np.asarray(decoded))
    unresized = score.decode_image(b64(path.read_bytes()), 0, score.Limits())
    assert unresized.size == (320, 240)


def test_run_matches_predictor_predict(scorer, model_dir, im_paths):
    predictor = load_model(model_dir)
    out = scorer.run(body([b64(p.read_bytes()) for p in im_paths[:4]]))
    assert out == predictor.predict(im_paths[:4], top_k=3)
    for preds in out:
        assert len(preds) == 3
        assert all(p["label"] in predictor.classes for p in preds)
        probs = [p["probability"] for p in preds]
        assert probs == sorted(probs, reverse=True)


def test_run_accepts_bytes(scorer, im_paths):
    data = body([b64(im_paths[0].read_bytes())]).encode("utf-8")
    assert scorer.run(data) == scorer.run(data.decode("utf-8"))


@pytest.mark.parametrize("case", BAD_CASES)
def test_run_rejects_bad_request(scorer, im_paths, case):
    data, status = bad_request(case, im_paths[0])
    response = scorer.run(data.decode("utf-8"))
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json()["message"]
    # The worker still scores after a bad request.
    assert len(scorer.run(body([b64(im_paths[0].read_bytes())]))) == 1


def test_top_k_from_env(scorer, im_paths, monkeypatch):
    monkeypatch.setenv("SCORE_TOP_K", "1")
    scorer.init()
    out = scorer.run(body([b64(p.read_bytes()) for p in im_paths[:2]]))
    assert [len(preds) for preds in out] == [1, 1]


def test_request_body_limit(scorer, im_paths, monkeypatch):
    monkeypatch.setenv("SCORE_MAX_REQUEST_BYTES", "1000")
    scorer.init()
    response = scorer.run(body([b64(im_paths[0].read_bytes())]))  # ~15 kB
    assert response.status_code == 413 and "at most 1000" in response.get_json()["message"]


def test_multilabel_returns_every_label_above_threshold(model_dir, im_paths, monkeypatch, tmp_path):
    # The same weights, saved as a multi-label model (sigmoid outputs); the threshold is the
    # median probability, so that images get different numbers of labels.
    ml_dir = shutil.copytree(model_dir, tmp_path / "multilabel")
    meta = json.loads((ml_dir / "model.json").read_text())
    meta["multilabel"] = True
    (ml_dir / "model.json").write_text(json.dumps(meta))
    threshold = float(np.median(load_model(ml_dir).predict_proba(im_paths)))
    meta["threshold"] = threshold
    (ml_dir / "model.json").write_text(json.dumps(meta))
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(ml_dir))
    score.init()
    try:
        out = score.run(body([b64(p.read_bytes()) for p in im_paths]))
    finally:
        score._predictor = None
    predictor = load_model(ml_dir)
    probs = predictor.predict_proba(im_paths)
    assert out == predictor.predict(im_paths)
    for preds, row in zip(out, probs):
        expected = {c for c, p in zip(predictor.classes, row) if p >= threshold}
        assert {p["label"] for p in preds} == expected
        assert all(p["probability"] >= threshold for p in preds)
    assert len({len(preds) for preds in out}) > 1  # not a fixed top-k


def test_error_response_outside_server(monkeypatch):
    # Without AMLResponse (no inference server installed) errors come back as a dict.
    monkeypatch.setitem(sys.modules, "azureml_inference_server_http.api.aml_response", None)
    monkeypatch.setitem(sys.modules, "azureml.contrib.services.aml_response", None)
    assert score.error_response("bad", 400) == {"message": "bad", "status": 400}


# --- what the deployment ships --------------------------------------------------------------

IMPORT_PROBE = r"""
import builtins, importlib.metadata as md, json, sys
direct = set()
_import = builtins.__import__
def hook(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "") or ""
    if level == 0 and (importer == "score" or importer.startswith("utils_cv")):
        direct.add(name.split(".")[0])
    return _import(name, globals, locals, fromlist, level)
builtins.__import__ = hook
import os
import score
for model_dir in sys.argv[2:]:
    os.environ["AZUREML_MODEL_DIR"] = model_dir
    score.init()
    out = score.run(json.dumps({"data": [sys.argv[1]]}))
    assert isinstance(out, list) and len(out) == 1, out
dists = md.packages_distributions()
third_party = {m for m in direct if m not in sys.stdlib_module_names and m != "utils_cv"}
print(json.dumps({
    "utils_cv": sys.modules["utils_cv"].__file__,
    "files": sorted(m.__file__ for n, m in sys.modules.items() if n.startswith("utils_cv")),
    "distributions": sorted(d.lower() for m in third_party for d in dists.get(m, [m])),
}))
"""


def test_source_dir_is_self_contained_and_requirements_exact(
    model_dir, resnet_model_dir, im_paths, tmp_path
):
    """Scoring from the prepared source folder uses its utils_cv copy, runs exactly the files in
    PACKAGE_FILES, and imports exactly the distributions in PIP_PACKAGES, for a model of each
    backbone family of the registry (timm: EfficientNet-Lite0; torchvision: resnet18)."""
    source = prepare_source_dir(score, tmp_path / "source")
    env = {**os.environ, "PYTHONPATH": ""}
    env.pop("AZUREML_MODEL_DIR", None)
    models = [str(model_dir), str(resnet_model_dir)]
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, b64(im_paths[0].read_bytes()), *models],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["utils_cv"]).resolve().parent == (source / "utils_cv").resolve()
    loaded = {Path(f).resolve().relative_to(source.resolve()).as_posix() for f in report["files"]}
    assert loaded == set(score.PACKAGE_FILES)
    assert set(report["distributions"]) == set(score.PIP_PACKAGES)


# --- over HTTP with azmlinfsrv ----------------------------------------------------------------


@pytest.fixture(scope="module")
def service(azureml_model_root):
    """azmlinfsrv serving score.py and the tiny model on 127.0.0.1 (one worker)."""
    with LocalScoringService(azureml_model_root, env=LIMITS_ENV) as running:
        yield running


def test_service_listens_on_localhost_only(service):
    assert service.scoring_uri.startswith("http://127.0.0.1:")
    assert requests.get(service.url + "/", timeout=10).text == "Healthy"
    assert f"Listening at: http://127.0.0.1:{service.port}" in service.logs()


def test_service_returns_the_predictor_predictions(service, model_dir, im_paths):
    predictor = load_model(model_dir)
    out = score_images(service.scoring_uri, im_paths[:4])
    expected = predictor.predict(im_paths[:4], top_k=3)
    assert [[p["label"] for p in preds] for preds in out] == [
        [p["label"] for p in preds] for preds in expected
    ]
    for got, want in zip(out, expected):
        for g, w in zip(got, want):
            assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)
            assert g["label"] in predictor.classes


@pytest.mark.parametrize("case", BAD_CASES)
def test_service_rejects_bad_request_and_keeps_serving(service, im_paths, case):
    data, status = bad_request(case, im_paths[0])
    response = requests.post(
        service.scoring_uri, data=data, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["message"]
    assert len(score_images(service.scoring_uri, im_paths[:1])) == 1


def test_service_rejects_non_utf8_body(service, im_paths):
    response = requests.post(service.scoring_uri, data=b"\xff\xfe\x00", timeout=60)
    assert response.status_code == 400
    assert "UTF-8" in response.json()["message"]
    assert len(score_images(service.scoring_uri, im_paths[:1])) == 1


def test_service_stops_cleanly(azureml_model_root, im_paths):
    port = free_port()
    service = LocalScoringService(azureml_model_root, port=port).start()
    process = service.process
    assert len(score_images(service.scoring_uri, im_paths[:1])) == 1
    service.stop()
    service.stop()  # idempotent
    assert process.poll() is not None and not service.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert "Shutting down" in service.logs()


def test_service_start_failure_shows_the_log(tmp_path):
    service = LocalScoringService(tmp_path, startup_timeout=120)
    with pytest.raises(RuntimeError, match="model.json"):
        service.start()
    assert not service.running
