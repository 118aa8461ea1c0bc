"""Classification plots: precision-recall and ROC curves, metrics against the threshold."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve


def _one_hot(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        return (y_true > 0.5).astype(int)
    return np.eye(n_classes, dtype=int)[y_true.astype(int)]


def plot_pr_roc_curves(
    y_true, y_score, classes: Sequence[str], show_micro: bool = True, figsize=(12, 4.5)
):
    """Precision-recall and ROC curves, one line per class (one-vs-rest) and micro-averaged.

    y_true : class indices (n_images,) or multi-hot (n_images, n_classes);
    y_score : probabilities (n_images, n_classes). Returns the matplotlib Figure.
    """
    y_score = np.asarray(y_score)
    y_bin = _one_hot(y_true, y_score.shape[1])
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=figsize)
    series = [(str(c), y_bin[:, i], y_score[:, i]) for i, c in enumerate(classes)]
    if show_micro:
        series.append(("micro-average", y_bin.ravel(), y_score.ravel()))
    for name, truth, score in series:
        if truth.min() == truth.max():
            continue  # a curve needs both positives and negatives
        style = "--" if name == "micro-average" else "-"
        precision, recall, _ = precision_recall_curve(truth, score)
        ap = average_precision_score(truth, score)
        ax_pr.plot(recall, precision, style, label=f"{name} (AP={ap:.2f})")
        fpr, tpr, _ = roc_curve(truth, score)
        ax_roc.plot(fpr, tpr, style, label=f"{name} (AUC={auc(fpr, tpr):.2f})")
    ax_pr.set(
        xlabel="recall",
        ylabel="precision",
        title="Precision-recall",
        xlim=(0, 1.01),
        ylim=(0, 1.05),
    )
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax_roc.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.05),
    )
    ax_pr.legend(loc="lower left", fontsize="small")
    ax_roc.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def plot_thresholds(
    metrics: dict[str, Callable] | Callable,
    y_true,
    y_score,
    thresholds: Sequence[float] | None = None,
    figsize=(7, 4),
):
    """Each metric ``f(y_true, y_score, threshold=t)`` against the threshold t, best marked.

    metrics : a callable or {name: callable}, e.g. hamming_accuracy and zero_one_accuracy.
    Returns the matplotlib Figure.
    """
    if callable(metrics):
        metrics = {getattr(metrics, "__name__", "metric"): metrics}
    if thresholds is None:
        thresholds = np.round(np.linspace(0, 1, 101), 2)
    fig, ax = plt.subplots(figsize=figsize)
    for name, metric in metrics.items():
        values = [metric(y_true, y_score, threshold=float(t)) for t in thresholds]
        best = int(np.argmax(values))
        ax.plot(thresholds, values, label=name)
        ax.plot(thresholds[best], values[best], "o", color=ax.lines[-1].get_color())
        ax.annotate(
            f"{values[best]:.2f} at {thresholds[best]:.2f}",
            (thresholds[best], values[best]),
            textcoords="offset points",
            xytext=(5, -12),
            fontsize="small",
        )
    ax.set(xlabel="threshold", ylabel="accuracy (fraction)", title="Metrics against the threshold")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower center")
    fig.tight_layout()
    return fig
