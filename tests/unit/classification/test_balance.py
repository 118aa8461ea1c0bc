"""TrainConfig.balance: class weights in the loss or balanced sampling for imbalanced data.

Real tiny trainings at 64 px on a 4:4:1:1 set built from objects_tiny (one flower and one tool
image kept for training; the validation folder untouched), no mocks: the rows a head step sees
are read from the targets its loss receives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from utils_cv.classification.data import get_dls
from utils_cv.classification.datacheck import check_dataset
from utils_cv.classification.sweeper import CONFIG_PARAMS, check_parameter
from utils_cv.classification.train import (
    BALANCE_MODES,
    ConfigError,
    TrainConfig,
    class_counts,
    class_weights,
    create_learner,
    extract_features,
    fit,
    fit_head_cached,
    fit_recipe,
    train,
    train_head,
)
from utils_cv.common.misc import set_random_seed

# 4:4:1:1 training images; batches of 5 cover all 10 (the training loader drops a last
# incomplete batch)
KEEP = {"apple": 4, "citrus": 4, "flower": 1, "tool": 1}
BATCH = 5
EXPECTED_WEIGHTS = [0.4, 0.4, 1.6, 1.6]  # 1/n normalised to mean 1: [1/4, 1/4, 1, 1] / 0.625


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread while these tests run: on a 2-core machine shared with other jobs, two
    threads made the tiny head steps 25x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def imbalanced(objects_tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imbalanced") / "objects"
    for label, n in KEEP.items():
        (root / "train" / label).mkdir(parents=True)
        for f in sorted((objects_tiny / "train" / label).glob("*.jpg"))[:n]:
            shutil.copy(f, root / "train" / label / f.name)
    shutil.copytree(objects_tiny / "valid", root / "valid")
    return root


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(epochs_head=3, batch_size=BATCH, seed=0).replace(**changes)


def head_state(learn) -> dict:
    return {k: v.detach().clone() for k, v in learn.model[1].state_dict().items()}


class TargetsSeen:
    """The learner's loss, recording the targets of every call (the rows a head step used)."""

    def __init__(self, loss):
        self.loss, self.targets = loss, []

    def __call__(self, out, y):
        self.targets.append(y.detach().cpu())
        return self.loss(out, y)

    def fractions(self, n_classes: int) -> np.ndarray:
        counts = torch.bincount(torch.cat(self.targets), minlength=n_classes).numpy()
        return counts / counts.sum()


# --- the field -------------------------------------------------------------------------------


def test_balance_is_off_by_default_and_takes_the_three_modes():
    assert TrainConfig().balance == "none" and BALANCE_MODES == ("none", "weights", "sampler")
    assert [TrainConfig(balance=m).balance for m in BALANCE_MODES] == list(BALANCE_MODES)


@pytest.mark.parametrize("value", ["Weights", "oversample", "", None, 1, True])
def test_invalid_balance_is_named_with_the_accepted_values(value):
    with pytest.raises(
        ConfigError,
        match=r"TrainConfig field 'balance': .* expected one of 'none', 'weights', 'sampler'",
    ):
        TrainConfig(balance=value)


def test_the_sweeper_sweeps_balance():
    assert "balance" in CONFIG_PARAMS
    assert check_parameter("balance", ["none", "weights", "none"]) == ["none", "weights"]
    with pytest.raises(ValueError, match="Sweep parameter 'balance': 'both' is not valid"):
        check_parameter("balance", "both")


def test_class_weights_are_inverse_frequencies_with_mean_one():
    weights = class_weights([4, 4, 1, 1])
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, torch.tensor(EXPECTED_WEIGHTS))
    # a class without training images keeps weight 1; the others have mean 1
    assert torch.allclose(class_weights([2, 0, 6]), torch.tensor([1.5, 1.0, 0.5]))


# --- weights ---------------------------------------------------------------------------------


def test_weights_put_inverse_class_frequencies_in_the_loss(imbalanced, tiny_spec):
    learn = train(imbalanced, tiny_spec, tiny_config(balance="weights"), progress=False)
    assert class_counts(learn.dls).tolist() == list(KEEP.values())
    weight = learn.loss_func.func.weight
    assert torch.allclose(weight.cpu(), torch.tensor(EXPECTED_WEIGHTS))


# --- sampler ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features(imbalanced, tiny_spec):
    """A learner on the imbalanced set and its training features (2 passes: 8:8:2:2 rows)."""
    set_random_seed(0)
    dls = get_dls(imbalanced, tiny_spec, batch_size=BATCH, num_workers=0)
    learn = create_learner(dls, tiny_spec, record_train_metrics=False)
    x, y = extract_features(learn, dls.train, passes=2)
    assert torch.bincount(y).tolist() == [8, 8, 2, 2]
    return learn, x, y, head_state(learn)


@pytest.mark.parametrize("balance, expected", [("sampler", 0.25), ("none", None)])
def test_sampler_draws_every_class_about_equally(features, balance, expected):
    learn, x, y, start = features
    learn.model[1].load_state_dict(start)
    loss = learn.loss_func
    seen = learn.loss_func = TargetsSeen(loss)
    try:
        torch.manual_seed(0)
        train_head(learn, x, y, epochs=60, batch_size=4, progress=False, balance=balance)
    finally:
        learn.loss_func = loss
    fractions = seen.fractions(4)
    assert len(torch.cat(seen.targets)) == 60 * 5 * 4  # as many rows as without the sampler
    if expected is None:  # shuffling: each row once per epoch
        assert fractions.tolist() == [0.4, 0.4, 0.1, 0.1]
    else:
        assert np.abs(fractions - expected).max() < 0.04, fractions
        # the head's first batch norm then has the statistics of the rows as they are
        norm = learn.model[1][2]
        assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.training
        rows = x.flatten(1)  # (n, features, 1, 1) pooled features
        assert torch.allclose(norm.running_mean, rows.mean(0), atol=1e-5)
        assert torch.allclose(norm.running_var, rows.var(0), rtol=1e-4, atol=1e-5)


def test_sampler_balances_the_images_when_fine_tuning(imbalanced, tiny_spec):
    from fastai.callback.core import Callback

    class Seen(Callback):
        def before_fit(self):
            self.loaders, self.targets = set(), []

        def before_batch(self):
            if self.training:
                self.loaders.add(type(self.dl).__name__)
                self.targets += self.yb[0].tolist()

    set_random_seed(0)
    dls = get_dls(imbalanced, tiny_spec, batch_size=BATCH, num_workers=0)
    learn = create_learner(dls, tiny_spec, record_train_metrics=False)
    loader, seen = learn.dls.train, Seen()
    learn.add_cb(seen)
    fit_recipe(learn, tiny_config(epochs_head=0, epochs=4, balance="sampler"), progress=False)
    assert seen.loaders == {"WeightedDL"} and len(seen.targets) == 4 * 10
    assert learn.dls.train is loader  # restored afterwards
    # 40 draws from 10 images: the two single-image classes get far more than their 2 in 10
    minority = sum(t in (2, 3) for t in seen.targets) / len(seen.targets)
    assert minority > 0.3, seen.targets


# --- none: the recipe as it was --------------------------------------------------------------


def test_none_trains_exactly_as_the_recipe_without_balance(imbalanced, tiny_spec):
    config = tiny_config(epochs=1, label_smoothing=0.0)  # the manual steps below use none
    learn = train(imbalanced, tiny_spec, config.replace(balance="none"), progress=False)
    # the same steps as before the option existed, called without it
    set_random_seed(config.seed)
    dls = get_dls(
        imbalanced,
        tiny_spec,
        batch_size=config.batch_size,
        valid_pct=config.valid_pct,
        seed=config.seed,
        transform=config.transform,
    )
    old = create_learner(dls, tiny_spec, weight_decay=config.weight_decay)
    fit_head_cached(
        old, config.epochs_head, config.lr, config.aug_passes, config.weight_decay, False
    )
    with old.no_bar(), old.no_logging():
        fit(old, config.epochs, config.lr / config.body_lr_ratio)
    new_state, old_state = learn.model.state_dict(), old.model.state_dict()
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    assert learn.loss_func.func.weight is None and type(learn.dls.train).__name__ == "TfmdDL"
    # not vacuous: with class weights the same seed trains another head
    weighted = train(imbalanced, tiny_spec, config.replace(balance="weights"), progress=False)
    changed = head_state(weighted)
    assert any(not torch.equal(v, changed[k]) for k, v in head_state(learn).items())


# --- multi-label and the data check ----------------------------------------------------------


@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_multilabel_data_is_refused_with_a_clear_message(multilabel_tiny, make_dls, balance):
    learn = create_learner(make_dls(multilabel_tiny), record_train_metrics=False)
    state = head_state(learn)
    with pytest.raises(ConfigError, match=f"'balance': '{balance}' is for single-label data"):
        fit_recipe(learn, tiny_config(balance=balance), progress=False)
    multi_hot = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    with pytest.raises(ConfigError, match="single-label data only"):
        train_head(learn, torch.zeros(2, 8), multi_hot, epochs=1, progress=False, balance=balance)
    assert all(torch.equal(v, state[k]) for k, v in head_state(learn).items())  # not trained


def test_the_data_check_points_to_the_option(imbalanced):
    report = check_dataset(imbalanced, imbalance_ratio=3, progress=False, workers=1)
    notes = report.issues[report.issues["reason"] == "class_imbalance"]["detail"].tolist()
    assert len(notes) == 2 and all('TrainConfig(balance="weights")' in n for n in notes)
