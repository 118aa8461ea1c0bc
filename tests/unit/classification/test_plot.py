"""Precision-recall / ROC curves and metrics-against-threshold plots, on hand-made scores."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from utils_cv.classification.metrics import hamming_accuracy, zero_one_accuracy  # noqa: E402
from utils_cv.classification.plot import plot_pr_roc_curves, plot_thresholds  # noqa: E402

# 6 images, 3 classes. Class a is separated perfectly; b has one negative (0.6) above a
# positive (0.5): ROC AUC 7/8, AP 1/2 * 1 + 1/2 * 2/3; c has a positive (0.3) tied with two
# negatives: AUC 7/8, AP 1/2 * 1 + 1/2 * 1/2.
Y_TRUE = np.array([0, 1, 2, 0, 1, 2])
Y_SCORE = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.2, 0.6],
        [0.6, 0.1, 0.3],
        [0.2, 0.5, 0.3],
        [0.1, 0.6, 0.3],
    ]
)


@pytest.fixture
def figure():
    """Collects figures and closes them after the test."""
    figs = []
    yield figs.append
    for fig in figs:
        plt.close(fig)


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_pr_roc_curves_one_line_per_class_and_micro(figure):
    fig = plot_pr_roc_curves(Y_TRUE, Y_SCORE, ["a", "b", "c"])
    figure(fig)
    ax_pr, ax_roc = fig.axes
    assert (ax_pr.get_title(), ax_roc.get_title()) == ("Precision-recall", "ROC")
    assert len(ax_pr.lines) == 4
    assert len(ax_roc.lines) == 5  # and the chance diagonal
    assert legend_texts(ax_pr)[:3] == ["a (AP=1.00)", "b (AP=0.83)", "c (AP=0.75)"]
    assert legend_texts(ax_roc)[:3] == ["a (AUC=1.00)", "b (AUC=0.88)", "c (AUC=0.88)"]
    assert legend_texts(ax_pr)[3].startswith("micro-average (AP=")
    assert ax_pr.lines[3].get_linestyle() == "--"
    diagonal = ax_roc.lines[-1]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    # The ROC curve of the perfect class goes through the top-left corner.
    a_fpr, a_tpr = ax_roc.lines[0].get_xdata(), ax_roc.lines[0].get_ydata()
    assert any(f == 0 and t == 1 for f, t in zip(a_fpr, a_tpr))


def test_pr_roc_curves_without_micro_and_with_an_absent_class(figure):
    scores = np.hstack([Y_SCORE, np.full((6, 1), 0.05)])
    fig = plot_pr_roc_curves(Y_TRUE, scores, ["a", "b", "c", "d"], show_micro=False)
    figure(fig)
    ax_pr, ax_roc = fig.axes
    # No image is a "d": its curve is left out (it needs positives and negatives).
    assert [t.split(" ")[0] for t in legend_texts(ax_pr)] == ["a", "b", "c"]
    assert len(ax_roc.lines) == 4


def test_pr_roc_curves_multilabel_targets(figure):
    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    y_score = np.array([[0.9, 0.2], [0.3, 0.7], [0.8, 0.6], [0.1, 0.4]])
    fig = plot_pr_roc_curves(y_true, y_score, ["x", "y"])
    figure(fig)
    ax_pr, _ = fig.axes
    assert legend_texts(ax_pr) == ["x (AP=1.00)", "y (AP=1.00)", "micro-average (AP=1.00)"]


def test_plot_thresholds_marks_the_best_threshold(figure):
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    y_score = np.array([[0.8, 0.3], [0.2, 0.55], [0.6, 0.7]])
    metrics = {"hamming": hamming_accuracy, "zero-one": zero_one_accuracy}
    fig = plot_thresholds(metrics, y_true, y_score)
    figure(fig)
    (ax,) = fig.axes
    assert len(ax.lines) == 4  # a curve and a marker per metric
    assert legend_texts(ax) == ["hamming", "zero-one"]
    for curve, marker, metric in zip(ax.lines[::2], ax.lines[1::2], metrics.values()):
        assert len(curve.get_xdata()) == 101
        expected = [metric(y_true, y_score, threshold=t) for t in curve.get_xdata()]
        assert list(curve.get_ydata()) == expected
        assert list(marker.get_xdata()) == [0.31] and list(marker.get_ydata()) == [1.0]
        assert marker.get_marker() == "o"
        assert marker.get_color() == curve.get_color()
    assert [t.get_text() for t in ax.texts] == ["1.00 at 0.31", "1.00 at 0.31"]
    assert ax.get_xlabel() == "threshold"


def test_plot_thresholds_single_metric_and_given_thresholds(figure):
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    y_score = np.array([[0.8, 0.3], [0.2, 0.55], [0.6, 0.7]])
    fig = plot_thresholds(hamming_accuracy, y_true, y_score, thresholds=[0.1, 0.5, 0.9])
    figure(fig)
    (ax,) = fig.axes
    assert legend_texts(ax) == ["hamming_accuracy"]
    curve, marker = ax.lines
    assert list(curve.get_xdata()) == [0.1, 0.5, 0.9]
    assert list(curve.get_ydata()) == pytest.approx([4 / 6, 1.0, 2 / 6])  # all on, best, all off
    assert list(marker.get_xdata()) == [0.5]
    assert [t.get_text() for t in ax.texts] == ["1.00 at 0.50"]
