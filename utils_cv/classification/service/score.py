"""Scoring script of the image classification web service (AzureML ACI/AKS, or azmlinfsrv locally).

AzureML's inference server (``azureml-inference-server-http``, command ``azmlinfsrv``) imports
this file, calls ``init()`` once per worker process, then ``run(request)`` for each request.
``run`` is marked ``@rawhttp``: the server hands it the HTTP request as it arrived, unparsed,
so that every check below happens here, the same way whatever the method or Content-Type.

Request: ``POST /score`` with the JSON body ``{"data": ["<base64 image file>", ...]}``.
Response: status 200 and, per image, a list of ``{"label": str, "probability": float}``,
highest probability first: the ``SCORE_TOP_K`` best classes, or for a multi-label model every
label at or above the threshold saved with the model. Probabilities are always finite: a model
that returns NaN or infinity gets a 500 with a message, never a body that is not JSON.

A bad request gets a 4xx status and the JSON body ``{"message": "..."}`` (what is wrong, and
the limit when one was exceeded); the worker keeps serving. That includes bodies that are not
UTF-8, not JSON, nested too deeply (``[[[[...]]]]``), with numbers too long for Python to read
(a 5000-digit integer), with ``NaN``, of the wrong shape or types, and methods other than POST
(405). Requests malformed at the HTTP level (a request line over 4094 bytes, a broken header)
are answered by gunicorn itself, with a 4xx and a short HTML page, before this script runs.

The model is a folder written by ``utils_cv.classification.saved.save_model`` (weights in
safetensors + ``model.json``; nothing is unpickled), found in ``AZUREML_MODEL_DIR`` or in one
of its sub-folders (where AzureML mounts a registered model). Images are preprocessed as the
model's specification (``spec.ModelSpec`` in ``model.json``: image size, resize method, pad
colour, mean and std) says, by the code the validation data loader ran in training, so the
service returns the probabilities of the training pipeline (the unit test ``test_parity.py``
checks it over HTTP).

Limits, read from environment variables by ``init()`` (default in brackets; 413 when exceeded
unless said otherwise). Together they bound one request to about 5 s of CPU and 0.6 GB of
memory on 2 cores (measured: 64 progressive JPEGs of 4096 x 4096, 4.2 s and 0.15 GB; two
16-bit greyscale TIFFs of 32 million pixels in all, 1.6 s and 0.55 GB; before these limits one
8000 x 5000 16-bit TIFF took 4 to 15 s and 1.3 GB, and a request could carry 64):

- ``SCORE_MAX_REQUEST_BYTES`` (64 MiB): request body; a larger ``Content-Length`` is refused
  before the body is read, a longer body without one when it passes the limit.
- ``SCORE_MAX_BODY_SECONDS`` (60): time to receive the body once the headers are in; a slower
  client gets 408 and its connection is closed.
- ``SCORE_MAX_IMAGES`` (64): images per request. The body may hold at most this many plus
  1000 JSON values (counted before it is parsed: millions of ``[]`` would take gigabytes).
- ``SCORE_MAX_IMAGE_BYTES`` (10 MiB): bytes of one image file (after base64 decoding).
- ``SCORE_MAX_PIXELS`` (16,777,216 = 4096 x 4096; a 12-megapixel photo fits, a 24-megapixel
  one should be downsized first): width x height of one image, as its header declares; checked
  before anything is decoded.
- ``SCORE_MAX_REQUEST_PIXELS`` (32 million): pixels decoded for the whole request, counted from
  the headers of all its images before any is decoded. A JPEG counts at the reduced scale it
  is decoded at (Pillow's draft mode, down to the model's image size: a 12-megapixel photo for
  a 224-pixel model counts 500 x 375), other formats at full size. A request over it should be
  split into several.
- ``SCORE_MAX_CONCURRENT`` (2): requests one worker process decodes and scores at once; the
  server's other threads wait for a turn, holding their connections. It bounds a worker's
  memory (model + 2 requests) whatever number of threads serve connections.
- ``SCORE_TOP_K`` (3): classes returned per image (single-label models).
- ``SCORE_TORCH_THREADS`` (1): torch CPU threads per inference. Torch's own default, one per
  core, made the service 10 to 50 times slower on a busy 2-core machine (p95 5 to 16 s against
  0.3 to 0.45 s, ``benchmarks/README_scoring.md``): the threads of one inference wait for each
  other whenever another process holds a core. Raise it only on a dedicated machine with more
  cores than ``SCORE_MAX_CONCURRENT`` x worker processes.

Concurrency (how many connections are served at once, and that an idle or slow client cannot
stall the others) is the server's: see ``service/local.py`` (``LocalScoringService``) and
``deployment.SERVICE_ENVIRONMENT`` (``WORKER_COUNT``, ``GUNICORN_CMD_ARGS="--threads 8"``).

``utils_cv.common.deployment.prepare_source_dir`` copies this file, with the ``utils_cv``
modules listed in ``PACKAGE_FILES``, into the source folder that AzureML uploads.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import socket
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

# In a deployment source folder, the copied utils_cv package sits next to this file: use it.
_HERE = Path(__file__).resolve().parent
if (_HERE / "utils_cv").is_dir() and str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

try:  # the inference server's marker for run(request): the raw HTTP request, unparsed
    from azureml_inference_server_http.api.aml_request import rawhttp
except ImportError:
    try:  # older AzureML inference images
        from azureml.contrib.services.aml_request import rawhttp
    except ImportError:  # no server installed: run() is only called directly

        def rawhttp(func):
            return func


# pip distributions this script and the utils_cv code it runs import directly, for a model of
# any registered backbone (torchvision: the resnet and squeezenet bodies); pinned to the local
# versions by the deployment helpers. The test suite checks the list is exact. (The inference
# server itself comes with the server package, ``deployment.SERVER_PACKAGE``.)
PIP_PACKAGES = ("fastai", "numpy", "pillow", "safetensors", "timm", "torch", "torchvision")

# The utils_cv files scoring runs, relative to the folder that holds the utils_cv package.
PACKAGE_FILES = (
    "utils_cv/__init__.py",
    "utils_cv/common/__init__.py",
    "utils_cv/common/image_io.py",
    "utils_cv/classification/__init__.py",
    "utils_cv/classification/backbones.py",
    "utils_cv/classification/spec.py",
    "utils_cv/classification/network.py",
    "utils_cv/classification/saved.py",
    "utils_cv/classification/predict.py",
)

# Image formats the service decodes; anything else is rejected before decoding.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

# A child of the server's logger, so that messages reach its log (and Application Insights).
logger = logging.getLogger("azmlinfsrv.score")

# Bytes read from the request body at a time.
_READ_CHUNK = 1024 * 1024

# JSON values a request may hold besides its images (see ``_parse_json``).
MAX_EXTRA_JSON_VALUES = 1000


class Limits(NamedTuple):
    """Request limits and worker settings (see the module docstring): each field is set by the
    environment variable ``SCORE_<FIELD>``.

    (A NamedTuple, not a dataclass: AzureML loads this file without registering the module.)
    """

    max_images: int = 64
    max_image_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_request_pixels: int = 32_000_000
    max_request_bytes: int = 64 * 1024 * 1024
    max_body_seconds: int = 60
    top_k: int = 3
    torch_threads: int = 1
    max_concurrent: int = 2

    @classmethod
    def from_env(cls, env=os.environ) -> Limits:
        """Limits from the ``SCORE_*`` environment variables (defaults for unset ones)."""
        values = {}
        for name in cls._fields:
            raw = env.get(f"SCORE_{name.upper()}")
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise ValueError(f"SCORE_{name.upper()}={raw!r} is not an integer.") from None
            if values[name] < 1:
                raise ValueError(f"SCORE_{name.upper()}={raw!r} must be 1 or more.")
        return cls(**values)


class ScoringError(ValueError):
    """A failed request: ``message`` says what is wrong, ``status`` is the HTTP status (4xx for
    a bad request, 500 for a model that returned no usable answer)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


_predictor = None  # saved.load_model(...): a predict.TorchPredictor
_limits = Limits()
_slots = threading.BoundedSemaphore(_limits.max_concurrent)  # requests scored at once


def find_model_dir(root: str | Path) -> Path:
    """The folder holding ``model.json``: ``root`` itself or its only sub-folder that has one."""
    from utils_cv.classification.saved import META_FILE

    root = Path(root)
    if (root / META_FILE).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(META_FILE)) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"No {META_FILE} in {root} or its sub-folders: register the folder written by "
            f"save_model (model.safetensors + model.json)."
        )
    raise ValueError(f"Several models under {root}: {[str(p) for p in found]}; keep one.")


def init() -> None:
    """Load the model from ``AZUREML_MODEL_DIR`` and read the limits (once per worker)."""
    global _predictor, _limits, _slots
    root = os.environ.get("AZUREML_MODEL_DIR")
    if not root:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: it should point to the model folder.")
    model_dir = find_model_dir(root)  # fails fast, before the slow imports
    limits = Limits.from_env()

    import torch

    from utils_cv.classification.saved import load_model

    torch.set_num_threads(limits.torch_threads)
    _limits = limits
    _slots = threading.BoundedSemaphore(limits.max_concurrent)
    _predictor = load_model(model_dir)
    spec = _predictor.spec
    logger.info(
        "Loaded %s (%d px, resize %s, %d classes, multilabel=%s) from %s; %s",
        spec.backbone,
        spec.im_size,
        spec.resize,
        len(spec.classes),
        spec.multilabel,
        model_dir,
        _limits,
    )


@rawhttp
def run(request):
    """Score one request; the inference server's entry point.

    request : the HTTP request (a flask ``Request``, as the server passes it), or its body
        (JSON text or UTF-8 bytes) when called directly.
    Returns a list (one entry per image) of lists of ``{"label", "probability"}`` dicts, or an
    HTTP response with an error status and the JSON body ``{"message": ...}``.
    """
    try:
        if hasattr(request, "environ"):  # an HTTP request from the server
            if request.method == "OPTIONS":  # CORS preflight: what the server answered before
                return json_response({}, 200)
            if request.method != "POST":
                raise ScoringError(
                    f"{request.method} is not supported: POST the JSON body "
                    '{"data": [base64 image, ...]} to /score.',
                    405,
                )
            request = read_body(request, _limits)
        return score(request)
    except ScoringError as err:
        logger.info("Rejected request (%d): %s", err.status, err.message)
        return error_response(err.message, err.status)


def score(raw_data) -> list[list[dict]]:
    """Like ``run`` for a request body, but raises ScoringError for a failed request."""
    import numpy as np

    from utils_cv.classification.predict import to_predictions

    if _predictor is None:
        raise RuntimeError("init() has not been called: the model is not loaded.")
    with _slots:
        ims = parse_request(raw_data, _limits, _predictor.spec)
        probs = _predictor.predict_proba(ims)
    if not np.isfinite(probs).all():
        raise ScoringError(
            "The model returned probabilities that are not finite numbers (NaN or infinity); "
            "its weights or model.json are damaged. Retrain or re-export it.",
            500,
        )
    return to_predictions(probs, _predictor.spec, _limits.top_k)


def read_body(request, limits: Limits) -> bytes:
    """The body of an HTTP request (flask ``Request``) as bytes, within the limits.

    A ``Content-Length`` over ``limits.max_request_bytes`` is refused (413) before anything is
    read; a body without one is refused once it passes the limit. The body must arrive within
    ``limits.max_body_seconds``: under gunicorn (the AzureML server) reading then stops, the
    connection is closed after the answer, and the status is 408.
    """
    declared = request.content_length
    if declared is not None and declared > limits.max_request_bytes:
        raise _too_large_request(declared, limits)
    deadline = _ReadDeadline(request.environ.get("gunicorn.socket"), limits.max_body_seconds)
    chunks, size = [], 0
    try:
        with deadline:
            while True:
                chunk = request.stream.read(_READ_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > limits.max_request_bytes:
                    raise _too_large_request(size, limits, "at least ")
                chunks.append(chunk)
    except ScoringError:
        raise
    except Exception:  # a client gone or too slow, or a broken chunked encoding
        if deadline.expired:
            raise ScoringError(_slow_body_message(limits), 408) from None
        raise ScoringError("The request body could not be read (connection broken?).") from None
    if deadline.expired:
        raise ScoringError(_slow_body_message(limits), 408)
    return b"".join(chunks)


def _slow_body_message(limits: Limits) -> str:
    return f"The request body did not arrive within {limits.max_body_seconds} s."


class _ReadDeadline:
    """Stops reading from ``sock`` (a connected socket; None: no deadline) after ``seconds``:
    a timer shuts the socket down for reading, which ends a blocked read at once."""

    def __init__(self, sock, seconds: float):
        self.sock, self.seconds = sock, seconds
        self.expired = False
        self._lock = threading.Lock()
        self._done = False
        self._timer = None

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            try:
                self.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def __enter__(self) -> _ReadDeadline:
        if self.sock is not None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()


def parse_request(raw_data, limits: Limits, spec=None) -> list:
    """Validate a request body (JSON text or UTF-8 bytes); return its images as RGB PIL images.

    spec : the model specification whose resizing is applied (see ``decode_image``).
    Raises ScoringError (status 400, or 413 for a limit) for a bad request.
    """
    if isinstance(raw_data, (bytes, bytearray)):
        if len(raw_data) > limits.max_request_bytes:
            raise _too_large_request(len(raw_data), limits)
        try:
            raw_data = raw_data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ScoringError(
                f"The request body is not UTF-8 text (byte {err.start} cannot be decoded)."
            ) from None
    if not isinstance(raw_data, str):
        raise ScoringError("The request body should be JSON text.")
    if len(raw_data) > limits.max_request_bytes:
        raise _too_large_request(len(raw_data), limits)
    body = _parse_json(raw_data, limits)
    if not isinstance(body, dict) or "data" not in body:
        raise ScoringError('The request should be a JSON object {"data": [base64 image, ...]}.')
    items = body["data"]
    if not isinstance(items, list):
        raise ScoringError('"data" should be a list of base64-encoded image files.')
    if not items:
        raise ScoringError('"data" is empty: send at least one image.')
    if len(items) > limits.max_images:
        raise ScoringError(
            f'"data" has {len(items)} images; at most {limits.max_images} per request.', 413
        )
    draft_size = None if spec is None else spec.draft_size
    opened = []  # (where, opened image): headers read, nothing decoded yet
    try:
        for i, item in enumerate(items):
            opened.append(open_item(item, i, limits, draft_size))
        n_pixels = sum(im.width * im.height for _, im in opened)
        if n_pixels > limits.max_request_pixels:
            raise ScoringError(
                f"The images of this request would decode {n_pixels} pixels; at most "
                f"{limits.max_request_pixels} per request: send fewer or smaller images.",
                413,
            )
        return [_decode(im, where, spec) for where, im in opened]
    finally:
        for _, im in opened:
            im.close()


def _parse_json(text: str, limits: Limits):
    """The JSON value of ``text``; ScoringError for anything Python's reader refuses (syntax,
    nesting deeper than the interpreter's recursion limit, integers of more than 4300 digits),
    for the non-standard constants NaN and Infinity, and for more than
    ``limits.max_images + MAX_EXTRA_JSON_VALUES`` values (counted before parsing, as commas
    and opening brackets: a body of millions of ``[]`` or ``0`` would take gigabytes)."""
    n_values = text.count(",") + text.count("[") + text.count("{")
    if n_values > limits.max_images + MAX_EXTRA_JSON_VALUES:
        raise ScoringError(
            f"The request body has about {n_values} JSON values; a request is "
            '{"data": [base64 image, ...]} with at most '
            f"{limits.max_images} images."
        )

    def refuse_constant(name):
        raise ScoringError(f"The request body is not valid JSON: {name} is not a JSON value.")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except ScoringError:
        raise
    except json.JSONDecodeError as err:
        raise ScoringError(f"The request body is not valid JSON: {err}.") from None
    except RecursionError:
        raise ScoringError("The request body is not valid JSON: nested too deeply.") from None
    except ValueError:  # int(...) of a number with more digits than sys.get_int_max_str_digits
        raise ScoringError(
            "The request body is not valid JSON: it holds a number too long to read."
        ) from None


def _too_large_request(n_bytes: int, limits: Limits, qualifier: str = "") -> ScoringError:
    return ScoringError(
        f"The request body has {qualifier}{n_bytes} bytes; at most {limits.max_request_bytes}.",
        413,
    )


def decode_image(item, index: int, limits: Limits, spec=None):
    """Decode one base64 image file (``data[index]``) into an RGB PIL image.

    spec : the model specification (``ModelSpec``): the file is decoded and resized as the
    predictor and the training data loader read an image file (``ModelSpec.im_array``: a JPEG
    at reduced scale down to im_size, then ``resize_im``), or kept at its size when None.
    Only the resized image is kept, so a request never holds many full-size images at once.
    Raises ScoringError (400, or 413 over ``limits``: see ``open_item``, and more than
    ``limits.max_request_pixels`` to decode).
    """
    where, im = open_item(item, index, limits, None if spec is None else spec.draft_size)
    with im:
        if im.width * im.height > limits.max_request_pixels:
            raise ScoringError(
                f"{where} would decode {im.width}x{im.height} pixels; at most "
                f"{limits.max_request_pixels} per request.",
                413,
            )
        return _decode(im, where, spec)


def open_item(item, index: int, limits: Limits, draft_size: int | None = None):
    """(``"data[index]"``, the opened PIL image) of one base64 image file, header read only.

    Refused (ScoringError) when it is no string, not base64, over ``limits.max_image_bytes``,
    no image of IMAGE_FORMATS, or over ``limits.max_pixels`` as its header declares. A JPEG is
    set to decode at reduced scale down to ``draft_size`` (as ``image_io.decode_rgb`` does):
    its width and height are then the ones it will decode at.
    """
    where = f"data[{index}]"
    if not isinstance(item, str):
        raise ScoringError(f"{where} should be a base64 string, not {type(item).__name__}.")
    too_large = ScoringError(f"{where} is larger than {limits.max_image_bytes} bytes.", 413)
    if len(item) > 4 * (limits.max_image_bytes // 3 + 1):
        raise too_large
    try:
        data = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise ScoringError(f"{where} is not valid base64.") from None
    if len(data) > limits.max_image_bytes:
        raise too_large
    im = _open_image(data, where, limits)
    if im.width * im.height > limits.max_pixels:
        im.close()
        raise ScoringError(
            f"{where} has {im.width}x{im.height} pixels; at most {limits.max_pixels}.", 413
        )
    if draft_size and im.format == "JPEG":
        im.draft(None, (draft_size, draft_size))
    return where, im


def _decode(im, where: str, spec=None):
    """The opened image ``im`` decoded to RGB (and closed), resized as ``spec`` says."""
    from utils_cv.common.image_io import decode_rgb

    try:
        rgb = decode_rgb(im, None if spec is None else spec.draft_size)
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ScoringError(f"{where} is a damaged or truncated image file.") from None
    return rgb if spec is None else spec.resize_im(rgb)


def _open_image(data: bytes, where: str, limits: Limits):
    """PIL image of ``data`` (header read only); ScoringError if it is no accepted format."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # sizes above the limit are rejected by the caller
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise ScoringError(
            f"{where} has too many pixels (at most {limits.max_pixels}).", 413
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ScoringError(
            f"{where} is not an image file ({', '.join(IMAGE_FORMATS)} accepted)."
        ) from None


def error_response(message: str, status: int):
    """An HTTP response ``{"message": message}`` with ``status`` for the AzureML server.

    Outside the server (no AMLResponse available) the dict ``{"message", "status"}`` is returned.
    """
    response = json_response({"message": message}, status)
    return {"message": message, "status": status} if response is None else response


def json_response(body, status: int):
    """An HTTP response with the JSON ``body`` (finite numbers only) and ``status``, for the
    AzureML server; None where no server is installed."""
    try:
        from azureml_inference_server_http.api.aml_response import AMLResponse
    except ImportError:
        try:  # older AzureML inference images
            from azureml.contrib.services.aml_response import AMLResponse
        except ImportError:
            return None
    response = AMLResponse(json.dumps(body, allow_nan=False), status)
    response.mimetype = "application/json"
    return response
