"""Metrics on hand-computed arrays; building learners; training and its per-epoch records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from utils_cv.classification.model import (
    FreezeBatchNormStats,
    TrainMetricsRecorder,
    accuracy,
    build_classifier,
    create_learner,
    fit,
    fit_head_cached,
    get_optimal_threshold,
    get_preds,
    hamming_accuracy,
    is_multilabel_dls,
    validation_accuracy,
    zero_one_accuracy,
)

# 3 images x 3 labels. Predicted at 0.5: [1,1,0], [0,1,0], [1,0,1].
Y_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
Y_SCORE = np.array([[0.9, 0.6, 0.4], [0.2, 0.7, 0.1], [0.5, 0.3, 0.8]])


def recorder_of(learn) -> TrainMetricsRecorder:
    found = [cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)]
    assert len(found) == 1
    return found[0]


def state_copy(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- metrics -------------------------------------------------------------------------------------


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


def test_accuracy_is_top1():
    y_true = np.array([0, 2, 1, 1])
    y_score = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.3, 0.6, 0.1]]
    )  # argmax 0, 2, 0, 1
    assert accuracy(y_true, y_score) == 0.75
    assert accuracy(y_true[:1], y_score[:1]) == 1.0
    assert accuracy(np.array([1]), y_score[:1]) == 0.0


def test_get_optimal_threshold_picks_the_best_and_smallest():
    # Positives score 0.55 or more, negatives 0.3 or less: every threshold in (0.30, 0.55]
    # is perfect; the smallest on the default grid 0.00, 0.01, ... is 0.31.
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    y_score = np.array([[0.8, 0.3], [0.2, 0.55], [0.6, 0.7]])
    assert get_optimal_threshold(hamming_accuracy, y_true, y_score) == 0.31
    assert get_optimal_threshold(zero_one_accuracy, y_true, y_score) == 0.31
    assert hamming_accuracy(y_true, y_score, threshold=0.31) == 1.0
    assert hamming_accuracy(y_true, y_score, threshold=0.30) < 1.0
    assert get_optimal_threshold(hamming_accuracy, y_true, y_score, [0.1, 0.9, 0.5]) == 0.5
    # On Y_SCORE the best hamming accuracy (8/9) is reached for thresholds in (0.3, 0.4].
    assert get_optimal_threshold(hamming_accuracy, Y_TRUE, Y_SCORE) == 0.31
    assert get_optimal_threshold(hamming_accuracy, Y_TRUE, Y_SCORE, [0.5, 0.35, 0.4]) == 0.35


# --- building classifiers and learners ---------------------------------------------------------


def test_build_classifier_has_body_and_head():
    model = build_classifier("efficientnet_lite0", 5, pretrained=False, dropout=0.3)
    body, head = model
    assert isinstance(model, nn.Sequential) and len(model) == 2
    dropouts = [m.p for m in head.modules() if isinstance(m, nn.Dropout)]
    assert dropouts[-1] == 0.3
    assert [m.out_features for m in head.modules() if isinstance(m, nn.Linear)][-1] == 5
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


def test_build_classifier_torchvision_backbone():
    model = build_classifier("resnet18", 3, pretrained=False)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_build_classifier_unknown_architecture():
    with pytest.raises(ValueError, match="Unknown architecture 'vgg99'"):
        build_classifier("vgg99", 3)


def test_create_learner_single_label(objects_tiny, make_dls):
    learn = create_learner(make_dls(objects_tiny), "efficientnet_lite0", dropout=0.2)
    assert (learn.arch_name, learn.dropout, learn.multilabel) == ("efficientnet_lite0", 0.2, False)
    assert [m.name for m in learn.metrics] == ["accuracy"]
    assert "CrossEntropy" in type(learn.loss_func).__name__
    recorder_of(learn)
    # Pretrained: the body is frozen except its batch norms; the head trains.
    body, head = learn.model
    frozen = [
        p.requires_grad for m in body.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()
    ]
    assert frozen and not any(frozen)
    assert all(p.requires_grad for p in head.parameters())


def test_create_learner_multilabel_untrained_without_recorder(multilabel_tiny, make_dls):
    dls = make_dls(multilabel_tiny)
    learn = create_learner(dls, "resnet18", pretrained=False, record_train_metrics=False)
    assert learn.multilabel and is_multilabel_dls(dls)
    assert [m.name for m in learn.metrics] == ["accuracy_multi", "_fastai_zero_one"]
    assert "BCEWithLogits" in type(learn.loss_func).__name__
    assert not any(isinstance(cb, TrainMetricsRecorder) for cb in learn.cbs)
    assert all(p.requires_grad for p in learn.model.parameters())  # nothing frozen


# --- training and the records -------------------------------------------------------------------


def test_fit_records_head_then_body_epochs(tiny_learner):
    rec = recorder_of(tiny_learner)
    assert rec.names == ["accuracy"]
    # One row per epoch: the head epoch, then the body epoch.
    assert len(rec.train_metrics) == len(rec.valid_metrics) == 2
    # 16 training images, batches of 8 (2 per epoch); 8 validation images.
    assert len(rec.losses) == 4
    assert all(np.isfinite(rec.losses)) and all(loss > 0 for loss in rec.losses)
    for train_row, valid_row in zip(rec.train_metrics, rec.valid_metrics):
        assert (train_row[0] * 16) == pytest.approx(round(train_row[0] * 16))
        assert (valid_row[0] * 8) == pytest.approx(round(valid_row[0] * 8))
        assert 0 <= train_row[0] <= 1 and 0 <= valid_row[0] <= 1
    # The last validation row is the trained model's accuracy (other tests run fastai's
    # validate() on this shared learner, which resets its recorder, so that is not compared).
    assert rec.valid_metrics[-1][0] == pytest.approx(validation_accuracy(tiny_learner))


def test_recorder_plot(tiny_learner):
    import matplotlib.pyplot as plt

    fig = recorder_of(tiny_learner).plot()
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "accuracy"
        assert [line.get_label() for line in ax.lines] == ["training", "validation"]
        rec = recorder_of(tiny_learner)
        assert list(ax.lines[0].get_xdata()) == [1, 2]
        assert list(ax.lines[0].get_ydata()) == [row[0] for row in rec.train_metrics]
        assert list(ax.lines[1].get_ydata()) == [row[0] for row in rec.valid_metrics]
    finally:
        plt.close(fig)


def test_get_preds_and_validation_accuracy_single_label(tiny_learner, tiny_valid_images):
    y_score, y_true = get_preds(tiny_learner)
    assert y_score.shape == (8, 4) and y_true.shape == (8,)
    assert type(y_score) is type(y_true) is np.ndarray
    assert np.issubdtype(y_true.dtype, np.integer)
    np.testing.assert_allclose(y_score.sum(axis=1), 1, atol=1e-5)
    vocab = list(tiny_learner.dls.vocab)
    assert [vocab[i] for i in y_true] == [p.parent.name for p in tiny_valid_images]
    assert validation_accuracy(tiny_learner) == accuracy(y_true, y_score)


def test_get_preds_and_validation_accuracy_multilabel(multilabel_learner, multilabel_tiny):
    y_score, y_true = get_preds(multilabel_learner)
    assert y_score.shape == y_true.shape == (5, 4)
    assert ((y_score > 0) & (y_score < 1)).all()
    df = pd.read_csv(multilabel_tiny / "labels.csv")
    vocab = list(multilabel_learner.dls.vocab)
    expected = [set(labels.split()) for labels in df.loc[df["is_valid"], "labels"]]
    assert [{vocab[i] for i in np.flatnonzero(row)} for row in y_true] == expected
    assert validation_accuracy(multilabel_learner) == hamming_accuracy(y_true, y_score)
    rec = recorder_of(multilabel_learner)
    assert rec.names == ["accuracy_multi", "_fastai_zero_one"]
    assert len(rec.train_metrics) == 1 and len(rec.train_metrics[0]) == 2


def test_fit_with_no_epochs_changes_nothing(objects_tiny, make_dls):
    learn = create_learner(make_dls(objects_tiny), "efficientnet_lite0")
    before = state_copy(learn.model)
    seconds = fit(learn, epochs=0, lr=1e-3, epochs_head=0)
    assert 0 <= seconds < 1
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _bn_stats(body: nn.Module) -> dict:
    return {
        k: v.detach().clone()
        for k, v in body.state_dict().items()
        if k.endswith(("running_mean", "running_var"))
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_fit_freezes_batch_norm_statistics_by_default(objects_tiny, make_dls, freeze):
    from fastai.vision.all import set_seed

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny), "efficientnet_lite0", record_train_metrics=False)
    stats_before = _bn_stats(learn.model[0])
    body_before = state_copy(learn.model[0])
    assert len(stats_before) > 10
    with learn.no_bar(), learn.no_logging():
        fit(learn, epochs=1, lr=1e-3, epochs_head=0, freeze_bn_stats=freeze)
    stats_after = _bn_stats(learn.model[0])
    unchanged = [torch.equal(stats_before[k], stats_after[k]) for k in stats_before]
    assert all(unchanged) if freeze else not any(unchanged)
    # The body's weights (batch-norm scale and shift included) trained either way.
    body_after = learn.model[0].state_dict()
    changed = {k for k in body_before if not torch.equal(body_before[k], body_after[k])}
    assert any(k.endswith(".weight") and "bn" in k for k in changed)
    assert any("conv" in k for k in changed)
    # The callback lives only for that fit.
    assert not any(isinstance(cb, FreezeBatchNormStats) for cb in learn.cbs)


def test_fit_head_cached_trains_only_the_head(objects_tiny, make_dls):
    from fastai.vision.all import set_seed

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny), "efficientnet_lite0")
    body_before = state_copy(learn.model[0])
    head_before = state_copy(learn.model[1])
    epochs, aug_passes = 8, 2
    seconds = fit_head_cached(learn, epochs=epochs, aug_passes=aug_passes, progress=False)
    assert seconds > 0
    body_after, head_after = learn.model[0].state_dict(), learn.model[1].state_dict()
    assert all(torch.equal(body_before[k], body_after[k]) for k in body_before)
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)

    rec = recorder_of(learn)
    assert rec.names == ["accuracy"]
    assert len(rec.train_metrics) == len(rec.valid_metrics) == epochs
    n_batches = 16 * aug_passes // 8
    assert len(rec.losses) == epochs * n_batches
    first, last = np.mean(rec.losses[:n_batches]), np.mean(rec.losses[-n_batches:])
    assert last < 0.5 * first
    assert rec.train_metrics[-1][0] >= 0.75
    # The last validation row is the learner's own validation accuracy.
    assert rec.valid_metrics[-1][0] == pytest.approx(validation_accuracy(learn))


# --- head types, features, head training on features ----------------------------------------


def test_linear_head_is_one_linear_layer_after_pooling():
    model = build_classifier("efficientnet_lite0", 3, pretrained=False, dropout=0.3, head="linear")
    linears = [m for m in model[1].modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    assert linears[0].in_features == 2 * 1280 and linears[0].out_features == 3
    dropouts = [m.p for m in model[1].modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.3]
    mlp = build_classifier("efficientnet_lite0", 3, pretrained=False)
    assert len([m for m in mlp[1].modules() if isinstance(m, nn.Linear)]) == 2
    with pytest.raises(ValueError, match="head must be one of mlp, linear"):
        build_classifier("efficientnet_lite0", 3, pretrained=False, head="transformer")


def test_extract_features_in_loader_order_with_passes(objects_tiny, make_dls):
    from utils_cv.classification.model import extract_features

    learn = create_learner(make_dls(objects_tiny), "efficientnet_lite0")
    dl = learn.dls.valid  # no augmentation: both passes give the same features
    x, y = extract_features(learn, dl, passes=2)
    n = len(learn.dls.valid_ds)
    assert x.shape[0] == y.shape[0] == 2 * n and x.shape[1] == 2 * 1280
    assert torch.allclose(x[:n], x[n:], atol=1e-5)
    assert torch.equal(y[:n], y[n:])
    # The same as running the body and the pooling layer directly.
    xb, _ = dl.one_batch()
    with torch.no_grad():
        direct = learn.model[1][0](learn.model[0].eval()(xb))
    assert torch.allclose(x[: len(xb)], direct.as_subclass(torch.Tensor), atol=1e-5)


def test_train_head_on_features_fits_a_linear_head(objects_tiny, make_dls):
    from fastai.vision.all import set_seed

    from utils_cv.classification.model import extract_features, train_head

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny), "efficientnet_lite0", head="linear")
    assert learn.head_type == "linear"
    x, y = extract_features(learn, learn.dls.train.new(shuffle=False, drop_last=False), 2)
    body_before = state_copy(learn.model[0])
    train_head(learn, x, y, epochs=30, lr=1e-2, progress=False)
    assert all(torch.equal(body_before[k], v) for k, v in learn.model[0].state_dict().items())
    learn.model[1].eval()
    with torch.no_grad():
        train_acc = accuracy(y.numpy(), learn.model[1][1:](x).numpy())
    assert train_acc >= 0.9  # 16 images, 2560 features: the head can fit them
    assert "train_metrics" not in vars(recorder_of(learn))  # no validation features: no records
