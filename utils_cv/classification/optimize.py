"""Fast inference settings for the hardware at hand.

``optimize_predictor(predictor)`` returns a predictor with the same interface
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

The training-side counterpart is ``utils_cv.classification.train.fast_training``.
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

from utils_cv.classification.predict import (
    OnnxPredictor,
    Predictor,
    TorchPredictor,
    agreement,
    onnx_bytes,
)
from utils_cv.common.gpu import cpu_has_fast_bf16

MODES = ("auto", "fp32", "channels_last", "bf16", "fp16", "onnx", "int8")


class AgreementError(ValueError):
    """An optimised predictor's decisions differ from the fp32 predictor's on the check images."""


# --- what the hardware offers -----------------------------------------------------------------


def auto_mode(device: str | torch.device = "cpu") -> str:
    """The mode ``optimize_predictor(mode="auto")`` picks for ``device``.

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


def _torch_predictor(predictor: TorchPredictor, dtype, mode: str) -> TorchPredictor:
    """A TorchPredictor on a copy of ``predictor.model`` wrapped in AutocastModel."""
    device = predictor.device
    model = AutocastModel(copy.deepcopy(predictor.model), device.type, dtype).eval()
    fast = TorchPredictor(model, predictor.spec, device)
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


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed batches of ``ims``."""

    def __init__(self, predictor: Predictor, ims: Sequence, batch_size: int = 8):
        self.batches = (
            {"image": predictor.preprocess(ims[i : i + batch_size])}
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


def quantize_int8(predictor: TorchPredictor, calibration_ims: Sequence) -> bytes:
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
        fp32.write_bytes(onnx_bytes(predictor))
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # the quantiser logs advice at WARNING on the root logger
        try:
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(
                str(prepared),
                str(int8),
                _CalibrationReader(predictor, list(calibration_ims)),
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


def top1_agreement(reference: Predictor, candidate: Predictor, ims: Sequence) -> float:
    """Fraction of ``ims`` on which ``candidate`` decides as ``reference`` does (0..1).

    Single-label: same top-1 class; multi-label: the same set of labels at the threshold.
    """
    p_ref, p_new = reference.predict_proba(ims), candidate.predict_proba(ims)
    return agreement(p_ref, p_new, reference.spec)


def _onnx(model: bytes, spec, threads, mode: str) -> OnnxPredictor:
    fast = OnnxPredictor(model, spec, threads or torch.get_num_threads())
    fast.mode = mode
    return fast


def _build(predictor: TorchPredictor, mode: str, calibration_ims, threads) -> Predictor:
    """``predictor`` in ``mode`` (one of MODES other than 'auto'), with a ``mode`` attribute."""
    if mode == "fp32":
        fast = TorchPredictor(predictor.model, predictor.spec, predictor.device)
        fast.mode = mode
        return fast
    if mode == "channels_last":
        return _torch_predictor(predictor, None, mode)
    if mode in ("bf16", "fp16"):
        return _torch_predictor(predictor, _check_dtype(mode, predictor.device), mode)
    if mode == "onnx":
        return _onnx(onnx_bytes(predictor), predictor.spec, threads, mode)
    if mode == "int8":
        if predictor.device.type != "cpu":
            raise ValueError("mode='int8' runs on the CPU; load the model with device='cpu'.")
        return _onnx(quantize_int8(predictor, calibration_ims), predictor.spec, threads, mode)
    raise ValueError(f"Unknown mode '{mode}'. Choose one of: {', '.join(MODES)}.")


def auto_candidates(device: str | torch.device = "cpu", int8: bool = False) -> list[str]:
    """The modes ``"auto"`` tries in order, fastest first; fp32 is always last.

    int8 : include ``"int8"`` first (CPU only): only when there are calibration and check images.
    """
    first = auto_mode(device)
    modes = ["int8"] if int8 and first == "onnx" else []
    return list(dict.fromkeys([*modes, first, "fp32"]))


def optimize_predictor(
    predictor: TorchPredictor,
    mode: str = "auto",
    check_ims: Sequence | None = None,
    calibration_ims: Sequence | None = None,
    threads: int | None = None,
) -> Predictor:
    """A predictor like ``predictor`` (same ``predict_proba``/``predict``) running faster.

    mode : one of ``MODES``. ``"auto"`` tries ``auto_candidates``: ONNX Runtime fp32 on a CPU
        (int8 before it when both ``calibration_ims`` and ``check_ims`` are given), fp16
        autocast on CUDA, and keeps the first that decides as fp32 on ``check_ims``. On CUDA
        fp16 is kept only when it is also faster than fp32 at batch 32 (measured: on a large
        GPU a small model is limited by kernel launches, and fp16 only adds casts).
        The result's ``mode`` attribute names the setting chosen.
    check_ims : images (PIL or paths, not used for calibration) on which the result must decide
        exactly as ``predictor`` (top-1 class, or multi-label set at the threshold). An
        explicit mode that disagrees raises AgreementError. The agreement (0..1) is kept in
        ``.agreement`` (None without check images).
    calibration_ims : images to calibrate ``"int8"`` quantisation on (training images).
    threads : CPU threads for ONNX Runtime (default: ``torch.get_num_threads()``).

    The input predictor is not changed. ONNX Runtime modes run on the CPU.
    """
    if not isinstance(predictor, TorchPredictor):
        raise TypeError("optimize_predictor needs a TorchPredictor (from load_model).")
    if mode not in MODES:
        raise ValueError(f"Unknown mode '{mode}'. Choose one of: {', '.join(MODES)}.")
    if mode != "auto":
        fast = _build(predictor, mode, calibration_ims, threads)
        fast.agreement = top1_agreement(predictor, fast, check_ims) if check_ims else None
        if fast.agreement is not None and fast.agreement < 1.0:
            raise AgreementError(
                f"mode='{mode}' decides differently from fp32 on "
                f"{1 - fast.agreement:.1%} of the check images."
            )
        return fast
    int8 = bool(calibration_ims) and bool(check_ims)
    for candidate in auto_candidates(predictor.device, int8):
        fast = _build(predictor, candidate, calibration_ims, threads)
        if not check_ims or candidate == "fp32":
            fast.agreement = 1.0 if check_ims else None
            return fast
        fast.agreement = top1_agreement(predictor, fast, check_ims)
        if fast.agreement == 1.0:
            if predictor.device.type != "cuda" or _is_faster(fast, predictor):
                return fast
            continue
        warnings.warn(
            f"'{candidate}' decided differently from fp32 on {1 - fast.agreement:.1%} of the "
            "check images; trying the next setting.",
            stacklevel=2,
        )
    raise AssertionError("unreachable: fp32 is always a candidate")  # pragma: no cover


def _is_faster(fast: Predictor, base: Predictor, batch_size: int = 32, repeats: int = 5) -> bool:
    """True when ``fast`` predicts a random batch faster than ``base`` (median of interleaved
    timings, after a warm-up call of each)."""
    import time

    x = np.random.default_rng(0).standard_normal((batch_size, 3, base.im_size, base.im_size))
    x = x.astype(np.float32)
    times = {id(fast): [], id(base): []}
    for round_ in range(repeats + 1):
        for clf in (fast, base):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            clf.run(x)  # copies the result to the CPU, so the GPU work is done
            if round_:
                times[id(clf)].append(time.perf_counter() - start)
    return float(np.median(times[id(fast)])) < float(np.median(times[id(base)]))
