"""Saved models: a folder with ``model.safetensors`` (weights only) and ``model.json``.

``model.json`` is the model specification (``spec.ModelSpec``: backbone, image size, resize
method, normalisation, classes, multi-label flag and threshold, head) with a format version
and the SHA-256 of the weights, validated strictly on load (``spec.spec_from_json``). Loading
rebuilds the network from the backbone registry and never unpickles anything, so a model
folder from elsewhere cannot run code. Files are written with the process umask (readable by a
service user or a colleague under the usual 022), to a temporary name first, so an interrupted
save never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from utils_cv.classification.spec import (
    MAX_META_BYTES,
    ModelSpec,
    SpecError,
    spec_from_json,
    spec_to_json,
)

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


class ModelFileError(ValueError):
    """A saved model folder is missing, truncated, tampered with or inconsistent."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_file(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary name in the same folder, created with the
    process umask (not the 0600 of ``tempfile``); returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_model(learn, model_dir: str | Path, threshold: float | None = None) -> Path:
    """Save ``learn`` (from ``train`` or ``create_learner``) as weights + JSON; return the folder.

    threshold : probability at or above which a multi-label model predicts a class (default:
    the specification's). The specification travels with the weights: prediction resizes and
    normalises exactly as the validation data loader did.
    """
    from safetensors.torch import save

    spec: ModelSpec = learn.spec
    if threshold is not None:
        spec = spec.replace(threshold=threshold)
    meta = spec_to_json(spec, "")  # an incomplete spec fails here, before a file is replaced
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    weights = write_file(model_dir / WEIGHTS_FILE, save(state))
    meta["weights_sha256"] = sha256_file(weights)
    write_file(model_dir / META_FILE, json.dumps(meta, indent=2).encode("utf-8"))
    return model_dir


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_spec(model_dir: str | Path) -> tuple[ModelSpec, str]:
    """The specification and weights SHA-256 in ``model_dir/model.json``, strictly validated.

    Raises ModelFileError naming the file (and the field) for anything wrong.
    """
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise ModelFileError(
            f"No {META_FILE} in {model_dir}: is this a folder saved by save_model?"
        )
    size = path.stat().st_size
    if size > MAX_META_BYTES:
        raise ModelFileError(f"{path} has {size} bytes; a model.json has at most {MAX_META_BYTES}.")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ModelFileError(
            f"{path} is not valid JSON ({err}); the file may be truncated."
        ) from None
    try:
        return spec_from_json(data, str(path))
    except SpecError as err:
        raise ModelFileError(str(err)) from None


def load_network(model_dir: str | Path):
    """(spec, network in eval mode on the CPU) from a saved model folder; nothing is unpickled.

    The weights must match the SHA-256 in ``model.json`` and the network the specification
    describes; ModelFileError otherwise.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    model_dir = Path(model_dir)
    spec, sha = read_spec(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"No {WEIGHTS_FILE} in {model_dir}.")
    data = weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise ModelFileError(
            f"{weights} does not match the SHA-256 recorded in {META_FILE}: the file was changed "
            f"or truncated. Save the model again or copy the whole folder."
        )
    try:
        state = load(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{weights} could not be read ({err}).") from None
    model = spec.build_network(pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise ModelFileError(
            f"{weights} does not fit a {spec.backbone} with {len(spec.classes)} classes "
            f"({first_line})."
        ) from None
    return spec, model.eval()


def load_model(model_dir: str | Path, device: str = "cpu"):
    """The saved model in ``model_dir`` as a PyTorch predictor (``predict.TorchPredictor``)."""
    from utils_cv.classification.predict import TorchPredictor

    spec, model = load_network(model_dir)
    return TorchPredictor(model, spec, device)


def model_size_mb(model_dir: str | Path) -> float:
    """Size on disk of a saved model folder, in megabytes (10**6 bytes)."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file()) / 1e6
