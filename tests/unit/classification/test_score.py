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
import time
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
from utils_cv.common.deployment import images_payload, prepare_source_dir, score_images
from utils_cv.common.image_io import load_rgb

# Limits for these tests: small enough to hit cheaply, large enough for the sample images.
LIMITS_ENV = {
    "SCORE_MAX_IMAGES": "4",
    "SCORE_MAX_IMAGE_BYTES": "1000000",
    "SCORE_MAX_REQUEST_PIXELS": "1000000",
    "SCORE_MAX_BODY_SECONDS": "2",
}


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
        ("over the request pixel limit", body([b64(png_bytes(800, 800))] * 2), 413),
        *hostile_requests(jpeg),
    ]
    return [(case, text.encode("utf-8"), status) for case, text, status in cases]


def hostile_requests(jpeg: bytes) -> list[tuple[str, str, int]]:
    """(case, request body, expected status) built to break a JSON reader or the service."""
    image = b64(jpeg)
    return [
        ("100,000 nested lists", "[" * 100_000 + "]" * 100_000, 400),
        ("1,000 nested lists in data", '{"data": ' + "[" * 1000 + "]" * 1000 + "}", 400),
        ("5000-digit integer in data", '{"data": [' + "9" * 5000 + "]}", 400),
        ("5000-digit integer elsewhere", f'{{"n": {"7" * 5000}, "data": ["{image}"]}}', 400),
        ("NaN in data", '{"data": [NaN]}', 400),
        ("Infinity elsewhere", f'{{"x": -Infinity, "data": ["{image}"]}}', 400),
        ("300,000 empty lists", "[" + "[]," * 300_000 + "[]]", 400),
        ("huge string", body(["A" * 3_000_000]), 413),
        ("huge key", f'{{"{"k" * 3_000_000}": 1, "data": 5}}', 400),
        ("data is null", '{"data": null}', 400),
        ("data is an object", '{"data": {"0": "x"}}', 400),
        ("item is null", body([None]), 400),
        ("item is a list", body([[image]]), 400),
        ("body is a string", json.dumps(image), 400),
        ("body is a number", "12", 400),
        ("body is empty", "", 400),
    ]


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
    "over the request pixel limit",
    *(case for case, _, _ in hostile_requests(b"")),
]


def bad_request(case: str, im_path: Path) -> tuple[bytes, int]:
    return next((data, status) for name, data, status in bad_requests(im_path) if name == case)


def strict_json(text: str):
    """``text`` parsed as standard JSON: NaN and Infinity are refused."""

    def refuse(name):
        raise ValueError(f"{name} in a response")

    return json.loads(text, parse_constant=refuse)


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict, socket.socket]:
    """Send raw bytes to 127.0.0.1:port; (status, JSON body, the socket: close it), the answer
    read within ``timeout`` seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {received!r}"
        received += chunk
    head, rest = received.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    while len(rest) < int(headers["Content-Length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), strict_json(rest.decode("utf-8")), sock


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` seconds (then it is closed here)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def png16_bytes(width: int, height: int) -> bytes:
    """A flat 16-bit greyscale PNG: a few kB, slow and large to decode (about 33 bytes and
    0.15 microseconds per pixel on 2 cores)."""
    buf = io.BytesIO()
    Image.new("I;16", (width, height), 1000).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


@pytest.fixture(scope="module")
def broken_model_dir(model_dir, tmp_path_factory) -> Path:
    """The tiny model with its last layer's weights at 3e38: finite numbers, but the logits
    overflow and the probabilities are NaN."""
    import torch

    from utils_cv.classification.saved import load_network

    spec, network = load_network(model_dir)
    last = [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.fill_(3e38)
    learn = SimpleNamespace(spec=spec, model=network)
    return save_model(learn, tmp_path_factory.mktemp("broken_model") / "model")


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


def test_default_limits_bound_the_worst_request():
    """With the default limits, one request cannot take tens of seconds or gigabytes: an
    8000x5000 image (15 s and 1.2 GB as a 16-bit TIFF) is refused from its header, and images
    that would decode more than SCORE_MAX_REQUEST_PIXELS in all are refused before any is
    decoded (two 16-bit images of 16 million pixels take about 1.6 s and 0.5 GB here)."""
    limits = score.Limits()
    assert limits.max_pixels <= 4096 * 4096 and limits.max_request_pixels <= 32_000_000
    assert limits.max_request_bytes <= 64 * 2**20 and limits.max_body_seconds <= 60
    spec = ModelSpec(im_size=224)
    buf = io.BytesIO()
    Image.new("L", (8000, 5000)).save(buf, format="TIFF", compression="tiff_deflate")
    with pytest.raises(score.ScoringError, match="8000x5000 pixels") as err:
        score.decode_image(b64(buf.getvalue()), 0, limits, spec)
    assert err.value.status == 413
    png = b64(png16_bytes(4001, 4000))
    start = time.perf_counter()
    with pytest.raises(score.ScoringError, match="would decode 32008000 pixels") as err:
        score.parse_request(body([png, png]), limits, spec)
    assert err.value.status == 413 and time.perf_counter() - start < 1


def test_jpeg_counts_at_the_scale_it_decodes_at(im_paths):
    """A 12-megapixel JPEG is decoded at 1/8 scale for a 224-pixel model (draft mode), and
    counts so against the request's pixels: 64 such photos fit in one request. (A guard: the
    service decoded JPEGs so before, but counted nothing.)"""
    limits = score.Limits()
    spec = ModelSpec(im_size=224)
    where, im = score.open_item(b64(jpeg_bytes(4000, 3000)), 0, limits, spec.draft_size)
    with im:
        assert im.size == (500, 375)
    assert 64 * 500 * 375 < limits.max_request_pixels
    ims = score.parse_request(body([b64(jpeg_bytes(4000, 3000))] * 3), limits, spec)
    assert [im.size for im in ims] == [(224, 224)] * 3


def test_run_never_returns_nan(broken_model_dir, im_paths, monkeypatch):
    """A model whose probabilities are NaN gets a 500 with a message, in JSON: never NaN."""
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(broken_model_dir))
    score.init()
    try:
        response = score.run(body([b64(im_paths[0].read_bytes())]))
    finally:
        score._predictor = None
    assert response.status_code == 500
    assert "not finite" in strict_json(response.get_data(as_text=True))["message"]


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
# The inference server comes with the deployment's server package (azureml-defaults).
own = {"utils_cv", "azureml_inference_server_http"}
third_party = {m for m in direct if m not in sys.stdlib_module_names and m not in own}
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
    """azmlinfsrv serving score.py and the tiny model on 127.0.0.1, with LocalScoringService's
    default workers and threads."""
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


HOSTILE_HTTP_CASES = [
    "100,000 nested lists",
    "1,000 nested lists in data",
    "5000-digit integer in data",
    "5000-digit integer elsewhere",
    "Infinity elsewhere",
    "huge string",
    "body is empty",
]
CONTENT_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_service_answers_the_same_whatever_the_content_type(service, im_paths, content_type):
    """The server parses some content types itself before run(): bodies are read the same
    way (raw) whatever the Content-Type, or none, says."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    for case in HOSTILE_HTTP_CASES:
        data, status = bad_request(case, im_paths[0])
        response = requests.post(service.scoring_uri, data=data, headers=headers, timeout=60)
        assert response.status_code == status, (case, response.text)
        assert strict_json(response.text)["message"], case
    data = body([b64(im_paths[0].read_bytes())])
    response = requests.post(service.scoring_uri, data=data, headers=headers, timeout=60)
    assert response.status_code == 200 and len(strict_json(response.text)) == 1


def test_service_answers_other_methods_with_json(service):
    """GET used to reach run() with its query parsed by the server: deep nesting in it gave
    a 500. Every method but POST now gets 405 with a JSON message (OPTIONS: 200, as before)."""
    nested = service.scoring_uri + "?data=" + "[" * 1200
    for response in [
        requests.get(nested, timeout=60),
        requests.get(service.scoring_uri + "?data=" + "9" * 3000, timeout=60),
        requests.get(service.scoring_uri, timeout=60),
    ]:
        assert response.status_code == 405, response.text
        assert "POST" in strict_json(response.text)["message"]
    assert requests.options(service.scoring_uri, timeout=60).status_code == 200


def test_service_refuses_a_large_body_before_reading_it(service):
    """A Content-Length over SCORE_MAX_REQUEST_BYTES gets 413 at once, without the body."""
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
    start = time.perf_counter()
    status, answer, sock = exchange(service.port, head + b'{"data": [', timeout=10)
    sock.close()
    assert status == 413 and "at most 67108864" in answer["message"]
    assert time.perf_counter() - start < 5


def test_service_cuts_off_a_slow_body(service, im_paths):
    """A body that does not arrive within SCORE_MAX_BODY_SECONDS (2 s here) gets 408 and the
    connection is closed; the service keeps serving."""
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    start = time.perf_counter()
    status, answer, sock = exchange(service.port, head + b'{"data": [', timeout=20)
    assert status == 408 and "within 2 s" in answer["message"]
    assert 1.5 < time.perf_counter() - start < 10
    assert closed_by_server(sock)
    assert len(score_images(service.scoring_uri, im_paths[:1])) == 1


def test_idle_clients_do_not_stall_the_service(service, im_paths):
    """Connections that send nothing, or half a request, and stay open do not hold up the
    next request (a single sync worker waited for them: 30 s and more)."""
    address = ("127.0.0.1", service.port)
    idle = [socket.create_connection(address, timeout=10) for _ in range(2)]
    try:
        idle[1].sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-")
        half_body = socket.create_connection(address, timeout=10)
        idle.append(half_body)
        half_body.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        time.sleep(0.5)  # the server has accepted them
        for _ in range(3):
            start = time.perf_counter()
            assert len(score_images(service.scoring_uri, im_paths[:1], timeout=10)) == 1
            assert time.perf_counter() - start < 3
    finally:
        for sock in idle:
            sock.close()


def test_service_stops_cleanly(broken_model_dir, im_paths):
    """Started and stopped with a model whose probabilities are NaN: the answer is a 500 with
    a JSON message, not a body with a bare NaN (invalid JSON)."""
    port = free_port()
    service = LocalScoringService(broken_model_dir, port=port).start()
    process = service.process
    response = requests.post(service.scoring_uri, json=images_payload(im_paths[:1]), timeout=60)
    assert response.status_code == 500
    assert "not finite" in strict_json(response.text)["message"]
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
