"""ResultsWidget driven from code: filters, navigation, what it shows."""

from __future__ import annotations

import numpy as np
import pytest

from utils_cv.classification.widget import ResultsWidget

CLASSES = ["apple", "citrus", "flower", "tool"]
# Six validation images; predictions (argmax) 0, 1, 1, 1, 2, 0 -> right: 0, 2, 3, 4; wrong: 1, 5.
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_SCORE = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],
        [0.3, 0.6, 0.05, 0.05],
        [0.1, 0.8, 0.05, 0.05],
        [0.2, 0.5, 0.2, 0.1],
        [0.1, 0.1, 0.7, 0.1],
        [0.4, 0.3, 0.2, 0.1],
    ]
)


@pytest.fixture
def images(tiny_valid_images):
    """apple_0031, apple_0032, citrus_0031, citrus_0032, flower_0031, flower_0032."""
    return tiny_valid_images[:6]


@pytest.fixture
def widget(images):
    return ResultsWidget(images, Y_TRUE, Y_SCORE, CLASSES, im_width=100)


def test_filters_match_the_arrays(widget):
    correct = Y_SCORE.argmax(axis=1) == Y_TRUE
    assert widget.filter == "all" and widget.indices == list(range(6))
    widget.set_filter("correct")
    assert widget.indices == list(np.flatnonzero(correct)) == [0, 2, 3, 4]
    widget.set_filter("wrong")
    assert widget.indices == list(np.flatnonzero(~correct)) == [1, 5]


def test_shows_the_current_image_and_its_labels(widget, images):
    assert widget.current == 0
    assert widget.image.value[:2] == b"\xff\xd8"  # a JPEG
    title = widget.title.value
    assert "1 / 6" in title and images[0].name in title
    assert "true: <b>apple</b>" in title and ">apple</b>" in title and "green" in title
    assert widget.scores.value.split("<br>")[0] == "apple: 0.700"
    assert len(widget.scores.value.split("<br>")) == 4
    widget.next_button.click()
    title = widget.title.value
    assert "2 / 6" in title and images[1].name in title
    assert "true: <b>apple</b>" in title and ">citrus</b>" in title and "red" in title


def test_next_and_previous_wrap_around(widget):
    widget.set_filter("wrong")
    assert widget.current == 1
    widget.next_button.click()
    assert widget.current == 5
    widget.next_button.click()
    assert widget.current == 1  # wrapped to the first
    widget.previous_button.click()
    assert widget.current == 5  # wrapped to the last
    widget.set_filter("all")
    widget.previous_button.click()
    assert widget.current == 5 and "6 / 6" in widget.title.value


def test_dropdown_sets_the_filter_and_restarts(widget, images):
    widget.next_button.click()
    widget.next_button.click()
    widget.filter_dropdown.value = "correct"
    assert widget.filter == "correct" and widget.position == 0 and widget.current == 0
    assert "1 / 4" in widget.title.value
    widget.filter_dropdown.value = "wrong"
    assert "1 / 2" in widget.title.value and images[1].name in widget.title.value


def test_empty_filter_says_so(images):
    perfect = np.eye(4)[Y_TRUE]
    widget = ResultsWidget(images, Y_TRUE, perfect, CLASSES)
    widget.set_filter("wrong")
    assert widget.indices == [] and widget.current is None
    assert widget.title.value == "<b>No wrong predictions.</b>"
    assert widget.scores.value == "" and widget.image.value == b""
    widget.next_button.click()  # nothing to move to; no error
    assert widget.current is None


def test_show_returns_the_widget_box(widget):
    import ipywidgets

    box = widget.show()
    assert isinstance(box, ipywidgets.VBox)
    assert widget.next_button in box.children[0].children


def test_mismatched_lengths_and_bad_filter(images, widget):
    with pytest.raises(ValueError, match="im_paths, y_true and y_score must have the same length"):
        ResultsWidget(images[:5], Y_TRUE, Y_SCORE, CLASSES)
    with pytest.raises(ValueError, match="filter must be 'all', 'correct' or 'wrong'"):
        widget.set_filter("right")
