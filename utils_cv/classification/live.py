"""Live training curves: loss and metrics per epoch, redrawn in place while training runs.

``train(..., live=True)`` adds a ``LiveCurves`` listener: one figure, two panels (training
and validation loss; the validation metrics, fractions), one point per epoch of both stages
of the recipe (the head, then fine-tuning after a dashed line). In a Jupyter kernel the figure
is shown once and updated in place through an IPython display handle (at most every
``min_seconds``, and at the end of each stage), so a notebook run by papermill keeps a single
image, the final one. Elsewhere nothing is shown; ``figure`` still holds the curves.
"""

from __future__ import annotations

import time

from utils_cv.classification.listeners import TrainingListener


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where IPython display handles update outputs)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class LiveCurves(TrainingListener):
    """Listener: a figure of loss and metrics per epoch, updated in place in a notebook.

    show : display the figure ("auto": only in a Jupyter kernel). min_seconds : least time
    between two redraws (each costs ~50 ms). After training: ``rows`` (every epoch's row, see
    ``listeners``) and ``figure`` (the matplotlib Figure).
    """

    order = 20

    def __init__(self, show: bool | str = "auto", min_seconds: float = 1.0):
        self.show = in_notebook() if show == "auto" else bool(show)
        self.min_seconds = min_seconds
        self.rows, self.figure, self.handle, self._last = [], None, None, 0.0

    def _ensure_figure(self):
        if self.figure is not None:
            return
        import matplotlib.pyplot as plt

        self.figure, (self.ax_loss, self.ax_metric) = plt.subplots(1, 2, figsize=(10, 3.2))
        plt.close(self.figure)  # shown through the display handle only, not again at cell end

    def begin_stage(self, learn, state):
        self._ensure_figure()

    def after_epoch(self, learn, row, state):
        self.rows.append(dict(row))
        now = time.perf_counter()
        if now - self._last >= self.min_seconds or state.epoch == state.epochs:
            self.redraw()
            self._last = now

    def end_stage(self, learn, state):
        self.redraw()

    def redraw(self) -> None:
        """Draw the rows so far and update the displayed figure."""
        self._ensure_figure()
        ax_loss, ax_metric = self.ax_loss, self.ax_metric
        ax_loss.clear()
        ax_metric.clear()
        steps = list(range(1, len(self.rows) + 1))
        ax_loss.plot(steps, [r["train_loss"] for r in self.rows], ".-", label="training")
        ax_loss.plot(steps, [r["valid_loss"] for r in self.rows], ".-", label="validation")
        fixed = {"stage", "epoch", "train_loss", "valid_loss", "lr", "seconds"}
        names = [k for k in (self.rows[0] if self.rows else {}) if k not in fixed]
        for name in names:
            ax_metric.plot(steps, [r[name] for r in self.rows], ".-", label=name)
        switch = next((i for i, r in enumerate(self.rows) if r["stage"] == "fine_tune"), None)
        for ax in (ax_loss, ax_metric):
            if switch:
                ax.axvline(switch + 0.5, color="grey", ls="--", lw=0.8)
            ax.set_xlabel("epoch (head, then fine-tuning)")
            if ax.lines:
                ax.legend(loc="best", fontsize="small")
        ax_loss.set_ylabel("loss")
        ax_metric.set_ylabel("validation (fraction)")
        if self.rows:
            last = self.rows[-1]
            ax_loss.set_title(
                f"{last['stage']} epoch {last['epoch']}: valid loss {last['valid_loss']:.3f}"
            )
        self.figure.tight_layout()
        if self.show:
            self._display()

    def _display(self):
        from IPython.display import display

        if self.handle is None:
            self.handle = display(self.figure, display_id=True)
        else:
            self.handle.update(self.figure)
