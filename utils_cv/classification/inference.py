"""Fast inference (and training) settings for the hardware at hand.

``optimize_classifier(classifier)`` returns a classifier with the same interface
(``predict_proba``, ``predict``) that runs the fastest setting measured correct on this kind of
hardware (see ``benchmarks/README.md``):

- CPU: ONNX Runtime in fp32 (``"onnx"``): the same numbers as PyTorch up to rounding (within
  1e-5), with graph optimisations (constant folding, conv + batch-norm fusion, NCHWc layouts).
  Given training images to calibrate on and held-out images to check on, int8 quantisation
  (about twice as fast again) is used when its decisions match fp32 on every check image.
- CUDA: fp16 autocast with channels-last memory (``"fp16"``).

Other modes are available for measuring and for users who accept rounding: ``"fp32"`` (eager
PyTorch), ``"channels_last"``, ``"bf16"`` (autocast, on CPUs with AVX512_BF16 or AMX, and on
GPUs) and ``"int8"`` (ONNX Runtime static quantisation, calibrated on your images). Pass
``check_ims`` to verify that a setting gives the same decisions as fp32 on your images.

``fast_training(learn)`` applies the training-side setting to a fastai Learner: channels-last
memory on a CPU (1.4-1.7x faster steps for EfficientNet-Lite, fp32 numbers), fp16 mixed
precision on CUDA. bf16 autocast on a CPU is opt-in (``bf16=True``): it adds 1.0-1.5x over
channels-last at 224-300 px (nothing at 160 px) but changes the gradients noticeably.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils_cv.classification.export import (
    Classifier,
    OnnxClassifier,
    export_onnx,
)

MODES = ("auto", "fp32", "channels_last", "bf16", "fp16", "onnx", "int8")


class AgreementError(ValueError):
    """An optimised classifier's decisions differ from the fp32 classifier's on the check images."""


# --- what the hardware offers -----------------------------------------------------------------


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512_BF16 or AMX-BF16) that oneDNN uses.

    Without them bf16 is converted in software and not expected to be faster than fp32.
    """
    return torch.backends.mkldnn.is_available() and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def auto_mode(device: str | torch.device = "cpu") -> str:
    """The mode ``optimize_classifier(mode="auto")`` picks for ``device``.

    CUDA: ``"fp16"``. CPU: ``"onnx"`` when onnxruntime is installed, else ``"channels_last"``.
    """
    if torch.device(device).type == "cuda":
        return "fp16"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "channels_last"
    return "onnx"


# --- PyTorch settings -------------------------------------------------------------------------


class AutocastModel(nn.Module):
    """Runs ``model`` on channels-last inputs, optionally under autocast; returns fp32 logits.

    device_type : ``"cpu"`` or ``"cuda"``. dtype : ``torch.bfloat16``, ``torch.float16`` or
    None (no autocast, fp32).
    """

    def __init__(self, model: nn.Module, device_type: str = "cpu", dtype=None):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)
        self.device_type, self.dtype = device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(x).float()


def _torch_classifier(classifier: Classifier, dtype, mode: str) -> Classifier:
    """A Classifier on a copy of ``classifier.model`` wrapped in AutocastModel."""
    device = classifier.device
    model = AutocastModel(copy.deepcopy(classifier.model), device.type, dtype).eval()
    fast = Classifier(model, classifier.meta, device)
    fast.mode = mode
    return fast


def _check_dtype(mode: str, device: torch.device):
    """The autocast dtype for ``mode`` on ``device``; ValueError where it cannot be fast."""
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("mode='fp16' needs a CUDA device; on a CPU use 'onnx' or 'bf16'.")
        return torch.float16
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("This GPU does not support bf16; use mode='fp16'.")
        return torch.bfloat16
    if not cpu_has_fast_bf16():
        raise ValueError(
            "This CPU has no bf16 instructions (avx512_bf16 or amx_bf16): bf16 would not be "
            "faster than fp32. Use mode='onnx'."
        )
    return torch.bfloat16


# --- ONNX Runtime -----------------------------------------------------------------------------


class OrtClassifier(OnnxClassifier):
    """OnnxClassifier on an in-memory ONNX model (bytes), with ``threads`` intra-op threads.

    ONNX Runtime applies all graph optimisations (its default, ORT_ENABLE_ALL).
    """

    def __init__(self, onnx_model: bytes, meta, threads: int | None = None, mode: str = "onnx"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        self.meta, self.classes, self.device = meta, list(meta.classes), torch.device("cpu")
        self.mode = mode


def onnx_bytes(classifier: Classifier) -> bytes:
    """``classifier`` exported to ONNX (probabilities out, dynamic batch) as bytes."""
    with tempfile.TemporaryDirectory(prefix="utils_cv_onnx_") as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated but is the one that works offline
            # for every registered backbone; its warnings are not the user's concern.
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            export_onnx(classifier, path)
        return path.read_bytes()


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed batches of ``ims``."""

    def __init__(self, classifier: Classifier, ims: Sequence, batch_size: int = 8):
        self.batches = (
            {"image": classifier.preprocess(ims[i : i + batch_size]).numpy()}
            for i in range(0, len(ims), batch_size)
        )

    def get_next(self):
        return next(self.batches, None)


def _output_nodes(onnx_path: Path) -> list[str]:
    """Names of the nodes of the ONNX model at ``onnx_path`` that produce its outputs."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    outputs = {o.name for o in graph.output}
    return [node.name for node in graph.node if outputs & set(node.output)]


def quantize_int8(classifier: Classifier, calibration_ims: Sequence) -> bytes:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on ``calibration_ims``.

    Returns the quantised ONNX model as bytes; the final softmax/sigmoid stays fp32. Use
    training images for calibration and check the result on other images (``top1_agreement``):
    int8 moves probabilities by up to tenths and can change the top-1 class of close calls.
    """
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_ims:
        raise ValueError("mode='int8' needs calibration_ims: a few dozen training images.")
    with tempfile.TemporaryDirectory(prefix="utils_cv_int8_") as tmp:
        fp32, prepared, int8 = (Path(tmp) / f"{n}.onnx" for n in ("fp32", "prep", "int8"))
        fp32.write_bytes(onnx_bytes(classifier))
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # the quantiser logs advice at WARNING on the root logger
        try:
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(
                str(prepared),
                str(int8),
                _CalibrationReader(classifier, list(calibration_ims)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # the softmax/sigmoid stays fp32: uint8 probabilities would tie at the top
                nodes_to_exclude=_output_nodes(prepared),
                extra_options={"CalibMaxIntermediateOutputs": 4},  # bounds memory use
            )
        finally:
            logger.setLevel(level)
        return int8.read_bytes()


# --- choosing and checking --------------------------------------------------------------------


def decisions(probs: np.ndarray, classifier: Classifier) -> np.ndarray:
    """Per image what the classifier decides: top-1 index, or the multi-label 0/1 row."""
    if classifier.multilabel:
        return probs >= classifier.meta.threshold
    return probs.argmax(axis=1)


def top1_agreement(reference: Classifier, candidate: Classifier, ims: Sequence) -> float:
    """Fraction of ``ims`` on which ``candidate`` decides as ``reference`` does (0..1).

    Single-label: same top-1 class; multi-label: the same set of labels at the threshold.
    """
    ref = decisions(reference.predict_proba(ims), reference)
    new = decisions(candidate.predict_proba(ims), reference)
    same = ref == new if ref.ndim == 1 else (ref == new).all(axis=1)
    return float(same.mean())


def _build(classifier: Classifier, mode: str, calibration_ims, threads) -> Classifier:
    """``classifier`` in ``mode`` (one of MODES other than 'auto'), with a ``mode`` attribute."""
    if mode == "fp32":
        fast = Classifier(classifier.model, classifier.meta, classifier.device)
        fast.mode = mode
        return fast
    if mode == "channels_last":
        return _torch_classifier(classifier, None, mode)
    if mode in ("bf16", "fp16"):
        return _torch_classifier(classifier, _check_dtype(mode, classifier.device), mode)
    if mode == "onnx":
        return OrtClassifier(onnx_bytes(classifier), classifier.meta, threads, mode)
    if mode == "int8":
        if classifier.device.type != "cpu":
            raise ValueError("mode='int8' runs on the CPU; load the model with device='cpu'.")
        model = quantize_int8(classifier, calibration_ims)
        return OrtClassifier(model, classifier.meta, threads, mode)
    raise ValueError(f"Unknown mode '{mode}'. Choose one of: {', '.join(MODES)}.")


def auto_candidates(device: str | torch.device = "cpu", int8: bool = False) -> list[str]:
    """The modes ``"auto"`` tries in order, fastest first; fp32 is always last.

    int8 : include ``"int8"`` first (CPU only): only when there are calibration and check images.
    """
    first = auto_mode(device)
    modes = ["int8"] if int8 and first == "onnx" else []
    return list(dict.fromkeys([*modes, first, "fp32"]))


def optimize_classifier(
    classifier: Classifier,
    mode: str = "auto",
    check_ims: Sequence | None = None,
    calibration_ims: Sequence | None = None,
    threads: int | None = None,
) -> Classifier:
    """A classifier like ``classifier`` (same ``predict_proba``/``predict``) running faster.

    mode : one of ``MODES``. ``"auto"`` tries ``auto_candidates``: ONNX Runtime fp32 on a CPU
        (int8 before it when both ``calibration_ims`` and ``check_ims`` are given), fp16
        autocast on CUDA, and keeps the first that decides as fp32 on ``check_ims``. On CUDA
        fp16 is kept only when it is also faster than fp32 at batch 32 (measured: on a large
        GPU a small model is limited by kernel launches, and fp16 only adds casts).
        The result's ``mode`` attribute names the setting chosen.
    check_ims : images (PIL or paths, not used for calibration) on which the result must decide
        exactly as ``classifier`` (top-1 class, or multi-label set at the threshold). An
        explicit mode that disagrees raises AgreementError. The agreement (0..1) is kept in
        ``.agreement`` (None without check images).
    calibration_ims : images to calibrate ``"int8"`` quantisation on (training images).
    threads : CPU threads for ONNX Runtime (default: ``torch.get_num_threads()``).

    The input classifier is not changed. ONNX Runtime modes run on the CPU.
    """
    if isinstance(classifier, OnnxClassifier):
        raise TypeError("optimize_classifier needs a PyTorch Classifier (from load_model).")
    if mode not in MODES:
        raise ValueError(f"Unknown mode '{mode}'. Choose one of: {', '.join(MODES)}.")
    if mode != "auto":
        fast = _build(classifier, mode, calibration_ims, threads)
        fast.agreement = top1_agreement(classifier, fast, check_ims) if check_ims else None
        if fast.agreement is not None and fast.agreement < 1.0:
            raise AgreementError(
                f"mode='{mode}' decides differently from fp32 on "
                f"{1 - fast.agreement:.1%} of the check images."
            )
        return fast
    int8 = bool(calibration_ims) and bool(check_ims)
    for candidate in auto_candidates(classifier.device, int8):
        fast = _build(classifier, candidate, calibration_ims, threads)
        if not check_ims or candidate == "fp32":
            fast.agreement = 1.0 if check_ims else None
            return fast
        fast.agreement = top1_agreement(classifier, fast, check_ims)
        if fast.agreement == 1.0:
            if classifier.device.type != "cuda" or _is_faster(fast, classifier):
                return fast
            continue
        warnings.warn(
            f"'{candidate}' decided differently from fp32 on {1 - fast.agreement:.1%} of the "
            "check images; trying the next setting.",
            stacklevel=2,
        )
    raise AssertionError("unreachable: fp32 is always a candidate")  # pragma: no cover


def _is_faster(fast: Classifier, base: Classifier, batch_size: int = 32, repeats: int = 5) -> bool:
    """True when ``fast`` predicts a random batch faster than ``base`` (median of interleaved
    timings, after a warm-up call of each)."""
    import time

    x = torch.randn(batch_size, 3, base.meta.im_size, base.meta.im_size)
    times = {id(fast): [], id(base): []}
    for round_ in range(repeats + 1):
        for clf in (fast, base):
            if clf.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            predict_batch(clf, x)  # copies the result to the CPU, so the GPU work is done
            if round_:
                times[id(clf)].append(time.perf_counter() - start)
    return float(np.median(times[id(fast)])) < float(np.median(times[id(base)]))


def predict_batch(classifier: Classifier, x: torch.Tensor) -> np.ndarray:
    """Probabilities (n, n_classes) for an already preprocessed batch ``x`` (n, 3, h, w).

    Runs what ``predict_proba`` runs after preprocessing, for any mode: use it for timing.
    """
    if isinstance(classifier, OnnxClassifier):
        return classifier.run_tensor(x.numpy())
    with torch.inference_mode():
        out = classifier.activation(classifier.model(x.to(classifier.device)))
        return out.float().cpu().numpy()


# --- training ---------------------------------------------------------------------------------

try:
    from fastai.callback.core import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class FastTraining(_Callback):
    """fastai callback: channels-last model and batches, with bf16 autocast when ``bf16``.

    Use ``fast_training(learn)`` to add it.

    The autocast covers the forward pass and the loss (as fastai's MixedPrecision does on CUDA);
    predictions are returned in fp32, and parameters and optimiser state stay fp32.
    """

    order = 10

    def __init__(self, bf16: bool = False):
        self.bf16 = bf16

    def before_fit(self):
        self.learn.model.to(memory_format=torch.channels_last)
        self.autocast, self.active = torch.autocast("cpu", dtype=torch.bfloat16), False

    def before_batch(self):
        xb = self.learn.xb
        self.learn.xb = tuple(
            x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xb
        )
        if self.bf16:
            self.autocast.__enter__()
            self.active = True

    def after_pred(self):
        self.learn.pred = self.learn.pred.float()

    def _leave_autocast(self):
        if self.active:
            self.autocast.__exit__(None, None, None)
            self.active = False

    def after_loss(self):
        self._leave_autocast()

    def after_batch(self):
        self._leave_autocast()  # batches without targets skip after_loss

    def after_cancel_batch(self):
        self._leave_autocast()


def fast_training(learn, bf16: bool = False):
    """Make ``learn`` (a fastai Learner) train faster on this hardware; returns ``learn``.

    On CUDA: fastai's fp16 mixed precision (``learn.to_fp16()``). On a CPU: channels-last
    memory for the model (which also speeds up ``fit_head_cached``'s feature extraction) and
    batches; with ``bf16`` also bf16 autocast (ValueError on CPUs without bf16 instructions).
    Undo with ``learn.remove_cbs(FastTraining)`` (CPU) or ``learn.to_fp32()`` (CUDA).
    """
    if next(learn.model.parameters()).is_cuda:
        return learn.to_fp16()
    if bf16 and not cpu_has_fast_bf16():
        raise ValueError("This CPU has no bf16 instructions (avx512_bf16 or amx_bf16).")
    learn.model.to(memory_format=torch.channels_last)
    learn.add_cb(FastTraining(bf16))
    return learn
