"""Scoring script of the image classification web service (AzureML ACI/AKS, or azmlinfsrv locally).

AzureML's inference server (``azureml-inference-server-http``, command ``azmlinfsrv``) imports
this file, calls ``init()`` once per worker process, then ``run(raw_data)`` for each request.

Request: ``POST /score`` with the JSON body ``{"data": ["<base64 image file>", ...]}``.
Response: status 200 and, per image, a list of ``{"label": str, "probability": float}``,
highest probability first: the ``SCORE_TOP_K`` best classes, or for a multi-label model every
label at or above the threshold saved with the model. A bad request gets a 4xx status and the
JSON body ``{"message": "..."}``; the service keeps serving.

The model is a folder written by ``utils_cv.classification.saved.save_model`` (weights in
safetensors + ``model.json``; nothing is unpickled), found in ``AZUREML_MODEL_DIR`` or in one
of its sub-folders (where AzureML mounts a registered model). Images are preprocessed as the
model's specification (``spec.ModelSpec`` in ``model.json``: image size, resize method, pad
colour, mean and std) says, by the code the validation data loader ran in training, so the
service returns the probabilities of the training pipeline (the unit test ``test_parity.py``
checks it over HTTP).

Limits, read from environment variables by ``init()`` (defaults in brackets):
``SCORE_MAX_IMAGES`` (64) images per request; ``SCORE_MAX_IMAGE_BYTES`` (10 MiB) bytes of one
decoded image file; ``SCORE_MAX_PIXELS`` (40 million) pixels of one image;
``SCORE_MAX_REQUEST_BYTES`` (128 MiB) request body; ``SCORE_TOP_K`` (3) classes per image;
``SCORE_TORCH_THREADS`` (torch's default) CPU threads per worker.

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
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

# In a deployment source folder, the copied utils_cv package sits next to this file: use it.
_HERE = Path(__file__).resolve().parent
if (_HERE / "utils_cv").is_dir() and str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

# pip distributions this script and the utils_cv code it runs import directly, for a model of
# any registered backbone (torchvision: the resnet and squeezenet bodies); pinned to the local
# versions by the deployment helpers. The test suite checks the list is exact.
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


class Limits(NamedTuple):
    """Request limits: images per request, bytes and pixels per image, request bytes, top-k.

    (A NamedTuple, not a dataclass: AzureML loads this file without registering the module.)
    """

    max_images: int = 64
    max_image_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_request_bytes: int = 128 * 1024 * 1024
    top_k: int = 3

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
    """A bad request: ``message`` says what is wrong, ``status`` is the HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


_predictor = None  # saved.load_model(...): a predict.TorchPredictor
_limits = Limits()


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
    global _predictor, _limits
    root = os.environ.get("AZUREML_MODEL_DIR")
    if not root:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: it should point to the model folder.")
    model_dir = find_model_dir(root)  # fails fast, before the slow imports

    from utils_cv.classification.saved import load_model

    _limits = Limits.from_env()
    threads = os.environ.get("SCORE_TORCH_THREADS", "").strip()
    if threads:
        import torch

        torch.set_num_threads(int(threads))
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


def run(raw_data):
    """Score one request: JSON text ``{"data": [base64 image, ...]}`` -> predictions per image.

    Returns a list (one entry per image) of lists of ``{"label", "probability"}`` dicts, or for
    a bad request an HTTP response with a 4xx status and ``{"message": ...}``.
    """
    try:
        return score(raw_data)
    except ScoringError as err:
        logger.info("Rejected request (%d): %s", err.status, err.message)
        return error_response(err.message, err.status)


def score(raw_data) -> list[list[dict]]:
    """Like ``run`` but raises ScoringError for a bad request (for direct use and tests)."""
    if _predictor is None:
        raise RuntimeError("init() has not been called: the model is not loaded.")
    ims = parse_request(raw_data, _limits, _predictor.spec)
    return _predictor.predict(ims, top_k=_limits.top_k)


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
        except UnicodeDecodeError:
            raise ScoringError("The request body is not UTF-8 text.") from None
    if not isinstance(raw_data, str):
        raise ScoringError("The request body should be JSON text.")
    if len(raw_data) > limits.max_request_bytes:
        raise _too_large_request(len(raw_data), limits)
    try:
        body = json.loads(raw_data)
    except json.JSONDecodeError as err:
        raise ScoringError(f"The request body is not valid JSON: {err}.") from None
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
    return [decode_image(item, i, limits, spec) for i, item in enumerate(items)]


def _too_large_request(n_bytes: int, limits: Limits) -> ScoringError:
    return ScoringError(
        f"The request body has {n_bytes} bytes; at most {limits.max_request_bytes}.", 413
    )


def decode_image(item, index: int, limits: Limits, spec=None):
    """Decode one base64 image file (``data[index]``) into an RGB PIL image.

    spec : the model specification (``ModelSpec``): the file is decoded and resized as the
    predictor and the training data loader read an image file (``ModelSpec.im_array``: a JPEG
    at reduced scale down to im_size, then ``resize_im``), or kept at its size when None.
    Only the resized image is kept, so a request never holds many full-size images at once.
    """
    from utils_cv.common.image_io import decode_rgb

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
    with _open_image(data, where, limits) as im:
        if im.width * im.height > limits.max_pixels:
            raise ScoringError(
                f"{where} has {im.width}x{im.height} pixels; at most {limits.max_pixels}.", 413
            )
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
    try:
        from azureml_inference_server_http.api.aml_response import AMLResponse
    except ImportError:
        try:  # older AzureML inference images
            from azureml.contrib.services.aml_response import AMLResponse
        except ImportError:
            return {"message": message, "status": status}
    return AMLResponse({"message": message}, status, json_str=True)
