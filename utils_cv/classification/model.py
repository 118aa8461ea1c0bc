"""Models: building classifiers from the backbone registry, the training recipe, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from utils_cv.classification.backbones import get_backbone

# The default recipe (fit_recipe): head epochs on cached features, peak learning rate, head
# dropout. Chosen on four single-label and one multi-label set, 3 seeds each, unseen objects in
# validation (benchmarks/bench_recipe_choices.py): 0.807 mean accuracy against 0.783 for
# 20 epochs at 1e-2 with dropout 0.5, and the best worst case.
EPOCHS_HEAD = 40
LEARNING_RATE = 3e-3
DROPOUT = 0.2

# --- metrics: (y_true, y_score) in this order everywhere; fractions in 0..1 -----------------


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def hamming_accuracy(y_true, y_score, threshold: float = 0.5) -> float:
    """Fraction of (image, label) decisions that are right for multi-label predictions.

    y_true : array (n_images, n_labels) of 0/1; y_score : probabilities of the same shape.
    A label is predicted when its probability is >= ``threshold``.
    """
    y_true, y_score = _to_numpy(y_true), _to_numpy(y_score)
    return float(((y_score >= threshold) == (y_true > 0.5)).mean())


def zero_one_accuracy(y_true, y_score, threshold: float = 0.5) -> float:
    """Fraction of images whose whole label set is predicted exactly (see ``hamming_accuracy``)."""
    y_true, y_score = _to_numpy(y_true), _to_numpy(y_score)
    return float(((y_score >= threshold) == (y_true > 0.5)).all(axis=1).mean())


def accuracy(y_true, y_score) -> float:
    """Single-label accuracy: fraction of images whose top-scoring class is the true class.

    y_true : array (n_images,) of class indices; y_score : array (n_images, n_classes).
    """
    y_true, y_score = _to_numpy(y_true), _to_numpy(y_score)
    return float((y_score.argmax(axis=1) == y_true).mean())


def get_optimal_threshold(
    metric: Callable, y_true, y_score, thresholds: Sequence[float] | None = None
) -> float:
    """The threshold in ``thresholds`` (default 0.00, 0.01, ..., 1.00) that maximises
    ``metric(y_true, y_score, threshold)``; the smallest such threshold on ties."""
    if thresholds is None:
        thresholds = np.round(np.linspace(0, 1, 101), 2)
    scores = [metric(y_true, y_score, threshold=float(t)) for t in thresholds]
    return float(thresholds[int(np.argmax(scores))])


def _fastai_zero_one(inp, targ, thresh: float = 0.5, sigmoid: bool = True):
    """fastai-style (pred, targ) zero-one accuracy on logits, for ``Learner.metrics``."""
    if sigmoid:
        inp = inp.sigmoid()
    return ((inp > thresh) == targ.bool()).all(dim=1).float().mean()


# --- building a classifier -------------------------------------------------------------------


HEADS = ("mlp", "linear")


def build_classifier(
    arch: str, n_classes: int, pretrained: bool = True, dropout: float = 0.5, head: str = "mlp"
) -> nn.Module:
    """``nn.Sequential(body, head)``: the registry's backbone body and a fastai pooling head.

    arch : a name from ``utils_cv.classification.backbones.list_backbones()``.
    n_classes : number of outputs (logits). dropout : head dropout (fastai ``ps``).
    head : "mlp" (fastai's default head: concat pooling, batch norm, a 512-unit hidden layer)
    or "linear" (concat pooling, batch norm, dropout, one linear layer).
    """
    body, n_features = get_backbone(arch).create_body(pretrained)
    return nn.Sequential(body, build_head(n_features, n_classes, dropout, head))


def build_head(n_features: int, n_classes: int, dropout: float = 0.5, head: str = "mlp"):
    """A freshly initialised head (see ``build_classifier``) for a body with ``n_features``
    output channels; its first layer is the parameter-free concat pooling."""
    from fastai.vision.learner import apply_init, create_head

    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}.")
    lin_ftrs = [] if head == "linear" else None
    module = create_head(n_features, n_classes, lin_ftrs=lin_ftrs, ps=dropout)
    apply_init(module, nn.init.kaiming_normal_)
    return module


def create_learner(
    dls,
    arch: str = "efficientnet_lite0",
    pretrained: bool = True,
    dropout: float = DROPOUT,
    weight_decay: float | None = None,
    metrics=None,
    record_train_metrics: bool = True,
    head: str = "mlp",
):
    """A fastai Learner for ``dls`` with the backbone ``arch`` (frozen body when pretrained).

    Single-label data gets cross-entropy and ``accuracy``; multi-label data (fastai
    MultiCategoryBlock) gets BCE on sigmoid outputs with hamming and zero-one accuracy.
    ``head`` and ``dropout``: see ``build_classifier``. The learner remembers ``arch``,
    ``dropout`` and ``head`` for ``save_model``.
    """
    from fastai.vision.all import Learner, accuracy_multi, default_split
    from fastai.vision.all import accuracy as fastai_accuracy

    multilabel = is_multilabel_dls(dls)
    if metrics is None:
        metrics = [accuracy_multi, _fastai_zero_one] if multilabel else [fastai_accuracy]
    model = build_classifier(arch, dls.c, pretrained=pretrained, dropout=dropout, head=head)
    cbs = [TrainMetricsRecorder()] if record_train_metrics else []
    learn = Learner(dls, model, splitter=default_split, metrics=metrics, wd=weight_decay, cbs=cbs)
    if pretrained:
        learn.freeze()
    learn.arch_name = get_backbone(arch).name
    learn.dropout = dropout
    learn.head_type = head
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
    epochs_head: int = 1,
    body_lr_ratio: float = 10.0,
    one_cycle: bool = True,
    freeze_bn_stats: bool = True,
) -> float:
    """Train head first (body frozen) for ``epochs_head``, then the whole network for ``epochs``.

    lr : peak learning rate of the head; the body gets ``lr / body_lr_ratio`` (discriminative
    learning rates, ``body_lr_ratio=1`` turns them off). one_cycle : fastai's one-cycle schedule,
    else a constant rate. freeze_bn_stats : keep the body's batch-norm running statistics as
    pretrained (``FreezeBatchNormStats``; its scale and shift still train). Returns the wall
    time in seconds.
    """
    from contextlib import nullcontext

    start = time.perf_counter()
    fit_fn = learn.fit_one_cycle if one_cycle else learn.fit
    frozen = learn.added_cbs(FreezeBatchNormStats()) if freeze_bn_stats else nullcontext()
    with frozen:
        if epochs_head > 0:
            learn.freeze()
            fit_fn(epochs_head, lr)
        if epochs > 0:
            learn.unfreeze()
            body_lr = slice(lr / body_lr_ratio, lr) if body_lr_ratio != 1 else lr
            fit_fn(epochs, body_lr)
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
) -> None:
    """Train the learner's head (all but its pooling layer) on features from ``extract_features``.

    AdamW with a one-cycle schedule peaking at ``lr`` for ``epochs`` epochs of mini-batches of
    ``batch_size`` rows (default: the training loader's batch size), shuffled with torch's
    random generator. When validation features are given, per-epoch metrics go to the
    learner's TrainMetricsRecorder.
    """
    from fastprogress.fastprogress import progress_bar

    head = learn.model[1]
    rest = head[1:]
    batch_size = batch_size or learn.dls.train.bs
    n_batches = max(1, len(x_train) // batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * n_batches)
    recorder = next((cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)), None)
    if x_valid is None:
        recorder = None
    if recorder is not None:
        recorder.before_fit_with(learn)
    epoch_iter = progress_bar(range(epochs)) if progress else range(epochs)
    for _ in epoch_iter:
        rest.train()
        order = torch.randperm(len(x_train), device=x_train.device)
        preds, targs = [], []
        for i in range(n_batches):
            idx = order[i * batch_size : (i + 1) * batch_size]
            out = rest(x_train[idx])
            loss = learn.loss_func(out, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if recorder is not None:
                preds.append(out.detach())
                targs.append(y_train[idx])
                recorder.losses.append(loss.item())
        rest.eval()
        if recorder is not None:
            with torch.no_grad():
                valid_out = rest(x_valid)
            recorder.add_epoch(torch.cat(preds), torch.cat(targs), valid_out, y_valid)


def fit_head_cached(
    learn,
    epochs: int = EPOCHS_HEAD,
    lr: float = LEARNING_RATE,
    aug_passes: int = 2,
    weight_decay: float = 1e-2,
    progress: bool = True,
) -> float:
    """Train only the head on cached body features: many epochs for the price of a few.

    The frozen body sees the (augmented) training set ``aug_passes`` times; its pooled features
    are kept in memory (10 kB per image and pass for EfficientNet-Lite0) and the head is
    trained on them for ``epochs`` epochs with AdamW and a one-cycle schedule peaking at ``lr``
    (``train_head``). Per-epoch metrics go to the learner's TrainMetricsRecorder.
    Returns the wall time in seconds.
    """
    start = time.perf_counter()
    x_train, y_train = extract_features(learn, learn.dls.train, aug_passes)
    x_valid, y_valid = extract_features(learn, learn.dls.valid)
    train_head(
        learn, x_train, y_train, x_valid, y_valid, epochs, lr, weight_decay, progress=progress
    )
    return time.perf_counter() - start


def fit_recipe(
    learn,
    epochs_head: int = EPOCHS_HEAD,
    epochs: int = 0,
    lr: float = LEARNING_RATE,
    body_lr_ratio: float = 10.0,
    progress: bool = True,
    freeze_bn_stats: bool = True,
) -> float:
    """This project's default training recipe; returns the wall time in seconds.

    1. The head trains for ``epochs_head`` epochs on cached features of the frozen body
       (``fit_head_cached``, peak learning rate ``lr``): cheap, and on small data sets it is
       where most of the accuracy comes from.
    2. Then, when ``epochs`` > 0, the whole network is fine-tuned for ``epochs`` epochs with a
       one-cycle schedule, the head at ``lr / body_lr_ratio`` and the body ten times lower,
       with the body's batch-norm statistics frozen (``FreezeBatchNormStats``) unless
       ``freeze_bn_stats`` is False.
    """
    seconds = fit_head_cached(learn, epochs_head, lr, progress=progress) if epochs_head else 0.0
    if epochs > 0:
        head_lr = lr / body_lr_ratio
        kwargs = {"epochs_head": 0, "freeze_bn_stats": freeze_bn_stats}
        if progress:
            seconds += fit(learn, epochs, head_lr, **kwargs)
        else:
            with learn.no_bar(), learn.no_logging():
                seconds += fit(learn, epochs, head_lr, **kwargs)
    return seconds


def get_preds(learn, dl=None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets on ``dl`` (default: the validation set) as numpy arrays.

    Returns y_score (n_images, n_classes) softmax or sigmoid probabilities, and y_true
    (class indices, or multi-hot rows for multi-label data).
    """
    dl = learn.dls.valid if dl is None else dl
    y_score, y_true = learn.get_preds(dl=dl)
    if isinstance(y_true, torch.Tensor):  # keep integer class indices integer
        y_true = y_true.detach().cpu().numpy()
    return _to_numpy(y_score), _to_numpy(y_true)


def validation_accuracy(learn) -> float:
    """Accuracy on the validation set: top-1 for single-label, hamming for multi-label."""
    y_score, y_true = get_preds(learn)
    if getattr(learn, "multilabel", False):
        return hamming_accuracy(y_true, y_score)
    return accuracy(y_true, y_score)


# --- recording train metrics -----------------------------------------------------------------


def _metric_fn(metric):
    return getattr(metric, "func", metric)


def _metric_name(metric) -> str:
    return getattr(metric, "name", getattr(_metric_fn(metric), "__name__", str(metric)))


try:
    from fastai.callback.core import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


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
        for module in self.learn.model[0].modules():
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
