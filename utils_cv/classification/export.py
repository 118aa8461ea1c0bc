"""Saving and loading trained classifiers safely, inference on PIL images, and ONNX export.

A saved model is a folder with ``model.safetensors`` (weights only) and ``model.json``
(architecture, classes, image size, normalisation, multi-label flag, threshold, and the
SHA-256 of the weights). Loading rebuilds the network from the backbone registry and never
unpickles anything, so a model folder from elsewhere cannot run code on load.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils_cv.classification.backbones import get_backbone
from utils_cv.classification.model import build_classifier
from utils_cv.common.image_io import load_rgb, to_rgb

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A saved model folder is missing, truncated, tampered with or inconsistent."""


@dataclass
class ModelMeta:
    """What is needed, beside the weights, to rebuild and use a classifier."""

    architecture: str
    classes: list[str]
    im_size: int
    mean: list[float]
    std: list[float]
    multilabel: bool = False
    threshold: float = 0.5
    dropout: float = 0.5
    head: str = "mlp"
    format_version: int = FORMAT_VERSION
    weights_sha256: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "model.json") -> ModelMeta:
        """Validate ``data`` (parsed JSON) and build the metadata; ModelFileError on bad fields."""
        if not isinstance(data, dict):
            raise ModelFileError(f"{source}: expected a JSON object.")
        checks = {
            "architecture": str,
            "classes": list,
            "im_size": int,
            "mean": list,
            "std": list,
        }
        for key, kind in checks.items():
            if key not in data:
                raise ModelFileError(f"{source}: missing field '{key}'.")
            if not isinstance(data[key], kind):
                raise ModelFileError(f"{source}: field '{key}' should be a {kind.__name__}.")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ModelFileError(
                f"{source}: format_version {data['format_version']} is newer than this utils_cv "
                f"understands ({FORMAT_VERSION}); upgrade utils_cv."
            )
        if not data["classes"] or not all(isinstance(c, str) for c in data["classes"]):
            raise ModelFileError(f"{source}: 'classes' should be a non-empty list of strings.")
        from utils_cv.classification.model import HEADS

        if data.get("head", "mlp") not in HEADS:
            raise ModelFileError(f"{source}: 'head' should be one of {', '.join(HEADS)}.")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(
    learn, model_dir: str | Path, threshold: float = 0.5, im_size: int | None = None
) -> Path:
    """Save ``learn`` (from ``create_learner``) as weights + JSON into ``model_dir``; return it.

    threshold : probability above which a multi-label model predicts a label.
    im_size : training image size in pixels (default: read from the DataLoaders).
    """
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    norm = _find_normalize(learn.dls)
    if im_size is None:
        im_size = int(learn.dls.one_batch()[0].shape[-1])
    meta = ModelMeta(
        architecture=learn.arch_name,
        classes=[str(c) for c in learn.dls.vocab],
        im_size=im_size,
        mean=[float(v) for v in norm.mean.flatten()],
        std=[float(v) for v in norm.std.flatten()],
        multilabel=bool(getattr(learn, "multilabel", False)),
        threshold=float(threshold),
        dropout=float(getattr(learn, "dropout", 0.5)),
        head=str(getattr(learn, "head_type", "mlp")),
    )
    state = {k: v.detach().float().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    weights = model_dir / WEIGHTS_FILE
    save_file(state, str(weights))
    meta.weights_sha256 = _sha256(weights)
    (model_dir / META_FILE).write_text(json.dumps(asdict(meta), indent=2))
    return model_dir


def _find_normalize(dls):
    from fastai.vision.all import Normalize

    for tfm in dls.after_batch.fs:
        if isinstance(tfm, Normalize):
            return tfm
    raise ValueError("The DataLoaders have no Normalize transform; build them with get_dls.")


def read_meta(model_dir: str | Path) -> ModelMeta:
    """Read and validate ``model.json`` in ``model_dir``."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise ModelFileError(
            f"No {META_FILE} in {model_dir}: is this a folder saved by save_model?"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(
            f"{path} is not valid JSON ({err}); the file may be truncated."
        ) from None
    return ModelMeta.from_dict(data, str(path))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Rebuild the classifier saved in ``model_dir`` (weights + JSON; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"No {WEIGHTS_FILE} in {model_dir}.")
    if meta.weights_sha256 and _sha256(weights) != meta.weights_sha256:
        raise ModelFileError(
            f"{weights} does not match the SHA-256 recorded in {META_FILE}: the file was changed "
            f"or truncated. Save the model again or copy the whole folder."
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{weights} could not be read ({err}).") from None
    get_backbone(meta.architecture)  # clear error for an unknown architecture
    model = build_classifier(meta.architecture, len(meta.classes), False, meta.dropout, meta.head)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise ModelFileError(
            f"{weights} does not fit a {meta.architecture} with {len(meta.classes)} classes "
            f"({first_line})."
        ) from None
    return Classifier(model.to(device).eval(), meta, torch.device(device))


class Classifier:
    """A trained classifier for inference on PIL images or file paths.

    ``predict_proba(ims)`` -> (n_images, n_classes) probabilities (softmax, or sigmoid for
    multi-label); ``predict(ims, top_k)`` -> per image a list of {"label", "probability"}.
    """

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device=torch.device("cpu")):
        self.model, self.meta, self.device = model, meta, device
        self.classes = list(meta.classes)

    @property
    def im_size(self) -> int:
        return self.meta.im_size

    @property
    def multilabel(self) -> bool:
        return self.meta.multilabel

    def preprocess(self, ims: Sequence) -> torch.Tensor:
        """Tensor (n, 3, im_size, im_size): RGB, squished to im_size, normalised."""
        return preprocess_ims(ims, self.meta.im_size, self.meta.mean, self.meta.std)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)

    @torch.inference_mode()
    def predict_proba(self, ims: Sequence, batch_size: int = 32) -> np.ndarray:
        """Probabilities for ``ims`` (PIL images or paths), shape (n_images, n_classes)."""
        out = []
        for i in range(0, len(ims), batch_size):
            x = self.preprocess(ims[i : i + batch_size]).to(self.device)
            out.append(self.activation(self.model(x)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, ims: Sequence, top_k: int = 3) -> list[list[dict]]:
        """Per image: the ``top_k`` classes with probabilities, highest first; multi-label
        models return every label at or above the saved threshold instead."""
        return probs_to_predictions(self.predict_proba(ims), self.classes, self.meta, top_k)


def probs_to_predictions(probs: np.ndarray, classes: list[str], meta: ModelMeta, top_k: int = 3):
    """Turn a probability matrix into per-image lists of {"label", "probability"} dicts."""
    results = []
    for row in probs:
        order = np.argsort(-row)
        if meta.multilabel:
            order = [i for i in order if row[i] >= meta.threshold]
        else:
            order = order[:top_k]
        results.append([{"label": classes[i], "probability": float(row[i])} for i in order])
    return results


def preprocess_ims(ims: Sequence, im_size: int, mean, std) -> torch.Tensor:
    """Load/convert ``ims`` (PIL images, numpy arrays or paths) into a normalised batch tensor.

    Each image is converted to RGB (see ``load_rgb``), resized to ``im_size`` x ``im_size``
    with bilinear interpolation (as the training loader does), scaled to 0..1 and normalised.
    """
    arrays = []
    for im in ims:
        if isinstance(im, (str, Path)):
            im = load_rgb(im)
        elif isinstance(im, np.ndarray):
            im = Image.fromarray(im)
        if not isinstance(im, Image.Image):
            raise TypeError(f"Expected a PIL image, numpy array or path, got {type(im).__name__}.")
        im = to_rgb(im).resize((im_size, im_size), Image.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def imagenet_classifier(arch: str = "efficientnet_lite0") -> Classifier:
    """The ImageNet-pretrained network ``arch`` as a Classifier over the 1000 ImageNet classes."""
    from utils_cv.classification.data import imagenet_labels

    backbone = get_backbone(arch)
    meta = ModelMeta(
        architecture=backbone.name,
        classes=imagenet_labels(),
        im_size=backbone.im_size,
        mean=list(backbone.mean),
        std=list(backbone.std),
    )
    return Classifier(backbone.create_imagenet_model(pretrained=True), meta)


def model_size_mb(model_dir: str | Path) -> float:
    """Size on disk of a saved model folder, in megabytes (10**6 bytes)."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file()) / 1e6


# --- ONNX ----------------------------------------------------------------------------------


class _WithActivation(torch.nn.Module):
    def __init__(self, model, multilabel):
        super().__init__()
        self.model, self.multilabel = model, multilabel

    def forward(self, x):
        logits = self.model(x)
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)


def export_onnx(classifier: Classifier, path: str | Path, opset: int = 17) -> Path:
    """Export ``classifier`` (probabilities out, dynamic batch size) to the ONNX file ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _WithActivation(classifier.model.cpu(), classifier.multilabel).eval()
    dummy = torch.zeros(1, 3, classifier.im_size, classifier.im_size)
    torch.onnx.export(
        wrapped,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    classifier.model.to(classifier.device).eval()
    return path


class OnnxClassifier(Classifier):
    """Same interface as Classifier, running an exported ONNX file with onnxruntime."""

    def __init__(self, onnx_path: str | Path, meta: ModelMeta, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.meta, self.classes, self.device = meta, list(meta.classes), torch.device("cpu")

    def predict_proba(self, ims: Sequence, batch_size: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(ims), batch_size):
            x = self.preprocess(ims[i : i + batch_size]).numpy()
            out.append(self.session.run(None, {"image": x})[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for an already preprocessed batch (n, 3, h, w) float32."""
        return self.session.run(None, {"image": x})[0]


def time_inference(fn, x, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn(x)`` in milliseconds over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def measure_speed(classifier: Classifier, batch_size: int = 32, repeats: int = 5) -> dict:
    """Inference speed on random inputs of the classifier's size (preprocessing excluded).

    Returns {"latency_ms": median ms for one image at batch 1,
    "throughput": images per second at ``batch_size``}.
    """
    size = classifier.im_size
    one = torch.randn(1, 3, size, size)
    batch = torch.randn(batch_size, 3, size, size)
    if isinstance(classifier, OnnxClassifier):
        fn = classifier.run_tensor
        one, batch = one.numpy(), batch.numpy()
    else:

        @torch.inference_mode()
        def fn(x):
            return classifier.activation(classifier.model(x.to(classifier.device)))

    latency = time_inference(fn, one, repeats=repeats * 4)
    batch_ms = time_inference(fn, batch, repeats=repeats, warmup=1)
    return {"latency_ms": latency, "throughput": batch_size / (batch_ms / 1000)}
