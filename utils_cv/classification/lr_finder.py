"""The learning-rate finder, for both stages of the recipe.

A range test (Smith 2015, fastai's ``lr_find``): train from the current weights while the
learning rate grows exponentially from ``start_lr`` to ``end_lr``, record the smoothed
training loss, stop when it exceeds four times its minimum, put the weights back, and suggest
a rate with fastai's "valley" rule (the middle of the longest descending stretch of the loss).

- ``lr_find_head``: over the head on cached features (``train.extract_features``); a hundred
  steps take well under a second, so ``TrainConfig(lr_find=True)`` costs almost nothing in
  the default recipe;
- ``lr_find_fine_tune``: over the whole network on the training images (body unfrozen, its
  batch-norm statistics frozen as in the recipe, the body ``body_lr_ratio`` times lower),
  with fastai's ``LRFinder`` but keeping the weights in memory instead of a file.
- ``lr_find(learn, stage)``: either, for a learner from ``train.create_learner``.

Each returns an ``LRFinderResult`` (rates, smoothed losses, suggestion; ``plot()``). The
random generators are left as they were, so a run at the suggested rate trains exactly like a
run given that rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LRFinderResult:
    """What a range test found.

    stage : "head" or "fine_tune". lrs : learning rates tried, one per step (the head's,
    when fine-tuning). losses : the smoothed training loss at each step. suggestion : the
    suggested (peak) learning rate. index : the step of the suggestion.
    """

    stage: str
    lrs: np.ndarray
    losses: np.ndarray
    suggestion: float
    index: int

    def plot(self, ax=None):
        """Loss against learning rate (log scale), the suggestion marked; returns the Figure."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax)
        ax.plot(self.lrs, self.losses)
        ax.plot(self.suggestion, self.losses[self.index], "o", color="tab:red")
        ax.annotate(
            f"suggested {self.suggestion:.1e}",
            (self.suggestion, self.losses[self.index]),
            textcoords="offset points",
            xytext=(6, 6),
        )
        stage = "head on cached features" if self.stage == "head" else "whole network"
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)")
        ax.set_title(f"Learning-rate finder: {stage}")
        fig.tight_layout()
        return fig


def suggest(lrs, losses, num_it: int) -> tuple[float, int]:
    """fastai's "valley" suggestion over the range test, ignoring its first tenth and last five
    steps (as ``Learner.lr_find`` does) and anything after a NaN. Returns (rate, step index)."""
    from fastai.callback.schedule import valley

    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    first, end = num_it // 10, len(lrs) - 5
    if end - first < 5:  # the test stopped early (the loss diverged): use every step
        first, end = 0, len(lrs)
    bad = np.flatnonzero(~np.isfinite(losses[first:end]))
    if len(bad):
        end = first + int(bad[0])
    if end - first < 2:
        raise ValueError(
            f"The range test ran {len(lrs)} steps before its loss diverged, too few for a "
            f"suggestion: lower start_lr, or set the learning rate yourself."
        )
    rate, _ = valley(torch.tensor(lrs[first:end]), torch.tensor(losses[first:end]), num_it)
    index = first + int(np.argmin(np.abs(lrs[first:end] - rate)))
    return float(rate), index


def lr_find_head(
    learn,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_it: int = 100,
    weight_decay: float = 1e-2,
    batch_size: int | None = None,
    beta: float = 0.98,
) -> LRFinderResult:
    """Range test of the learner's head (all but its pooling layer) on cached features.

    x_train, y_train : features and targets from ``train.extract_features``. ``num_it`` AdamW
    steps on shuffled mini-batches of ``batch_size`` rows (default: the training loader's), the
    rate growing from ``start_lr`` to ``end_lr``; ``beta`` smooths the loss (debiased
    exponential average). The head's weights and the random generators are put back.
    """
    head = learn.model[1][1:]
    batch_size = batch_size or learn.dls.train.bs
    saved = {k: v.detach().clone() for k, v in head.state_dict().items()}
    opt = torch.optim.AdamW(head.parameters(), lr=start_lr, weight_decay=weight_decay)
    lrs, losses = [], []
    avg, best = 0.0, float("inf")
    with torch.random.fork_rng(devices=[]):
        head.train()
        order = torch.randperm(len(x_train))
        position = 0
        for i in range(num_it):
            if position + batch_size > len(order):
                order, position = torch.randperm(len(x_train)), 0
            idx = order[position : position + batch_size]
            position += batch_size
            lr = start_lr * (end_lr / start_lr) ** (i / max(1, num_it - 1))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = learn.loss_func(head(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            avg = beta * avg + (1 - beta) * loss.item()
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if not np.isfinite(smooth) or smooth > 4 * best:
                break
    head.load_state_dict(saved)
    head.eval()
    rate, index = suggest(lrs, losses, num_it)
    return LRFinderResult("head", np.array(lrs), np.array(losses), rate, index)


def _memory_lr_finder(start_lr, end_lr, num_it: int):
    """fastai's LRFinder, keeping the weights in memory instead of saving them under the
    learner's path (which would write into the data folder, and reload with pickle)."""
    from fastai.callback.schedule import LRFinder, ParamScheduler

    class MemoryLRFinder(LRFinder):
        def before_fit(self):
            ParamScheduler.before_fit(self)
            model = self.learn.model
            self.saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best_loss = float("inf")

        def after_fit(self):
            self.learn.opt.zero_grad()
            self.learn.model.load_state_dict(self.saved)

    finder = MemoryLRFinder(start_lr=start_lr, end_lr=end_lr, num_it=num_it)
    scheds = finder.scheds["lr"]
    if isinstance(scheds, list):  # one rate per parameter group (body, head)
        finder.scheds = {"lr": lambda pct: np.array([sched(pct) for sched in scheds])}
    return finder


def lr_find_fine_tune(
    learn,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_it: int = 50,
    body_lr_ratio: float = 10.0,
    freeze_bn_stats: bool = True,
) -> LRFinderResult:
    """Range test of the whole network on the training images, as the recipe fine-tunes it.

    The body is unfrozen and runs ``body_lr_ratio`` times lower than the head (the rates
    reported and suggested are the head's); with ``freeze_bn_stats`` its batch-norm statistics
    stay as they are. ``num_it`` steps (each one batch of images). The weights, the optimizer's
    state and the random generators are put back; the learner is left unfrozen.
    """
    from utils_cv.classification.train import FreezeBatchNormStats, TrainMetricsRecorder

    n_epochs = num_it // max(1, len(learn.dls.train)) + 1
    starts = [start_lr / body_lr_ratio, start_lr] if body_lr_ratio != 1 else start_lr
    ends = [end_lr / body_lr_ratio, end_lr] if body_lr_ratio != 1 else end_lr
    finder = _memory_lr_finder(starts, ends, num_it)
    cbs = [finder, FreezeBatchNormStats()] if freeze_bn_stats else [finder]
    data_rng = getattr(learn.dls.train, "rng", None)
    data_state = None if data_rng is None else data_rng.getstate()
    recorders = [cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)]
    learn.unfreeze()
    with torch.random.fork_rng(devices=[]), learn.no_logging(), learn.no_bar():
        with learn.removed_cbs(recorders):  # the range test is not an epoch of training
            learn.fit(n_epochs, cbs=cbs)
    learn.opt.clear_state()
    if data_state is not None:  # fastai replaced the loader's generator each epoch
        data_rng.setstate(data_state)
        learn.dls.train.rng = data_rng
    lrs = [float(lr) for lr in learn.recorder.lrs]
    losses = [float(loss) for loss in learn.recorder.losses]
    rate, index = suggest(lrs, losses, num_it)
    return LRFinderResult("fine_tune", np.array(lrs), np.array(losses), rate, index)


def lr_find(learn, stage: str = "head", aug_passes: int = 1, **kwargs) -> LRFinderResult:
    """The range test of ``stage`` ("head": over the head on features extracted here from
    ``aug_passes`` passes over the training images; "fine_tune": the whole network) for a
    learner from ``train.create_learner``. kwargs go to ``lr_find_head`` or
    ``lr_find_fine_tune``."""
    from utils_cv.classification.train import extract_features

    if stage == "head":
        x_train, y_train = extract_features(learn, learn.dls.train, aug_passes)
        return lr_find_head(learn, x_train, y_train, **kwargs)
    if stage == "fine_tune":
        return lr_find_fine_tune(learn, **kwargs)
    raise ValueError(f"stage must be 'head' or 'fine_tune', got {stage!r}.")
