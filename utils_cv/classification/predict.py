"""Predictors: one interface, one implementation per runtime, and the ``predict`` command.

``Predictor`` is the interface: ``predict_proba(ims)`` -> probabilities (n_images, n_classes),
``predict(ims, top_k)`` -> per image a list of ``{"label", "probability"}``. ``ims`` is one image
(PIL image, numpy array, file path), a folder (walked recursively), or a list of any of these.
Both runtimes preprocess with the model specification (``spec.ModelSpec.preprocess``), the
code the validation data loader runs, so they give the training pipeline's probabilities:

- ``TorchPredictor``: PyTorch eager (``saved.load_model``);
- ``OnnxPredictor``: ONNX Runtime, on an exported file or in-memory model.

From the shell::

    python -m utils_cv.classification.predict MODEL_DIR PATH... [--out predictions.csv]
        [--top-k K] [--runtime torch|onnx] [--batch-size N] [--tta]

writes one CSV row per image: ``file``, ``status`` ("ok" or why the file could not be read),
``predicted`` (the top class, or every class at or above the threshold for a multi-label
model, separated by spaces), ``top_k`` (the K best classes as ``label:probability``,
separated by ``"; "``, as class folder names may hold spaces) and one
``prob_<class>`` column per class. Unreadable files are also listed on stderr; the exit status
is non-zero only when nothing could be classified.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from utils_cv.classification.spec import ModelSpec

RUNTIMES = ("torch", "onnx")


# --- inputs --------------------------------------------------------------------------------------


def image_paths(paths: Iterable[str | Path]) -> list[Path]:
    """The image files among ``paths``: files as given, folders walked recursively (hidden
    files and folders skipped, sorted). FileNotFoundError for a path that does not exist."""
    from utils_cv.classification.data import get_image_files

    out = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.extend(get_image_files(path))
        elif path.exists():
            out.append(path)
        else:
            raise FileNotFoundError(f"No such file or folder: {path}")
    return out


def as_image_list(ims) -> list:
    """``ims`` as a list of images: one image or path becomes a list of one, a folder its
    image files, a list keeps its order with folders expanded."""
    if isinstance(ims, (Image.Image, np.ndarray, str, Path)):
        ims = [ims]
    out = []
    for im in ims:
        if isinstance(im, (str, Path)) and Path(im).is_dir():
            out.extend(image_paths([im]))
        else:
            out.append(im)
    return out


def to_predictions(probs: np.ndarray, spec: ModelSpec, top_k: int = 3) -> list[list[dict]]:
    """Per image, the ``top_k`` classes with probabilities, highest first; for a multi-label
    model every class at or above the threshold instead."""
    results = []
    for row in probs:
        order = np.argsort(-row, kind="stable")
        if spec.multilabel:
            order = [i for i in order if row[i] >= spec.threshold]
        else:
            order = order[:top_k]
        results.append([{"label": spec.classes[i], "probability": float(row[i])} for i in order])
    return results


# --- the interface -------------------------------------------------------------------------------


class Predictor:
    """Probabilities and predictions for images, from a model specification and a runtime.

    Subclasses implement ``run(x)``: probabilities (n, n_classes) for a preprocessed float32
    batch x of shape (n, 3, im_size, im_size).

    tta : test-time augmentation: every batch is also run mirrored left-right and the two
    probabilities are averaged (``run_batch``; twice the inference time). Every runtime gets
    it, and ``predict_proba``, ``predict`` and ``predict_files`` use it.
    """

    runtime = "none"
    tta = False

    def __init__(self, spec: ModelSpec, tta: bool = False):
        if not spec.is_complete:
            raise ValueError("A predictor needs a specification with classes (spec.with_data).")
        self.spec = spec
        self.tta = bool(tta)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def multilabel(self) -> bool:
        return bool(self.spec.multilabel)

    @property
    def im_size(self) -> int:
        return self.spec.im_size

    def preprocess(self, ims: Sequence) -> np.ndarray:
        """Model input for ``ims`` (see ``ModelSpec.preprocess``)."""
        return self.spec.preprocess(ims)

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, n_classes) for a preprocessed batch: ``run(x)``, or with ``tta``
        the mean of ``run(x)`` and ``run`` of the batch mirrored left-right."""
        probs = self.run(x)
        if self.tta:
            probs = (probs + self.run(np.ascontiguousarray(x[..., ::-1]))) / 2
        return probs

    def predict_proba(self, ims, batch_size: int = 32) -> np.ndarray:
        """Probabilities (n_images, n_classes): softmax, or sigmoid for multi-label models."""
        ims = as_image_list(ims)
        out = [
            self.run_batch(self.preprocess(ims[i : i + batch_size]))
            for i in range(0, len(ims), batch_size)
        ]
        if not out:
            return np.zeros((0, len(self.spec.classes)), np.float32)
        return np.concatenate(out)

    def predict(self, ims, top_k: int = 3, batch_size: int = 32) -> list[list[dict]]:
        """Per image, a list of ``{"label", "probability"}`` (see ``to_predictions``)."""
        return to_predictions(self.predict_proba(ims, batch_size), self.spec, top_k)


class TorchPredictor(Predictor):
    """A PyTorch network (logits out) and its specification, on ``device``."""

    runtime = "torch"

    def __init__(self, model, spec: ModelSpec, device="cpu", tta: bool = False):
        import torch

        super().__init__(spec, tta)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def activation(self, logits):
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(x).to(self.device)
            return self.activation(self.model(x)).float().cpu().numpy()


class _WithActivation:
    """Builds the exported module: the network followed by softmax or sigmoid."""

    @staticmethod
    def wrap(model, multilabel: bool):
        import torch

        class WithActivation(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                logits = self.model(x)
                return logits.sigmoid() if multilabel else logits.softmax(dim=1)

        return WithActivation().eval()


def export_onnx(predictor: TorchPredictor, path: str | Path, opset: int = 17) -> Path:
    """Export ``predictor``'s network (probabilities out, dynamic batch size) to ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = predictor.model.cpu()
    wrapped = _WithActivation.wrap(model, predictor.multilabel)
    dummy = torch.zeros(1, 3, predictor.im_size, predictor.im_size)
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated but is the one that works offline for
        # every registered backbone; its warnings are not the user's concern.
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
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
    predictor.model.to(predictor.device)
    return path


def onnx_bytes(predictor: TorchPredictor) -> bytes:
    """``predictor`` exported to ONNX (see ``export_onnx``), as bytes."""
    with tempfile.TemporaryDirectory(prefix="utils_cv_onnx_") as tmp:
        return export_onnx(predictor, Path(tmp) / "model.onnx").read_bytes()


class OnnxPredictor(Predictor):
    """ONNX Runtime on the CPU, for an ONNX file or in-memory model (bytes) made by
    ``export_onnx``; ``threads`` intra-op threads (default: ONNX Runtime's choice)."""

    runtime = "onnx"

    def __init__(
        self,
        onnx_model: str | Path | bytes,
        spec: ModelSpec,
        threads: int | None = None,
        tta: bool = False,
    ):
        import onnxruntime as ort

        super().__init__(spec, tta)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, np.float32)})[0]


def load_predictor(
    model_dir: str | Path,
    runtime: str = "torch",
    device: str = "cpu",
    threads: int | None = None,
    tta: bool = False,
) -> Predictor:
    """The saved model in ``model_dir`` on ``runtime`` ("torch" or "onnx": exported in memory,
    or ``model.onnx`` in the folder when it is there and newer than the weights). tta :
    test-time augmentation (mirrored copy averaged in, see ``Predictor``)."""
    from utils_cv.classification.saved import WEIGHTS_FILE, load_model

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
    predictor = load_model(model_dir, device)
    if runtime == "torch":
        predictor.tta = bool(tta)
        return predictor
    onnx_file = Path(model_dir) / "model.onnx"
    weights = Path(model_dir) / WEIGHTS_FILE
    if onnx_file.is_file() and onnx_file.stat().st_mtime >= weights.stat().st_mtime:
        return OnnxPredictor(onnx_file, predictor.spec, threads, tta=tta)
    return OnnxPredictor(onnx_bytes(predictor), predictor.spec, threads, tta=tta)


def imagenet_predictor(backbone: str = "efficientnet_lite0") -> TorchPredictor:
    """The ImageNet-pretrained network ``backbone`` over the 1000 ImageNet classes."""
    from utils_cv.classification.backbones import get_backbone
    from utils_cv.classification.data import imagenet_labels

    record = get_backbone(backbone)
    spec = ModelSpec(
        backbone=record.name,
        im_size=record.imagenet_size,
        classes=tuple(imagenet_labels()),
        multilabel=False,
    )
    return TorchPredictor(record.create_imagenet_model(pretrained=True), spec)


# --- comparing and timing -----------------------------------------------------------------------


def compare_predictors(reference: Predictor, candidate: Predictor, ims) -> dict:
    """How ``candidate`` agrees with ``reference`` on ``ims``.

    Returns {"max_abs_diff": largest difference of any probability, "agreement": fraction of
    images with the same decision (top-1 class, or the multi-label set at the threshold)}.
    """
    p_ref, p_new = reference.predict_proba(ims), candidate.predict_proba(ims)
    return {
        "max_abs_diff": float(np.abs(p_ref - p_new).max()) if len(p_ref) else 0.0,
        "agreement": agreement(p_ref, p_new, reference.spec),
    }


def decisions(probs: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Per image what a model decides: top-1 index, or the multi-label 0/1 row."""
    if spec.multilabel:
        return probs >= spec.threshold
    return probs.argmax(axis=1)


def agreement(p_ref: np.ndarray, p_new: np.ndarray, spec: ModelSpec) -> float:
    """Fraction of images on which two probability matrices lead to the same decision."""
    ref, new = decisions(p_ref, spec), decisions(p_new, spec)
    same = ref == new if ref.ndim == 1 else (ref == new).all(axis=1)
    return float(same.mean()) if len(same) else 1.0


def measure_speed(predictor: Predictor, batch_size: int = 32, repeats: int = 5) -> dict:
    """Inference speed on random inputs of the predictor's size (preprocessing excluded).

    Returns {"latency_ms": median ms for one image at batch 1, "throughput": images per
    second at ``batch_size``}.
    """
    size = predictor.im_size
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    batch = rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)
    latency = median_ms(predictor.run, one, repeats=repeats * 4)
    batch_ms = median_ms(predictor.run, batch, repeats=repeats, warmup=1)
    return {"latency_ms": latency, "throughput": batch_size / (batch_ms / 1000)}


def measure_model(
    model_dir: str | Path, runtime: str = "torch", threads: int | None = None
) -> dict:
    """What a saved model costs to keep and to run (notebook 03 compares model types with it).

    Returns {"model_size_mb": size of the folder in megabytes (10**6 bytes), measured before
    anything is added to it, "latency_ms" and "throughput": ``measure_speed`` of the model
    loaded on ``runtime`` (see ``load_predictor``)}.
    """
    from utils_cv.classification.saved import model_size_mb

    size = model_size_mb(model_dir)
    return {
        "model_size_mb": size,
        **measure_speed(load_predictor(model_dir, runtime, threads=threads)),
    }


def median_ms(fn, x, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn(x)`` in milliseconds over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


# --- a folder of images to a CSV ---------------------------------------------------------------


def predict_files(
    predictor: Predictor,
    paths: Sequence[str | Path],
    top_k: int = 3,
    batch_size: int = 32,
    progress: bool = True,
):
    """Classify image files; returns a pandas DataFrame with one row per file.

    Columns: ``file``, ``status`` ("ok", or why the file could not be classified),
    ``predicted`` (space-separated), ``top_k`` ("label:probability" pairs separated by "; ")
    and ``prob_<class>`` per class (empty for files that could not be read). Files that
    cannot be read never stop the others.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    spec = predictor.spec
    rows = []
    bar = tqdm(
        total=len(paths), desc="predict", unit="image", disable=not progress, file=sys.stderr
    )
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        arrays, ok = [], []
        for path in chunk:
            try:
                arrays.append(spec.im_array(path))
                ok.append(path)
            except Exception as err:  # any unreadable file: report it, go on with the others
                message = str(err).replace(repr(str(path)), "").replace(str(path), "")
                reason = message.strip(" :") or type(err).__name__
                rows.append({"file": str(path), "status": f"unreadable: {reason}"})
        if arrays:
            probs = predictor.run_batch(spec.normalize(np.stack(arrays)))
            for path, row, best in zip(ok, probs, to_predictions(probs, spec, top_k)):
                order = np.argsort(-row, kind="stable")[:top_k]
                record = {
                    "file": str(path),
                    "status": "ok",
                    "predicted": " ".join(p["label"] for p in best)
                    if spec.multilabel
                    else best[0]["label"],
                    "top_k": "; ".join(f"{spec.classes[i]}:{row[i]:.4f}" for i in order),
                }
                record.update({f"prob_{c}": float(p) for c, p in zip(spec.classes, row)})
                rows.append(record)
        bar.update(len(chunk))
    bar.close()
    columns = ["file", "status", "predicted", "top_k", *(f"prob_{c}" for c in spec.classes)]
    order = {str(p): i for i, p in enumerate(paths)}
    df = pd.DataFrame(rows, columns=columns)
    return df.sort_values("file", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils_cv.classification.predict",
        description="Classify images with a model saved by utils_cv (a folder with "
        "model.safetensors and model.json).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_model")
    parser.add_argument(
        "paths", metavar="PATH", nargs="+", help="image files or folders (walked recursively)"
    )
    parser.add_argument(
        "--out", default="predictions.csv", help="CSV to write (default: %(default)s)"
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="classes listed per image (default: %(default)s)"
    )
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch", help="default: %(default)s")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per batch (default: %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average with the mirrored image (twice the time)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="batch prediction on Ray Data with the ONNX runtime (batch_predict.py; the "
        "distributed extra): --out is a folder of sharded files",
    )
    parser.add_argument("--workers", type=int, default=2, help="with --ray: ONNX Runtime actors")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="with --ray")
    parser.add_argument("--address", default=None, help="with --ray: Ray cluster to join")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``predict`` command; returns the exit status (0: at least one image classified)."""
    from utils_cv.classification.saved import ModelFileError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be >= 1")
    try:
        files = image_paths(args.paths)
        predictor = load_predictor(args.model_dir, args.runtime, tta=args.tta)
    except (FileNotFoundError, ModelFileError, ValueError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    if not files:
        print(f"predict: error: no image files in {', '.join(args.paths)}", file=sys.stderr)
        return 1
    if args.ray:
        from utils_cv.classification.batch_predict import main_ray

        return main_ray(args, files)
    df = predict_files(predictor, files, args.top_k, args.batch_size, progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    bad = df[df["status"] != "ok"]
    for file, status in zip(bad["file"], bad["status"]):
        print(f"predict: {file}: {status}", file=sys.stderr)
    n_ok = len(df) - len(bad)
    print(f"{n_ok} of {len(df)} images classified; predictions in {out}", file=sys.stderr)
    return 0 if n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
