"""Notebook 12 with its default parameters: mining hard negatives must not add false positives."""

from __future__ import annotations

import pytest


@pytest.mark.integration
def test_12_hard_negative_sampling_defaults(run_notebook, tmp_path):
    # Defaults (objects + negatives, 40 cached head epochs, 2 rounds of 10 negatives) except
    # IM_SIZE 128 instead of the backbone's 224, to keep the run to a few minutes on 2 CPU cores.
    scraps = run_notebook(
        "12_hard_negative_sampling.ipynb", {"IM_SIZE": 128, "OUTPUT_DIR": str(tmp_path / "out")}
    )

    false_positives = scraps["round_false_positives"]  # held-out negatives called a positive class
    assert len(false_positives) == 3
    assert all(later <= earlier for earlier, later in zip(false_positives, false_positives[1:]))
    assert false_positives[-1] < false_positives[0]
    assert len(scraps["negative_sample_ids"]) == 20
    assert scraps["round_valid_accuracies"][-1] >= scraps["round_valid_accuracies"][0]
