"""Metrics: ``(y_true, y_score)`` in this order everywhere; results are fractions in 0..1."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def accuracy(y_true, y_score) -> float:
    """Single-label accuracy: fraction of images whose top-scoring class is the true class.

    y_true : array (n_images,) of class indices; y_score : array (n_images, n_classes).
    """
    y_true, y_score = _to_numpy(y_true), _to_numpy(y_score)
    return float((y_score.argmax(axis=1) == y_true).mean())


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


def get_optimal_threshold(
    metric: Callable, y_true, y_score, thresholds: Sequence[float] | None = None
) -> float:
    """The threshold in ``thresholds`` (default 0.00, 0.01, ..., 1.00) that maximises
    ``metric(y_true, y_score, threshold)``; the smallest such threshold on ties."""
    if thresholds is None:
        thresholds = np.round(np.linspace(0, 1, 101), 2)
    scores = [metric(y_true, y_score, threshold=float(t)) for t in thresholds]
    return float(thresholds[int(np.argmax(scores))])


def fastai_zero_one(inp, targ, thresh: float = 0.5, sigmoid: bool = True):
    """fastai-style (pred, targ) zero-one accuracy on logits, for ``Learner.metrics``."""
    if sigmoid:
        inp = inp.sigmoid()
    return ((inp > thresh) == targ.bool()).all(dim=1).float().mean()
