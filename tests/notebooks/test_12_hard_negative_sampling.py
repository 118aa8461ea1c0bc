"""Notebook 12: hard negative mining on the tiny sample sets (64 px, 1 head epoch per round)."""

from __future__ import annotations

import pytest

from utils_cv.classification.data import get_image_files, sample_data_path
from utils_cv.classification.hard_negatives import split_negatives

NOTEBOOK = "12_hard_negative_sampling.ipynb"
ROUNDS, NEGATIVE_NUM, NEGATIVE_INITIAL_NUM, NEGATIVE_VALID_PCT, SEED = 2, 2, 2, 0.3, 42


def _is_fraction(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


@pytest.mark.notebooks
def test_12_hard_negative_sampling(run_notebook, tmp_path):
    negative_files = get_image_files(sample_data_path("negatives_tiny"))
    shipped_before = [(p, p.stat().st_size) for p in get_image_files(sample_data_path())]
    output_dir = tmp_path / "output"

    scraps = run_notebook(
        NOTEBOOK,
        {
            "DATA_PATH": str(sample_data_path("objects_tiny")),
            "NEGATIVE_PATH": str(sample_data_path("negatives_tiny")),
            "IM_SIZE": 64,
            "EPOCHS_HEAD": 1,
            "EPOCHS": 0,
            "BATCH_SIZE": 8,
            "NEGATIVE_NUM": NEGATIVE_NUM,
            "ROUNDS": ROUNDS,
            "NEGATIVE_INITIAL_NUM": NEGATIVE_INITIAL_NUM,
            "NEGATIVE_VALID_PCT": NEGATIVE_VALID_PCT,
            "SEED": SEED,
            "OUTPUT_DIR": str(output_dir),
        },
    )

    for name in ("train_acc", "valid_acc"):  # one row per epoch of the last round
        assert len(scraps[name]) == 1 and all(map(_is_fraction, scraps[name]))
    accuracies, false_positives = scraps["round_valid_accuracies"], scraps["round_false_positives"]
    assert len(accuracies) == len(false_positives) == ROUNDS + 1
    assert all(map(_is_fraction, accuracies))
    n_valid = scraps["num_valid_negatives"]
    assert n_valid == 3
    assert all(isinstance(n, int) and 0 <= n <= n_valid for n in false_positives)

    # Mined ids are file names from the mining pool, never held-out or initial negatives.
    ids = scraps["negative_sample_ids"]
    split = split_negatives(negative_files, NEGATIVE_INITIAL_NUM, NEGATIVE_VALID_PCT, SEED)
    assert all(isinstance(i, str) for i in ids)
    assert len(set(ids)) == len(ids) <= ROUNDS * NEGATIVE_NUM
    assert set(ids) <= {p.name for p in split.pool}
    assert set(ids) <= {p.name for p in negative_files}

    # Mined images were copied into the working set; the shipped data is unchanged.
    train_negatives = {p.name for p in get_image_files(output_dir / "data" / "train" / "negative")}
    assert train_negatives == {p.name for p in split.initial} | set(ids)
    assert get_image_files(sample_data_path("negatives_tiny")) == negative_files
    assert [(p, p.stat().st_size) for p in get_image_files(sample_data_path())] == shipped_before
