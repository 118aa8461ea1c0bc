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
    ``metric(y_true, y_score, threshold)``. On ties, the middle of the longest run of
    consecutive best thresholds (in increasing order; the lower middle of an even run): the
    decision with the widest margin on both sides, not an edge such as 0.0 that predicts
    every label."""
    if thresholds is None:
        thresholds = np.round(np.linspace(0, 1, 101), 2)
    thresholds = np.sort(np.asarray(thresholds, dtype=float))
    scores = np.array([metric(y_true, y_score, threshold=float(t)) for t in thresholds])
    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-12))
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    run = max(runs, key=len)  # the first of the longest runs
    return float(thresholds[run[(len(run) - 1) // 2]])


def fastai_zero_one(inp, targ, thresh: float = 0.5, sigmoid: bool = True):
    """fastai-style (pred, targ) zero-one accuracy on logits, for ``Learner.metrics``."""
    if sigmoid:
        inp = inp.sigmoid()
    return ((inp > thresh) == targ.bool()).all(dim=1).float().mean()
