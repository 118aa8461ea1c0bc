"""Metrics on hand-computed arrays: (y_true, y_score) in this order, fractions in 0..1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils_cv.classification.metrics import (
    accuracy,
    fastai_zero_one,
    get_optimal_threshold,
    hamming_accuracy,
    zero_one_accuracy,
)

# 3 images x 3 labels. Predicted at 0.5: [1,1,0], [0,1,0], [1,0,1].
Y_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
Y_SCORE = np.array([[0.9, 0.6, 0.4], [0.2, 0.7, 0.1], [0.5, 0.3, 0.8]])


def test_hamming_accuracy_counts_label_decisions():
    # Wrong decisions at 0.5: image 0 labels 1 and 2 -> 7 of 9 right.
    assert hamming_accuracy(Y_TRUE, Y_SCORE) == pytest.approx(7 / 9)
    # At 0.35 image 0 is right, image 2 predicts nothing wrong -> only image 0 label 1 wrong.
    assert hamming_accuracy(Y_TRUE, Y_SCORE, threshold=0.35) == pytest.approx(8 / 9)
    # At 0.95 nothing is predicted: the 4 negatives are right.
    assert hamming_accuracy(Y_TRUE, Y_SCORE, threshold=0.95) == pytest.approx(4 / 9)


def test_zero_one_accuracy_counts_whole_images():
    assert zero_one_accuracy(Y_TRUE, Y_SCORE) == pytest.approx(2 / 3)
    assert zero_one_accuracy(Y_TRUE, Y_SCORE, threshold=0.35) == pytest.approx(2 / 3)
    assert zero_one_accuracy(Y_TRUE, Y_SCORE, threshold=0.95) == 0.0
    assert zero_one_accuracy(Y_TRUE, Y_TRUE.astype(float)) == 1.0


def test_a_score_equal_to_the_threshold_predicts_the_label():
    y_true = np.array([[1, 0]])
    assert hamming_accuracy(y_true, np.array([[0.5, 0.49]]), threshold=0.5) == 1.0
    assert zero_one_accuracy(y_true, np.array([[0.5, 0.5]]), threshold=0.5) == 0.0


def test_metrics_accept_torch_tensors():
    assert hamming_accuracy(torch.tensor(Y_TRUE), torch.tensor(Y_SCORE)) == pytest.approx(7 / 9)
    assert zero_one_accuracy(torch.tensor(Y_TRUE), torch.tensor(Y_SCORE)) == pytest.approx(2 / 3)
    y_score = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], requires_grad=True)
    assert accuracy(torch.tensor([0, 1]), y_score) == 0.5
    assert type(accuracy(torch.tensor([0, 2]), y_score)) is float


def test_accuracy_is_top1():
    y_true = np.array([0, 2, 1, 1])
    y_score = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.3, 0.6, 0.1]]
    )  # argmax 0, 2, 0, 1
    assert accuracy(y_true, y_score) == 0.75
    assert accuracy(y_true[:1], y_score[:1]) == 1.0
    assert accuracy(np.array([1]), y_score[:1]) == 0.0


def test_get_optimal_threshold_picks_the_middle_of_the_best():
    # Positives score 0.55 or more, negatives 0.3 or less: every threshold in (0.30, 0.55]
    # is perfect; on the default grid 0.00, 0.01, ... that is 0.31..0.55, whose middle is 0.43.
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    y_score = np.array([[0.8, 0.3], [0.2, 0.55], [0.6, 0.7]])
    assert get_optimal_threshold(hamming_accuracy, y_true, y_score) == 0.43
    assert get_optimal_threshold(zero_one_accuracy, y_true, y_score) == 0.43
    assert hamming_accuracy(y_true, y_score, threshold=0.31) == 1.0
    assert hamming_accuracy(y_true, y_score, threshold=0.30) < 1.0
    assert get_optimal_threshold(hamming_accuracy, y_true, y_score, [0.1, 0.9, 0.5]) == 0.5
    # On Y_SCORE the best hamming accuracy (8/9) is reached for thresholds in (0.3, 0.4]:
    # 0.31..0.40 on the grid, lower middle 0.35; in the given list 0.35 and 0.4 (order free).
    assert get_optimal_threshold(hamming_accuracy, Y_TRUE, Y_SCORE) == 0.35
    assert get_optimal_threshold(hamming_accuracy, Y_TRUE, Y_SCORE, [0.5, 0.4, 0.35]) == 0.35


def test_get_optimal_threshold_does_not_pick_an_edge_on_ties():
    # Every label right at any threshold up to 0.90 and wrong above: best run 0.00..0.90;
    # before, the smallest (0.0, "predict every label") was returned.
    y_true = np.array([[1, 1], [1, 1]])
    y_score = np.array([[0.9, 0.95], [0.92, 0.99]])
    assert get_optimal_threshold(hamming_accuracy, y_true, y_score) == 0.45
    # two equally good runs: the longer one wins
    scores = {0.1: 1.0, 0.2: 0.5, 0.3: 1.0, 0.4: 1.0, 0.5: 1.0, 0.6: 0.2}
    metric = lambda y, s, threshold: scores[round(threshold, 1)]  # noqa: E731
    assert get_optimal_threshold(metric, None, None, list(scores)) == 0.4


def test_fastai_zero_one_on_logits():
    # Logits: sigmoid(2) = 0.88, sigmoid(-2) = 0.12, sigmoid(0) = 0.5 (not above 0.5).
    logits = torch.tensor([[2.0, -2.0], [2.0, 0.0], [-2.0, 2.0]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 1]])
    assert fastai_zero_one(logits, targets).item() == pytest.approx(2 / 3)
    assert fastai_zero_one(logits, targets, thresh=0.1).item() == pytest.approx(1 / 3)
    probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.1, 0.3]])
    assert fastai_zero_one(probs, targets, sigmoid=False).item() == pytest.approx(2 / 3)
