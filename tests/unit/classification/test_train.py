"""Training: the configuration, learners, the recipe's pieces, per-epoch records, ``train``
from a folder to a saved model, and the fast-training callback."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from utils_cv.classification import train as train_module
from utils_cv.classification.data import sample_data_path
from utils_cv.classification.metrics import accuracy, hamming_accuracy
from utils_cv.classification.saved import load_model, save_model
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import (
    EPOCHS_HEAD,
    LEARNING_RATE,
    ConfigError,
    FastTraining,
    FreezeBatchNormStats,
    TrainConfig,
    TrainMetricsRecorder,
    create_learner,
    extract_features,
    fast_training,
    fit,
    fit_head_cached,
    fit_recipe,
    get_preds,
    is_multilabel_dls,
    train,
    train_head,
    validation_accuracy,
)
from utils_cv.common.gpu import cpu_has_fast_bf16
from utils_cv.common.misc import set_random_seed

CLASSES = ["apple", "citrus", "flower", "tool"]


def recorder_of(learn) -> TrainMetricsRecorder:
    found = [cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)]
    assert len(found) == 1
    return found[0]


def state_copy(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- the configuration ---------------------------------------------------------------------


def test_train_config_defaults_are_the_measured_recipe():
    config = TrainConfig()
    assert config.to_dict() == {
        "epochs_head": EPOCHS_HEAD,
        "epochs": 0,
        "lr": LEARNING_RATE,
        "batch_size": 16,
        "weight_decay": 1e-2,
        "aug_passes": 2,
        "body_lr_ratio": 10.0,
        "one_cycle": True,
        "freeze_bn_stats": True,
        "transform": True,
        "patience": 0,
        "label_smoothing": 0.1,
        "balance": "none",
        "keep_best": False,
        "lr_find": False,
        "valid_pct": 0.2,
        "seed": 42,
    }
    assert (EPOCHS_HEAD, LEARNING_RATE) == (40, 3e-3)
    changed = config.replace(epochs=3, lr=1e-2)
    assert (changed.epochs, changed.lr, config.epochs) == (3, 1e-2, 0)
    with pytest.raises(AttributeError):
        config.epochs = 5  # frozen


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs_head", -1),
        ("epochs", 1.5),
        ("epochs", True),
        ("lr", 0),
        ("lr", float("nan")),
        ("lr", "3e-3"),
        ("batch_size", 0),
        ("weight_decay", -0.1),
        ("aug_passes", 0),
        ("body_lr_ratio", 0.5),
        ("one_cycle", 1),
        ("freeze_bn_stats", "yes"),
        ("transform", None),
        ("patience", -1),
        ("label_smoothing", 1.0),
        ("label_smoothing", -0.1),
        ("balance", "oversample"),
        ("valid_pct", 0),
        ("valid_pct", 1.0),
        ("seed", 1.0),
    ],
)
def test_train_config_invalid_field_is_named(field, value):
    with pytest.raises(ConfigError, match=rf"TrainConfig field '{field}': .* expected"):
        TrainConfig(**{field: value})


def test_train_config_accepts_numpy_values_from_a_grid():
    config = TrainConfig(epochs=np.int64(2), lr=np.float64(1e-3), one_cycle=np.bool_(False))
    assert config.one_cycle is False and config.epochs == 2


# --- learners --------------------------------------------------------------------------------


def test_create_learner_single_label(objects_tiny, make_dls, tiny_spec):
    learn = create_learner(make_dls(objects_tiny), tiny_spec.replace(dropout=0.3))
    assert learn.spec == tiny_spec.replace(dropout=0.3, classes=tuple(CLASSES), multilabel=False)
    assert learn.spec.is_complete and not learn.multilabel
    assert [m.name for m in learn.metrics] == ["accuracy"]
    assert "CrossEntropy" in type(learn.loss_func).__name__
    assert [m.p for m in learn.model[1].modules() if isinstance(m, nn.Dropout)][-1] == 0.3
    recorder_of(learn)
    # Pretrained: the body is frozen except its batch norms; the head trains.
    body, head = learn.model
    frozen = [
        p.requires_grad for m in body.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()
    ]
    assert frozen and not any(frozen)
    assert all(p.requires_grad for p in head.parameters())


def test_create_learner_multilabel_untrained_without_recorder(multilabel_tiny, make_dls):
    spec = ModelSpec("resnet18", im_size=64)
    dls = make_dls(multilabel_tiny, spec)
    learn = create_learner(dls, spec, pretrained=False, record_train_metrics=False)
    assert learn.multilabel and is_multilabel_dls(dls)
    assert learn.spec.multilabel is True and learn.spec.classes == tuple(CLASSES)
    assert learn.spec.mean == (0.485, 0.456, 0.406)  # resnet18's, from the registry
    assert [m.name for m in learn.metrics] == ["accuracy_multi", "fastai_zero_one"]
    assert "BCEWithLogits" in type(learn.loss_func).__name__
    assert not any(isinstance(cb, TrainMetricsRecorder) for cb in learn.cbs)
    assert all(p.requires_grad for p in learn.model.parameters())  # nothing frozen


# --- training and the records -----------------------------------------------------------------


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
    # Hamming accuracy at the specification's threshold (0.5 on the learner).
    assert multilabel_learner.spec.threshold == 0.5
    # Multi-label data: Lite0's last two stages join its final maps as features (the default).
    assert multilabel_learner.spec.feature_stages == 2
    assert multilabel_learner.model[1][2].num_features == 2 * (1280 + 320 + 192)
    assert validation_accuracy(multilabel_learner) == hamming_accuracy(y_true, y_score, 0.5)
    rec = recorder_of(multilabel_learner)
    assert rec.names == ["accuracy_multi", "fastai_zero_one"]
    assert len(rec.train_metrics) == 1 and len(rec.train_metrics[0]) == 2


def test_get_preds_with_mirror_tta_averages_image_and_mirror(tiny_learner, multilabel_learner):
    from utils_cv.classification.predict import TorchPredictor

    for learn in (tiny_learner, multilabel_learner):
        plain, y_true = get_preds(learn)
        mirrored, y_same = get_preds(learn, tta=True)
        np.testing.assert_array_equal(y_true, y_same)
        assert mirrored.shape == plain.shape and not np.allclose(mirrored, plain, atol=1e-4)
        if not learn.multilabel:
            np.testing.assert_allclose(mirrored.sum(axis=1), 1, atol=1e-5)
    # The same numbers as the predictor with tta on the validation files (same preprocessing).
    files = [Path(f) for f in tiny_learner.dls.valid.items]
    predictor = TorchPredictor(tiny_learner.model, tiny_learner.spec, tta=True)
    expected = predictor.predict_proba(files)
    np.testing.assert_allclose(get_preds(tiny_learner, tta=True)[0], expected, atol=1e-4)


def test_label_smoothing_sets_the_loss_and_keeps_class_weights(objects_tiny, make_dls, tiny_spec):
    from utils_cv.classification.train import use_class_weights

    set_random_seed(0)
    learn = create_learner(make_dls(objects_tiny), tiny_spec)
    config = TrainConfig(epochs_head=2, aug_passes=1, batch_size=8, label_smoothing=0.2)
    fit_recipe(learn, config, progress=False)
    assert learn.loss_func.func.label_smoothing == 0.2
    # the smoothed loss of confident correct logits is larger than the plain one
    logits = torch.tensor([[10.0, -10.0, -10.0, -10.0]])
    target = torch.tensor([0])
    assert float(learn.loss_func(logits, target)) > 0.1
    assert float(torch.nn.functional.cross_entropy(logits, target)) < 1e-6
    use_class_weights(learn)  # balance="weights" keeps the smoothing
    assert learn.loss_func.func.label_smoothing == 0.2
    assert learn.loss_func.func.weight is not None
    # multi-label data trains without it (BCE)
    ml = create_learner(make_dls(sample_data_path("objects_multilabel_tiny")), tiny_spec)
    loss_before = type(ml.loss_func)
    fit_recipe(ml, config, progress=False)
    assert type(ml.loss_func) is loss_before


def test_fit_with_no_epochs_changes_nothing(objects_tiny, make_dls, tiny_spec):
    learn = create_learner(make_dls(objects_tiny), tiny_spec)
    before = state_copy(learn.model)
    seconds = fit(learn, epochs=0, lr=1e-3, epochs_head=0)
    assert 0 <= seconds < 1
    assert fit_recipe(learn, TrainConfig(epochs_head=0, epochs=0)) == 0.0
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _bn_stats(body: nn.Module) -> dict:
    return {
        k: v.detach().clone()
        for k, v in body.state_dict().items()
        if k.endswith(("running_mean", "running_var"))
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_fit_freezes_batch_norm_statistics_by_default(objects_tiny, make_dls, tiny_spec, freeze):
    from fastai.vision.all import set_seed

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny), tiny_spec, record_train_metrics=False)
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


def test_fit_head_cached_trains_only_the_head(objects_tiny, make_dls, tiny_spec):
    from fastai.vision.all import set_seed

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny), tiny_spec)
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


# --- features and head training on features ----------------------------------------------


def test_extract_features_in_loader_order_with_passes(objects_tiny, make_dls, tiny_spec):
    learn = create_learner(make_dls(objects_tiny), tiny_spec)
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


def test_extract_features_keeps_every_training_image(objects_tiny, make_dls, tiny_spec):
    """The training loader drops its last partial batch; the feature cache must not (16 train
    images in batches of 5 would lose one, and a batch larger than the set would lose all)."""
    for batch_size in (5, 32):
        learn = create_learner(make_dls(objects_tiny, batch_size=batch_size), tiny_spec)
        assert learn.dls.train.drop_last
        x, y = extract_features(learn, learn.dls.train, passes=2)
        assert x.shape[0] == y.shape[0] == 2 * len(learn.dls.train_ds) == 32
        assert learn.dls.train.drop_last  # the learner's own loader is left as it was


def test_train_head_on_features_fits_a_linear_head(objects_tiny, make_dls, tiny_spec):
    from fastai.vision.all import set_seed

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny), tiny_spec.replace(head="linear"))
    assert learn.spec.head == "linear"
    x, y = extract_features(learn, learn.dls.train.new(shuffle=False, drop_last=False), 2)
    body_before = state_copy(learn.model[0])
    train_head(learn, x, y, epochs=30, lr=1e-2, progress=False)
    assert all(torch.equal(body_before[k], v) for k, v in learn.model[0].state_dict().items())
    learn.model[1].eval()
    with torch.no_grad():
        train_acc = accuracy(y.cpu().numpy(), learn.model[1][1:](x).cpu().numpy())
    assert train_acc >= 0.9  # 16 images, 2560 features: the head can fit them
    assert "train_metrics" not in vars(recorder_of(learn))  # no validation features: no records


# --- train: from a folder to a saved model ---------------------------------------------------


@pytest.fixture(scope="module")
def trained(objects_tiny, tiny_spec):
    """(learner, wall seconds): ``train`` with one cached-head epoch and one whole-network
    epoch, without the two tool images of valid/ (passed through ``files``)."""
    files = [p for p in sorted(objects_tiny.rglob("*.jpg")) if p.parent.parent.name == "train"]
    files += sorted((objects_tiny / "valid").glob("[!t]*/*.jpg"))  # not valid/tool
    config = TrainConfig(epochs_head=1, epochs=1, lr=1e-3, batch_size=8)
    start = time.perf_counter()
    learn = train(objects_tiny, tiny_spec, config, files=files, progress=False)
    return learn, time.perf_counter() - start


def test_train_completes_the_spec_and_keeps_the_config(trained, tiny_spec):
    learn, wall = trained
    assert learn.spec == tiny_spec.with_data(CLASSES, False)
    assert learn.config == TrainConfig(epochs_head=1, epochs=1, lr=1e-3, batch_size=8)
    assert 0 < learn.training_seconds < wall
    assert not learn.multilabel


def test_train_files_restrict_the_data(trained):
    learn, _ = trained
    assert len(learn.dls.train_ds) == 16
    assert len(learn.dls.valid_ds) == 6
    assert all(p.parent.name != "tool" for p in learn.dls.valid_ds.items)
    assert learn.dls.train.bs == 8
    assert learn.dls.valid.one_batch()[0].shape[-2:] == (64, 64)


def test_train_records_both_phases(trained):
    rec = recorder_of(trained[0])
    # One row for the cached-head epoch, one for the whole-network epoch.
    assert len(rec.train_metrics) == len(rec.valid_metrics) == 2
    assert all(np.isfinite(rec.losses))
    # The last validation row is on the 6 validation images.
    assert rec.valid_metrics[-1][0] * 6 == pytest.approx(round(rec.valid_metrics[-1][0] * 6))


def test_trained_model_saves_loads_and_scores_the_same(trained, objects_tiny, tmp_path):
    # What train_and_evaluate did: accuracy, saving, loading (measure_speed: test_predict).
    learn, _ = trained
    acc = validation_accuracy(learn)
    assert 0 <= acc <= 1 and acc * 6 == pytest.approx(round(acc * 6))
    predictor = load_model(save_model(learn, tmp_path / "model"))
    assert predictor.spec == learn.spec
    valid = sorted(p for p in (objects_tiny / "valid").rglob("*.jpg") if p.parent.name != "tool")
    y_true = [CLASSES.index(p.parent.name) for p in valid]
    assert accuracy(np.array(y_true), predictor.predict_proba(valid)) == pytest.approx(acc)


def test_train_refuses_a_bad_folder_before_building_a_network(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data folder not found"):
        train(tmp_path / "missing", ModelSpec(im_size=64), TrainConfig(epochs_head=1))


# --- faster training on this hardware ---------------------------------------------------------


cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU path (on CUDA fast_training is fastai's to_fp16)"
)


@cpu_only
def test_fast_training_fits_and_can_be_removed(make_dls, objects_tiny, tiny_spec):
    from fastai.vision.all import set_seed

    set_seed(0)
    learn = create_learner(make_dls(objects_tiny), tiny_spec)
    assert fast_training(learn, bf16=cpu_has_fast_bf16()) is learn
    cb = next(c for c in learn.cbs if isinstance(c, FastTraining))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.losses[-1].item())
    assert not torch.is_autocast_enabled("cpu")  # the autocast is closed after every batch
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert next(learn.model.parameters()).dtype == torch.float32
    preds, _ = learn.get_preds()
    assert preds.dtype == torch.float32 and preds.shape == (8, 4)
    fit_head_cached(learn, 1, progress=False)  # the cached-feature recipe runs too
    learn.remove_cbs(FastTraining)
    assert cb not in learn.cbs


@cpu_only
def test_fast_training_defaults_to_fp32_channels_last(
    make_dls, objects_tiny, tiny_spec, monkeypatch
):
    learn = create_learner(make_dls(objects_tiny), tiny_spec)
    fast_training(learn)
    assert [c.bf16 for c in learn.cbs if isinstance(c, FastTraining)] == [False]
    # On a CPU without bf16 instructions (this one may have them: the probe is replaced).
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16 instructions"):
        fast_training(create_learner(make_dls(objects_tiny), tiny_spec), bf16=True)
