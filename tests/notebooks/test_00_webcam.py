"""Notebook 00 headless: no camera, so it classifies the still photo."""

import pytest

COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}


@pytest.mark.notebooks
def test_webcam_falls_back_to_photo_and_finds_coffee(run_notebook):
    scraps = run_notebook("00_webcam.ipynb", {"TOP_K": 2})
    assert scraps["predicted_label"] in COFFEE_CLASSES
    assert scraps["predicted_confidence"] > 0.5
