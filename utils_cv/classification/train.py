"""Training: one configuration (``TrainConfig``), one function that trains from it (``train``).

The recipe, chosen by measurement (benchmarks/README.md, "Recipe choices" and "Fine-tuning and
batch-norm statistics"):

1. The head trains for ``epochs_head`` epochs on cached pooled features of the frozen
   pretrained body (``fit_head_cached``): the body sees the augmented training images
   ``aug_passes`` times, then the head trains on those vectors with AdamW and a one-cycle
   schedule peaking at ``lr``. Cheap, and on small data sets it is where most of the accuracy
   comes from.
2. Then, when ``epochs`` > 0, the whole network is fine-tuned with a one-cycle schedule, the
   head at ``lr / body_lr_ratio`` and the body ten times lower still, with the body's
   batch-norm statistics frozen (``FreezeBatchNormStats``).

``balance`` answers class imbalance of single-label data, off by default (benchmarks/README.md,
"Class imbalance": on 10:1 sets the gains were small and depended on which classes were rare):
"weights" weights the cross-entropy by inverse class frequency (``use_class_weights``),
"sampler" draws training rows, and images when fine-tuning, with equal probability per class.

Notebooks 01, 02, 03, 11, 12 and 21, the sweeper, hard-negative rounds and the sweep tool all
train through ``train``; the sweeper's parameters are fields of ``TrainConfig`` and of the
model specification, so a sweep explores exactly this recipe.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils_cv.classification.metrics import (
    _to_numpy,
    accuracy,
    fastai_zero_one,
    hamming_accuracy,
)
from utils_cv.classification.spec import ModelSpec
from utils_cv.common.gpu import cpu_has_fast_bf16

try:
    from fastai.callback.core import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object

# The default recipe. Chosen on four single-label and one multi-label set, 3 seeds each,
# unseen objects in validation (benchmarks/bench_recipe_choices.py): 0.807 mean accuracy
# against 0.783 for 20 epochs at 1e-2 with dropout 0.5, and the best worst case.
EPOCHS_HEAD = 40
LEARNING_RATE = 3e-3
# Single-label targets mixed with 10% of the uniform distribution: with 300-px features it
# gained 1-3 points on unseen animals (benchmarks/README.md, section 13).
LABEL_SMOOTHING = 0.1
# Answers to class imbalance (TrainConfig.balance); see ``use_class_weights`` and ``train_head``.
BALANCE_MODES = ("none", "weights", "sampler")


class ConfigError(ValueError):
    """A training configuration field has an invalid value; the message names the field."""


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# field -> (check, accepted values in words)
_CHECKS = {
    "epochs_head": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "epochs": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "lr": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "weight_decay": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "aug_passes": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "body_lr_ratio": (lambda v: _is_real(v) and v >= 1, "a number >= 1 (1: no ratio)"),
    "one_cycle": (lambda v: isinstance(v, bool), "True or False"),
    "freeze_bn_stats": (lambda v: isinstance(v, bool), "True or False"),
    "transform": (lambda v: isinstance(v, bool), "True or False"),
    "patience": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0 (0: off)"),
    "keep_best": (lambda v: isinstance(v, bool), "True or False"),
    "lr_find": (lambda v: isinstance(v, bool), "True or False"),
    "label_smoothing": (lambda v: _is_real(v) and 0 <= v < 1, "a number 0 <= v < 1 (0: off)"),
    "balance": (
        lambda v: isinstance(v, str) and v in BALANCE_MODES,
        "one of " + ", ".join(repr(m) for m in BALANCE_MODES),
    ),
    "valid_pct": (lambda v: _is_real(v) and 0 < v < 1, "a fraction 0 < valid_pct < 1"),
    "seed": (lambda v: _is_int(v), "a whole number"),
}


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (what it *is* lives in ``ModelSpec``).

    epochs_head : epochs of the head on cached features of the frozen body (0: skip).
    epochs : epochs fine-tuning the whole network afterwards (0: head only, the default).
    lr : peak learning rate of the head; fine-tuning uses ``lr / body_lr_ratio`` for the head
        and ten times less for the body.
    batch_size : images per batch (and feature rows per head step).
    weight_decay : AdamW weight decay.
    aug_passes : augmented passes over the training images when caching features.
    body_lr_ratio : head-to-body learning-rate ratio when fine-tuning (1: same rate).
    one_cycle : one-cycle schedule when fine-tuning (else a constant rate).
    freeze_bn_stats : keep the body's batch-norm statistics as pretrained when fine-tuning.
    transform : data augmentation of training images.
    patience : early stopping: in each stage (head, fine-tuning) stop after this many epochs
        without a lower validation loss (0: off, the default; ``listeners.BestEpoch``).
    keep_best : at the end of each stage put back the weights of its epoch with the lowest
        validation loss (default False: no measured gain yet, benchmarks/bench_training_tools.py).
    lr_find : run the learning-rate finder before each stage and train at its suggestion
        instead of ``lr`` (the head's peak rate; when fine-tuning, the head's rate, the body
        ``body_lr_ratio`` times lower). The finder runs over the head on the cached features
        (fast) and over the whole network when fine-tuning (``lr_finder``); its results are
        kept in ``learn.lr_finds``.
    label_smoothing : single-label data: cross-entropy against targets mixed with this share
        of the uniform distribution, in both stages (default 0.1; 0: plain cross-entropy);
        multi-label data trains without it.
    balance : answer to class imbalance, single-label data only (ConfigError at training time
        on multi-label data): "none" (the default); "weights" (cross-entropy weighted by
        inverse class frequency of the training set, normalised to mean 1, in both stages and
        in the validation loss; on 10:1 sets +3 points of balanced accuracy on average, no
        change on balanced data); "sampler" (training rows of the head, and images when
        fine-tuning, drawn with replacement with equal probability per class; the most recall
        of rare classes, +14 points, at a cost in recall of the common ones).
    valid_pct : fraction held out for validation when the data has no split of its own.
    seed : seeds the split, the shuffling and the head's initialisation.
    """

    epochs_head: int = EPOCHS_HEAD
    epochs: int = 0
    lr: float = LEARNING_RATE
    batch_size: int = 16
    weight_decay: float = 1e-2
    aug_passes: int = 2
    body_lr_ratio: float = 10.0
    one_cycle: bool = True
    freeze_bn_stats: bool = True
    transform: bool = True
    patience: int = 0
    label_smoothing: float = LABEL_SMOOTHING
    balance: str = "none"
    keep_best: bool = False
    lr_find: bool = False
    valid_pct: float = 0.2
    seed: int = 42

    def __post_init__(self):
        for name, (check, accepted) in _CHECKS.items():
            value = getattr(self, name)
            if isinstance(value, np.bool_):  # numpy booleans from a grid
                value = bool(value)
                object.__setattr__(self, name, value)
            if not check(value):
                raise ConfigError(
                    f"TrainConfig field '{name}': {value!r} is not valid; expected {accepted}."
                )

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new configuration)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def train(
    data_path: str | Path,
    spec: ModelSpec | None = None,
    config: TrainConfig | None = None,
    files: Sequence[str | Path] | None = None,
    progress: bool = True,
    record_train_metrics: bool = True,
    weights_file: str | Path | None = None,
    pretrained: bool = True,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    checkpoint: bool = True,
    live: bool = False,
    log_to: Sequence[str] = (),
    listeners=(),
):
    """Train a classifier on ``data_path`` as ``spec`` and ``config`` say; return the Learner.

    data_path : class folders, ``train/`` + ``valid/`` class folders, or ``images/`` +
        ``labels.csv`` (see ``data.get_dls``). files : train and validate on these images only
        (the good files of a data check). weights_file : pretrained body weights from a local
        file instead of the registry's (any timm architecture).

    The learner's ``spec`` is ``spec`` completed with the data's classes and multi-label flag
    (what ``saved.save_model`` writes); ``config`` and ``training_seconds`` (wall time of
    training, without building the data loaders) are kept on it too.

    run_dir : folder for this run's record (``records.RunRecord``: run.json with the
    configuration, specification and timings, metrics.csv with one row per epoch) and, with
    ``checkpoint``, a checkpoint after every epoch (``checkpoint.Checkpointer``; removed when
    training ends); under torchrun only rank 0 writes them. resume : a run folder whose checkpoint to continue from (its record is
    continued); spec and config default to the run's and must match it. live : plot loss and
    metrics per epoch while training, updated in place in a notebook (``live.LiveCurves``).
    log_to : also log to "mlflow" and/or "tensorboard" when installed (a local store in the
    run folder; needs run_dir). listeners : more ``listeners.TrainingListener`` objects.
    """
    from utils_cv.classification.data import get_dls
    from utils_cv.common.misc import set_random_seed

    saved = None
    if resume is not None:
        from utils_cv.classification.checkpoint import load_checkpoint, resume_settings

        saved = load_checkpoint(resume)
        spec, config = resume_settings(saved, spec, config, resume)
        if run_dir is not None and Path(run_dir).resolve() != Path(resume).resolve():
            raise ValueError(
                f"train: resume={str(resume)!r} continues that run folder; run_dir "
                f"({str(run_dir)!r}) must be the same folder or None."
            )
        run_dir = resume
    if log_to and run_dir is None:
        raise ValueError(
            f"train: log_to={list(log_to)} needs run_dir, the folder whose local store the "
            f"loggers write to."
        )
    spec = ModelSpec() if spec is None else spec
    config = TrainConfig() if config is None else config
    set_random_seed(config.seed)
    dls = get_dls(
        data_path,
        spec,
        batch_size=config.batch_size,
        valid_pct=config.valid_pct,
        seed=config.seed,
        transform=config.transform,
        files=files,
    )
    learn = create_learner(
        dls,
        spec,
        pretrained=pretrained,
        weight_decay=config.weight_decay,
        record_train_metrics=record_train_metrics,
        weights_file=weights_file,
    )
    learn.config = config
    listeners = list(listeners)
    from utils_cv.classification.distributed import is_main_process

    if run_dir is not None and is_main_process():  # under torchrun only rank 0 writes
        from utils_cv.classification.records import RunRecord

        listeners.append(RunRecord(run_dir, data_path, spec, config, log_to, resumed=saved))
        if checkpoint:
            from utils_cv.classification.checkpoint import Checkpointer

            listeners.append(Checkpointer(run_dir, spec, config))
    if live:
        from utils_cv.classification.live import LiveCurves

        listeners.append(LiveCurves())
    with _data_parallel(learn):  # under torchrun: data-parallel (distributed.py)
        learn.training_seconds = fit_recipe(
            learn, config, progress=progress, listeners=listeners, resume=saved
        )
    return learn


def _data_parallel(learn):
    from utils_cv.classification.distributed import data_parallel

    return data_parallel(learn)


def create_learner(
    dls,
    spec: ModelSpec | None = None,
    pretrained: bool = True,
    weight_decay: float | None = None,
    metrics=None,
    record_train_metrics: bool = True,
    weights_file: str | Path | None = None,
):
    """A fastai Learner for ``dls`` with the network of ``spec`` (frozen body when pretrained).

    Single-label data gets cross-entropy and ``accuracy``; multi-label data (fastai
    MultiCategoryBlock) gets BCE on sigmoid outputs with hamming and zero-one accuracy.
    ``learn.spec`` is ``spec`` completed with the data's classes and multi-label flag.
    """
    from fastai.vision.all import Learner, accuracy_multi, default_split
    from fastai.vision.all import accuracy as fastai_accuracy

    spec = ModelSpec() if spec is None else spec
    multilabel = is_multilabel_dls(dls)
    spec = spec.with_data([str(c) for c in dls.vocab], multilabel)
    if metrics is None:
        metrics = [accuracy_multi, fastai_zero_one] if multilabel else [fastai_accuracy]
    model = spec.build_network(pretrained=pretrained, weights_file=weights_file)
    cbs = [TrainMetricsRecorder()] if record_train_metrics else []
    learn = Learner(dls, model, splitter=default_split, metrics=metrics, wd=weight_decay, cbs=cbs)
    if pretrained or weights_file is not None:
        learn.freeze()
    learn.spec = spec
    learn.multilabel = multilabel
    return learn


def is_multilabel_dls(dls) -> bool:
    """True when the DataLoaders' targets are multi-hot (fastai MultiCategoryBlock)."""
    from fastai.vision.all import MultiCategorize

    return any(isinstance(t, MultiCategorize) for t in dls.train_ds.tls[1].tfms)


def fit(
    learn,
    epochs: int,
    lr: float,
    epochs_head: int = 0,
    body_lr_ratio: float = 10.0,
    one_cycle: bool = True,
    freeze_bn_stats: bool = True,
    patience: int = 0,
    cbs=None,
    start_epoch: int = 0,
    opt_state: dict | None = None,
) -> float:
    """Train head first (body frozen) for ``epochs_head``, then the whole network for ``epochs``.

    lr : peak learning rate of the head; the body gets ``lr / body_lr_ratio`` (discriminative
    learning rates, ``body_lr_ratio=1`` turns them off). one_cycle : fastai's one-cycle schedule,
    else a constant rate. freeze_bn_stats : keep the body's batch-norm running statistics as
    pretrained (``FreezeBatchNormStats``; its scale and shift still train). patience : stop
    the whole-network phase after this many epochs without a lower validation loss (0: off).
    cbs : more fastai callbacks for the whole-network phase. start_epoch, opt_state : resume
    that phase after ``start_epoch`` epochs with this fastai optimizer state (a checkpoint).
    Returns the wall time in seconds.
    """
    from fastai.callback.tracker import EarlyStoppingCallback

    start = time.perf_counter()
    fit_fn = learn.fit_one_cycle if one_cycle else learn.fit
    frozen = learn.added_cbs(FreezeBatchNormStats()) if freeze_bn_stats else nullcontext()
    with frozen:
        if epochs_head > 0:
            learn.freeze()
            fit_fn(epochs_head, lr)
        if epochs > 0:
            learn.unfreeze()
            if opt_state is not None:
                learn.opt.load_state_dict(opt_state)
            body_lr = slice(lr / body_lr_ratio, lr) if body_lr_ratio != 1 else lr
            stop = [EarlyStoppingCallback(monitor="valid_loss", patience=patience)]
            more = (stop if patience else []) + list(cbs or [])
            fit_fn(epochs, body_lr, cbs=more or None, start_epoch=start_epoch)
    return time.perf_counter() - start


def _pooled_features(body, pool, dl, passes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``pool(body(x))`` for every batch of ``dl``, ``passes`` times, with the targets.

    ``pool`` is the head's parameter-free first layer (fastai's AdaptiveConcatPool2d), so the
    rest of the head can train on these vectors exactly as it would on the images. On a CPU
    the body runs in channels-last memory (measured 1.2-1.5x faster, same fp32 arithmetic up
    to rounding; benchmarks/README.md); it is left so, which also speeds up fine-tuning.
    """
    on_cpu = next(body.parameters()).device.type == "cpu"
    if on_cpu:
        body.to(memory_format=torch.channels_last)
    feats, targs = [], []
    body.eval()
    with torch.no_grad():
        for _ in range(passes):
            for xb, yb in dl:
                if on_cpu:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                # plain tensors: fastai's tensor subclasses slow down every head step
                feats.append(pool(body(xb)).float().as_subclass(torch.Tensor).contiguous())
                targs.append(yb.as_subclass(torch.Tensor))
    return torch.cat(feats), torch.cat(targs)


def extract_features(learn, dl, passes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled body features of every batch of ``dl`` (``passes`` times) and the targets.

    Returns x (n_images * passes, n_features) and y (targets in the loader's order): the
    inputs of the head after its parameter-free pooling layer, for ``train_head``.
    """
    device = getattr(dl, "device", None)
    if device is not None:  # fastai moves the model only inside fit
        learn.model.to(device)
    if getattr(dl, "drop_last", False):  # the training loader's: every image gets features
        dl = dl.new(drop_last=False)
    sharding = getattr(learn, "feature_sharding", None)  # set by distributed.data_parallel
    if sharding is not None:
        return sharding(learn, dl, passes)
    return _pooled_features(learn.model[0], learn.model[1][0], dl, passes)


def train_head(
    learn,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_valid: torch.Tensor | None = None,
    y_valid: torch.Tensor | None = None,
    epochs: int = EPOCHS_HEAD,
    lr: float = LEARNING_RATE,
    weight_decay: float = 1e-2,
    batch_size: int | None = None,
    progress: bool = True,
    balance: str = "none",
    listeners=(),
    resume: dict | None = None,
) -> None:
    """Train the learner's head (all but its pooling layer) on features from ``extract_features``.

    AdamW with a one-cycle schedule peaking at ``lr`` for ``epochs`` epochs of mini-batches of
    ``batch_size`` rows (default: the training loader's batch size), shuffled with torch's
    random generator. When validation features are given, per-epoch metrics go to the
    learner's TrainMetricsRecorder.

    balance : "none"; "weights": the learner's loss becomes cross-entropy weighted by inverse
    class frequency (``use_class_weights``); "sampler": each epoch draws as many rows as it
    would shuffle, with replacement, each row with probability proportional to 1 / (rows of
    its class), so every class is drawn about equally often; the head's batch-norm statistics
    are then re-estimated on the rows as they are (``estimate_batch_norm_stats``).
    Single-label targets only.

    listeners : ``listeners.TrainingListener`` objects told about every epoch (validation
    features needed); one may stop the stage early. resume : a head-stage checkpoint
    (``checkpoint.load_checkpoint``): the head, optimizer, schedule and random state are
    restored and training continues after its epoch.
    """
    from fastprogress.fastprogress import progress_bar

    from utils_cv.classification import listeners as events

    head = learn.model[1]
    rest = head[1:]
    batch_size = batch_size or learn.dls.train.bs
    row_weights = None
    if balance != "none":
        _check_balance(balance, multilabel=y_train.dim() > 1)
    if balance == "weights":
        use_class_weights(learn).to(x_train.device)
    elif balance == "sampler":
        counts = torch.bincount(y_train.long()).double()
        row_weights = 1.0 / counts[y_train.long()].to(x_train.device)
    n_batches = max(1, len(x_train) // batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * n_batches)
    recorder = next((cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)), None)
    if x_valid is None:
        recorder, listeners = None, ()
    if recorder is not None:
        recorder.before_fit_with(learn)
    listeners = events.sorted_listeners(listeners)
    state = events.StageState(
        "head", epochs, rest, opt, sched, data_loader=learn.dls.train, extra={"lr": lr}
    )
    if resume is not None:
        from utils_cv.classification.checkpoint import restore_stage

        restore_stage(state, resume)
    events.begin_stage(listeners, learn, state)
    names = events.metric_names(learn) if listeners else []
    epoch_range = range(state.start_epoch, epochs)
    epoch_iter = progress_bar(epoch_range) if progress else epoch_range
    for epoch in epoch_iter:
        started = time.perf_counter()
        losses = []
        rest.train()
        if row_weights is None:
            order = torch.randperm(len(x_train), device=x_train.device)
        else:
            order = torch.multinomial(row_weights, n_batches * batch_size, replacement=True)
        preds, targs = [], []
        for i in range(n_batches):
            idx = order[i * batch_size : (i + 1) * batch_size]
            out = rest(x_train[idx])
            loss = learn.loss_func(out, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if recorder is not None:
                preds.append(out.detach())
                targs.append(y_train[idx])
                recorder.losses.append(losses[-1])
        if row_weights is not None and (recorder or listeners or epoch == epochs - 1):
            estimate_batch_norm_stats(rest, x_train)
        rest.eval()
        if x_valid is not None and (recorder is not None or listeners):
            with torch.no_grad():
                valid_out = rest(x_valid)
        if recorder is not None:
            recorder.add_epoch(torch.cat(preds), torch.cat(targs), valid_out, y_valid)
        if listeners:
            row = {"stage": "head", "epoch": epoch + 1, "train_loss": float(np.mean(losses))}
            with torch.no_grad():
                row["valid_loss"] = float(learn.loss_func(valid_out, y_valid))
            for name, metric in zip(names, learn.metrics):
                row[name] = float(_metric_fn(metric)(valid_out, y_valid))
            row["lr"] = float(sched.get_last_lr()[0])
            row["seconds"] = time.perf_counter() - started
            if events.after_epoch(listeners, learn, row, state):
                break
    events.end_stage(listeners, learn, state)


def fit_head_cached(
    learn,
    epochs: int = EPOCHS_HEAD,
    lr: float = LEARNING_RATE,
    aug_passes: int = 2,
    weight_decay: float = 1e-2,
    progress: bool = True,
    balance: str = "none",
    listeners=(),
    resume: dict | None = None,
    lr_find: bool = False,
) -> float:
    """Train only the head on cached body features: many epochs for the price of a few.

    The frozen body sees the (augmented) training set ``aug_passes`` times; its pooled features
    are kept in memory (10 kB per image and pass for EfficientNet-Lite0, 14 kB with stage
    features) and the head is trained on them for ``epochs`` epochs with AdamW and a one-cycle
    schedule peaking at ``lr`` (``train_head``, which also applies ``balance``). Per-epoch
    metrics go to the learner's TrainMetricsRecorder and to ``listeners``. lr_find : train at
    the learning-rate finder's suggestion over the head on these features
    (``lr_finder.lr_find_head``, kept in ``learn.lr_finds["head"]``) instead of ``lr``.
    resume : a head-stage checkpoint (its features are used, not extracted again). Returns
    the wall time in seconds.
    """
    start = time.perf_counter()
    timings = learn.__dict__.setdefault("timings", {})
    if resume is not None and "features" in resume:
        x_train, y_train, x_valid, y_valid = resume["features"]
        if next(learn.model.parameters()).device.type == "cpu":  # as _pooled_features leaves it
            learn.model[0].to(memory_format=torch.channels_last)
    else:
        x_train, y_train = extract_features(learn, learn.dls.train, aug_passes)
        x_valid, y_valid = extract_features(learn, learn.dls.valid)
        for listener in listeners:
            if hasattr(listener, "keep_features"):  # checkpoint.Checkpointer
                listener.keep_features(x_train, y_train, x_valid, y_valid)
    timings["features_s"] = timings.get("features_s", 0.0) + time.perf_counter() - start
    if lr_find:
        lr = _found_lr(learn, "head", resume, x_train, y_train, weight_decay)
    started = time.perf_counter()
    train_head(
        learn,
        x_train,
        y_train,
        x_valid,
        y_valid,
        epochs,
        lr,
        weight_decay,
        progress=progress,
        balance=balance,
        listeners=listeners,
        resume=resume,
    )
    timings["head_s"] = timings.get("head_s", 0.0) + time.perf_counter() - started
    return time.perf_counter() - start


def _found_lr(learn, stage: str, resume, *args, **kwargs) -> float:
    """The finder's suggestion for ``stage``: from the checkpoint when resuming, else run it
    (kept in ``learn.lr_finds``); its time goes to ``learn.timings["lr_find_s"]``."""
    from utils_cv.classification import lr_finder

    found = (resume or {}).get("lr_found", {})
    if stage in found:
        return float(found[stage])
    start = time.perf_counter()
    if stage == "head":
        result = lr_finder.lr_find_head(learn, *args, **kwargs)
    else:
        result = lr_finder.lr_find_fine_tune(learn, *args, **kwargs)
    learn.__dict__.setdefault("lr_finds", {})[stage] = result
    timings = learn.__dict__.setdefault("timings", {})
    timings["lr_find_s"] = timings.get("lr_find_s", 0.0) + time.perf_counter() - start
    return result.suggestion


def fit_recipe(
    learn,
    config: TrainConfig | None = None,
    progress: bool = True,
    listeners=(),
    resume: dict | None = None,
) -> float:
    """Train ``learn`` with this project's recipe (see the module docstring) as ``config``
    says; returns the wall time in seconds.

    listeners : ``listeners.TrainingListener`` objects told about each epoch of both stages
    (a record, live curves, a checkpoint); early stopping and keeping the best weights
    (``config.patience``, ``config.keep_best``) are one of them, ``listeners.BestEpoch``.
    resume : a checkpoint (``checkpoint.load_checkpoint``) to continue from. After training
    ``learn.best_epochs`` holds BestEpoch's findings per stage, ``learn.timings`` the seconds
    spent extracting features, in the finder and in each stage, and ``learn.lr_finds`` the
    finder's results when ``config.lr_find``.
    """
    from utils_cv.classification import listeners as events

    config = TrainConfig() if config is None else config
    seconds = 0.0
    learn.timings, learn.lr_finds = {}, {}
    best = events.BestEpoch(config.patience, config.keep_best)
    listeners = events.sorted_listeners([best, *listeners])
    learn.listeners = listeners
    resume_stage = None
    if resume is not None:
        from utils_cv.classification.checkpoint import restore_run

        restore_run(learn, resume, listeners)
        resume_stage = resume["stage"]
    multilabel = getattr(learn, "multilabel", None)
    if multilabel is None:
        multilabel = is_multilabel_dls(learn.dls)
    if config.balance != "none":
        _check_balance(config.balance, multilabel)
    if config.label_smoothing and not multilabel:
        set_single_label_loss(learn, label_smoothing=config.label_smoothing)
    if config.balance == "weights":  # before both stages, also when the head stage is skipped
        use_class_weights(learn)
    if config.epochs_head and resume_stage != "fine_tune":
        seconds += fit_head_cached(
            learn,
            config.epochs_head,
            config.lr,
            config.aug_passes,
            config.weight_decay,
            progress=progress,
            balance=config.balance,
            listeners=listeners,
            resume=resume if resume_stage == "head" else None,
            lr_find=config.lr_find,
        )
    if config.epochs > 0:
        start = time.perf_counter()
        resume_body = resume if resume_stage == "fine_tune" else None
        head_lr = config.lr / config.body_lr_ratio
        if config.lr_find:
            head_lr = _found_lr(
                learn,
                "fine_tune",
                resume_body,
                body_lr_ratio=config.body_lr_ratio,
                freeze_bn_stats=config.freeze_bn_stats,
            )
        state = events.StageState(
            "fine_tune",
            config.epochs,
            learn.model,
            data_loader=learn.dls.train,
            extra={"lr": head_lr},
        )
        if resume_body is not None:
            from utils_cv.classification.checkpoint import restore_stage

            restore_stage(state, resume_body)
        kwargs = dict(
            epochs_head=0,
            body_lr_ratio=config.body_lr_ratio,
            one_cycle=config.one_cycle,
            freeze_bn_stats=config.freeze_bn_stats,
            cbs=[events.FastaiEpochs(listeners, state)],
            start_epoch=state.start_epoch,
            opt_state=None if resume_body is None else resume_body["optimizer"],
        )
        quiet = nullcontext() if progress else _quiet(learn)
        sampler = _balanced_images(learn) if config.balance == "sampler" else nullcontext()
        if state.stop or state.start_epoch >= config.epochs:  # resumed after its last epoch
            events.end_stage(listeners, learn, state)
        else:
            with quiet, sampler:
                fit(learn, config.epochs, head_lr, **kwargs)
        if config.balance == "sampler":  # the head's statistics of the images as they are
            x_train, _ = extract_features(learn, learn.dls.train)
            estimate_batch_norm_stats(learn.model[1][1:], x_train)
        learn.timings["fine_tune_s"] = time.perf_counter() - start
        seconds += learn.timings["fine_tune_s"]
    learn.best_epochs = best.best
    learn.timings["total_s"] = seconds
    for listener in listeners:
        listener.end_training(learn, seconds)
    return seconds


# --- class imbalance (TrainConfig.balance) ---------------------------------------------------


def _check_balance(balance: str, multilabel: bool) -> None:
    if balance not in BALANCE_MODES:
        accepted = ", ".join(repr(m) for m in BALANCE_MODES)
        raise ConfigError(
            f"TrainConfig field 'balance': {balance!r} is not valid; expected one of {accepted}."
        )
    if multilabel and balance != "none":
        raise ConfigError(
            f"TrainConfig field 'balance': {balance!r} is for single-label data only; this "
            f"data is multi-label. Use balance='none' (for rare labels, tune the decision "
            f"threshold instead: metrics.get_optimal_threshold)."
        )


def _train_targets(dls) -> np.ndarray:
    """Class index of every training image of single-label ``dls`` (no image is loaded)."""
    return np.array([int(y) for y in dls.train_ds.tls[1]], dtype=np.int64)


def class_counts(dls) -> np.ndarray:
    """Training images per class of single-label ``dls``, shape (n_classes,), in vocab order."""
    return np.bincount(_train_targets(dls), minlength=len(dls.vocab))


def class_weights(counts) -> torch.Tensor:
    """Inverse class frequency normalised to mean 1: float32 tensor of shape (n_classes,).

    counts : training images per class. A class without training images gets weight 1 (it
    only weighs in the validation loss); the mean is taken over the other classes.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class_weights: no class has a training image.")
    inverse = np.ones_like(counts)
    inverse[present] = 1.0 / counts[present]
    inverse[present] /= inverse[present].mean()
    return torch.tensor(inverse, dtype=torch.float32)


def set_single_label_loss(learn, weight: torch.Tensor | None = None, label_smoothing=None):
    """Set ``learn.loss_func`` to fastai's ``CrossEntropyLossFlat`` with class ``weight``
    (n_classes,) and ``label_smoothing`` (None: keep the current loss's); returns the loss.
    It applies to every later training step and to the validation loss."""
    from fastai.losses import CrossEntropyLossFlat

    if label_smoothing is None:
        label_smoothing = getattr(getattr(learn.loss_func, "func", None), "label_smoothing", 0.0)
    device = getattr(learn.dls, "device", None)
    if weight is not None and device is not None:
        weight = weight.to(device)
    learn.loss_func = CrossEntropyLossFlat(weight=weight, label_smoothing=float(label_smoothing))
    return learn.loss_func


def use_class_weights(learn):
    """Set ``learn.loss_func`` to cross-entropy weighted by ``class_weights`` of the training
    set (single-label), keeping its label smoothing; returns the loss. Calling it again
    recomputes the same weights. The weights are on the loss's ``func.weight``.
    """
    return set_single_label_loss(learn, class_weights(class_counts(learn.dls)))


def estimate_batch_norm_stats(module, x: torch.Tensor, chunk: int = 4096) -> None:
    """Re-estimate the running statistics of ``module``'s batch-norm layers on all rows of
    ``x`` (an equal-weight average over chunks of at most ``chunk`` rows, dropout off);
    leaves ``module`` in eval mode.

    Used after training on balanced draws (``balance="sampler"``), whose running statistics
    are those of a few minority rows repeated many times: on a 10:1 set they cost the sampler
    17 points of balanced accuracy (0.67 against 0.84, 5 seeds; benchmarks/README.md, "Class
    imbalance"). Without the sampler the re-estimate changed no prediction.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    module.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    with torch.no_grad():
        for part in torch.tensor_split(x, max(1, math.ceil(len(x) / chunk))):
            module(part)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.eval()


@contextmanager
def _balanced_images(learn):
    """``learn.dls.train`` draws images with equal probability per class meanwhile (fastai
    ``WeightedDL``: with replacement, as many per epoch as before); restored afterwards."""
    from fastai.callback.data import WeightedDL

    dls = learn.dls
    targets = _train_targets(dls)
    counts = np.bincount(targets, minlength=len(dls.vocab))
    loader = dls.loaders[0]
    dls.loaders[0] = loader.new(cls=WeightedDL, wgts=1.0 / counts[targets])
    try:
        yield dls.loaders[0]
    finally:
        dls.loaders[0] = loader


def _quiet(learn):
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(learn.no_bar())
    stack.enter_context(learn.no_logging())
    return stack


def get_preds(learn, dl=None, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets on ``dl`` (default: the validation set) as numpy arrays.

    Returns y_score (n_images, n_classes) softmax or sigmoid probabilities, and y_true
    (class indices, or multi-hot rows for multi-label data). tta : the mean of the
    probabilities of each image and its left-right mirror (as ``Predictor(tta=True)``).
    """
    dl = learn.dls.valid if dl is None else dl
    if tta:
        return _get_preds_mirrored(learn, dl)
    y_score, y_true = learn.get_preds(dl=dl)
    if isinstance(y_true, torch.Tensor):  # keep integer class indices integer
        y_true = y_true.detach().cpu().numpy()
    return _to_numpy(y_score), _to_numpy(y_true)


def _get_preds_mirrored(learn, dl) -> tuple[np.ndarray, np.ndarray]:
    model = learn.model.eval()
    if getattr(dl, "device", None) is not None:
        model.to(dl.device)
    multilabel = bool(getattr(learn, "multilabel", False))
    scores, targets = [], []
    with torch.no_grad():
        for xb, yb in dl:
            xb = xb.as_subclass(torch.Tensor)
            logits = torch.stack([model(xb), model(xb.flip(3))]).float()
            probs = logits.sigmoid() if multilabel else logits.softmax(dim=-1)
            scores.append(probs.mean(0).cpu())
            targets.append(yb.as_subclass(torch.Tensor).cpu())
    return torch.cat(scores).numpy(), torch.cat(targets).numpy()


def validation_accuracy(learn) -> float:
    """Accuracy on the validation set: top-1 for single-label, hamming for multi-label (at
    the specification's threshold)."""
    y_score, y_true = get_preds(learn)
    if getattr(learn, "multilabel", False):
        return hamming_accuracy(y_true, y_score, learn.spec.threshold)
    return accuracy(y_true, y_score)


# --- recording train metrics -----------------------------------------------------------------


def _metric_fn(metric):
    return getattr(metric, "func", metric)


def _metric_name(metric) -> str:
    return getattr(metric, "name", getattr(_metric_fn(metric), "__name__", str(metric)))


class FreezeBatchNormStats(_Callback):
    """fastai callback: the body's batch-norm layers stay in eval mode while training.

    They then normalise with their pretrained (ImageNet) running statistics and do not update
    them; their scale and shift are still trained when the body is. On small data sets,
    fine-tuning with the statistics re-estimated from batches of 16 augmented images cost 3-13
    points of validation accuracy in every run; with them frozen, fine-tuning kept or improved
    the head's accuracy (benchmarks/README.md, "Fine-tuning and batch-norm statistics").
    """

    order = 1  # after fastai's TrainEvalCallback, which puts the whole model in train mode

    def before_train(self):
        model = getattr(self.learn.model, "module", self.learn.model)  # unwrap DDP
        for module in model[0].modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class TrainMetricsRecorder(_Callback):
    """fastai callback: the learner's metrics on the training and validation sets per epoch.

    After training: ``train_metrics`` and ``valid_metrics`` are lists (one row per epoch) of
    floats, one per metric in ``names``; ``losses`` holds the training loss of every batch;
    ``plot()`` draws the metrics. Training metrics are computed
    on the (augmented) training batches as they are seen.
    """

    order = 60

    def before_fit_with(self, learn):
        """Start recording for ``learn`` outside a fastai fit (see ``fit_head_cached``)."""
        self.learn = learn
        self.before_fit()

    def add_epoch(self, train_preds, train_targs, valid_preds, valid_targs):
        """Record one epoch from predictions made outside a fastai fit."""
        metrics = [_metric_fn(m) for m in self.learn.metrics]
        self.train_metrics.append([float(m(train_preds, train_targs)) for m in metrics])
        self.valid_metrics.append([float(m(valid_preds, valid_targs)) for m in metrics])

    def before_fit(self):
        # Rows accumulate over successive fits (head, then body) of the same learner.
        names = [_metric_name(m) for m in self.learn.metrics]
        if getattr(self, "names", None) != names:
            self.names, self.train_metrics, self.valid_metrics = names, [], []
            self.losses = []

    def before_epoch(self):
        self._preds, self._targs = [], []

    def after_batch(self):
        if self.training:
            self.losses.append(self.learn.loss.item())
        if self.training and self.learn.metrics:
            self._preds.append(self.learn.pred.detach().float().cpu())
            self._targs.append(self.learn.yb[0].detach().cpu())

    def after_epoch(self):
        if not self._preds:
            return
        preds, targs = torch.cat(self._preds), torch.cat(self._targs)
        self.train_metrics.append([float(_metric_fn(m)(preds, targs)) for m in self.learn.metrics])
        values = self.learn.recorder.log[3:] if hasattr(self.learn.recorder, "log") else []
        self.valid_metrics.append([float(v) for v in values[: len(self.names)]])

    def plot(self):
        """Figure with one panel per metric: training vs validation per epoch."""
        import matplotlib.pyplot as plt

        n = max(1, len(self.names))
        fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), squeeze=False)
        for i, name in enumerate(self.names):
            ax = axes[0, i]
            epochs = range(1, len(self.train_metrics) + 1)
            ax.plot(epochs, [row[i] for row in self.train_metrics], "o-", label="training")
            ax.plot(epochs, [row[i] for row in self.valid_metrics], "o-", label="validation")
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.legend(loc="lower right")
        fig.tight_layout()
        return fig


# --- faster training on this hardware ----------------------------------------------------------


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


if __name__ == "__main__":  # python -m utils_cv.classification.train: the training command
    from utils_cv.classification.train_cli import main

    raise SystemExit(main())
