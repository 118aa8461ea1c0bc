"""What happens after every epoch of the training recipe, in both of its stages.

The recipe (``train.fit_recipe``) trains the head on cached features with its own loop, then
optionally fine-tunes the whole network with fastai. Both stages report each finished epoch
the same way, to the same *listeners*:

- ``begin_stage(learn, state)``: a stage starts (``state.start_epoch`` > 0 when resumed);
- ``after_epoch(learn, row, state)``: one epoch ended; ``row`` is a dict with ``stage``
  ("head" or "fine_tune"), ``epoch`` (1-based, within the stage), ``train_loss`` (mean over the
  epoch's batches), ``valid_loss``, one value per metric of the learner (validation set, as
  fractions), ``lr`` (learning rate at the end of the epoch) and ``seconds`` (wall time of the
  epoch). Returning True asks the stage to stop after this epoch (``state.stop`` is then set);
- ``end_stage(learn, state)``: the stage ended (all epochs, or stopped early).

Listeners run in order of their ``order`` attribute. ``BestEpoch`` (early stopping and
keeping the best epoch's weights, ``TrainConfig.patience`` and ``keep_best``) comes first, so
the record (``records.RunRecord``), the live curves (``live.LiveCurves``) and the checkpoint
(``checkpoint.Checkpointer``, last) see its decision.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

try:
    from fastai.callback.core import Callback as _Callback
    from fastai.callback.core import CancelFitException
except ImportError:  # pragma: no cover
    _Callback = object
    CancelFitException = RuntimeError

STAGES = ("head", "fine_tune")


@dataclass
class StageState:
    """The state of one stage of the recipe, as listeners see it.

    stage : "head" or "fine_tune". epochs : epochs planned for the stage. module : the module
    this stage trains (the head without its pooling layer, or the whole network).
    optimizer : the stage's optimizer (torch AdamW for the head, the fastai optimizer when
    fine-tuning). scheduler : the head's torch learning-rate scheduler (None when fine-tuning:
    fastai's schedule follows from the epoch). start_epoch : epochs already done when the
    stage began (resumed from a checkpoint). epoch : epochs finished so far. stop : a listener
    asked to stop. data_loader : the training loader, whose random generator (its shuffling;
    fastai replaces it every epoch) a checkpoint keeps. extra : what the stage must keep for a resume (e.g. the head's learning rate).
    """

    stage: str
    epochs: int
    module: torch.nn.Module
    optimizer: object = None
    scheduler: object = None
    start_epoch: int = 0
    epoch: int = 0
    stop: bool = False
    data_loader: object = None
    extra: dict = field(default_factory=dict)


class TrainingListener:
    """Base class of listeners: override what you need (see the module docstring).

    ``key`` names the listener in a checkpoint when it has a state to keep across a resume
    (``state_dict`` / ``load_state_dict``: tensors, numbers, strings, lists and dicts).
    """

    order = 50
    key: str | None = None

    def begin_stage(self, learn, state: StageState) -> None:
        pass

    def after_epoch(self, learn, row: dict, state: StageState) -> bool | None:
        return None

    def end_stage(self, learn, state: StageState) -> None:
        pass

    def end_training(self, learn, seconds: float) -> None:
        """Training finished normally after ``seconds`` of wall time."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def sorted_listeners(listeners) -> list[TrainingListener]:
    """``listeners`` in calling order (by ``order``, stable)."""
    return sorted(listeners or (), key=lambda listener: listener.order)


def begin_stage(listeners, learn, state: StageState) -> None:
    for listener in listeners:
        listener.begin_stage(learn, state)


def after_epoch(listeners, learn, row: dict, state: StageState) -> bool:
    """Tell every listener about the epoch in ``row``; True when one of them asked to stop."""
    state.epoch = row["epoch"]
    for listener in listeners:
        if listener.after_epoch(learn, row, state):
            state.stop = True
    return state.stop


def end_stage(listeners, learn, state: StageState) -> None:
    for listener in listeners:
        listener.end_stage(learn, state)


def metric_names(learn) -> list[str]:
    """Names of the learner's metrics, as the rows of ``after_epoch`` use them."""
    from utils_cv.classification.train import _metric_name

    return [_metric_name(m) for m in learn.metrics]


class BestEpoch(TrainingListener):
    """Early stopping and keeping the best epoch's weights, per stage, on the validation loss.

    patience : stop the stage after this many epochs without a lower validation loss (0: never
    stop early). keep_best : at the end of the stage, put back the weights of the epoch with
    the lowest validation loss (a copy is kept in memory: the head's, or the whole network's
    when fine-tuning). After training ``best`` holds, per stage, {"epoch", "valid_loss",
    "stopped_at" (epoch, or None when it ran to the end)}.
    """

    order = 0
    key = "best_epoch"

    def __init__(self, patience: int = 0, keep_best: bool = False):
        self.patience, self.keep_best = patience, keep_best
        self.best = {}
        self._reset()

    def _reset(self):
        self.best_loss, self.best_epoch, self.wait, self.weights = math.inf, 0, 0, None

    def begin_stage(self, learn, state):
        if state.start_epoch == 0:  # resumed: the state comes from the checkpoint
            self._reset()

    def after_epoch(self, learn, row, state):
        loss = row["valid_loss"]
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_epoch, self.wait = loss, row["epoch"], 0
            if self.keep_best:
                self.weights = {k: v.detach().clone() for k, v in state.module.state_dict().items()}
        else:
            self.wait += 1
        return bool(self.patience) and self.wait >= self.patience

    def end_stage(self, learn, state):
        stopped_at = state.epoch if state.stop and state.epoch < state.epochs else None
        self.best[state.stage] = {
            "epoch": self.best_epoch,
            "valid_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "stopped_at": stopped_at,
        }
        if self.keep_best and self.weights is not None and self.best_epoch != state.epoch:
            state.module.load_state_dict(self.weights)
        self._reset()

    def state_dict(self):
        return {
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "weights": self.weights,
            "best": self.best,
        }

    def load_state_dict(self, state):
        loss = state["best_loss"]
        self.best_loss = math.inf if loss is None else float(loss)
        self.best_epoch, self.wait = int(state["best_epoch"]), int(state["wait"])
        self.weights, self.best = state["weights"], dict(state["best"])


class FastaiEpochs(_Callback):
    """fastai callback: reports each epoch of a fastai fit to the listeners as a row.

    state : the fine-tuning stage's ``StageState``; epochs before ``state.start_epoch`` (skipped
    when resuming) are not reported. A listener's request to stop ends the fit after the epoch.
    """

    order = 70  # after the Recorder (50) and the TrainMetricsRecorder (60)

    def __init__(self, listeners, state: StageState):
        self.listeners, self.state = listeners, state

    def before_fit(self):
        self.state.optimizer = self.learn.opt
        self.state.data_loader = self.learn.dls.train
        begin_stage(self.listeners, self.learn, self.state)

    def before_epoch(self):
        self._start, self._losses = time.perf_counter(), []

    def after_batch(self):
        if self.training:  # fastai's train_loss is smoothed across epochs; rows have the mean
            self._losses.append(self.learn.loss.detach().item())

    def after_epoch(self):
        if self.epoch < self.state.start_epoch:
            return
        recorder = self.learn.recorder
        values = dict(zip(recorder.metric_names[1:], list(recorder.log)[1:]))
        row = {"stage": self.state.stage, "epoch": self.epoch + 1}
        row["train_loss"] = sum(self._losses) / len(self._losses) if self._losses else math.nan
        row["valid_loss"] = float(values.get("valid_loss", math.nan))
        for name in metric_names(self.learn):
            row[name] = float(values.get(name, math.nan))
        row["lr"] = float(self.learn.opt.hypers[-1]["lr"])
        row["seconds"] = time.perf_counter() - self._start
        if after_epoch(self.listeners, self.learn, row, self.state):
            raise CancelFitException()

    def after_fit(self):
        end_stage(self.listeners, self.learn, self.state)
