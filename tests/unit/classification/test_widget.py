"""ResultsWidget and WebcamClassifier driven from code: filters, navigation, what they show."""

from __future__ import annotations

import numpy as np
import pytest
from widget_html import html_texts

from utils_cv.classification.predict import Predictor
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.widgets.results import ResultsWidget
from utils_cv.classification.widgets.webcam import WebcamClassifier, format_predictions

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


# --- webcam ---------------------------------------------------------------------------------


class FixedPredictor(Predictor):
    """A predictor whose probabilities are the same for every image (no network)."""

    def __init__(self, probs):
        super().__init__(ModelSpec(im_size=32, classes=CLASSES, multilabel=False))
        self.probs = np.asarray(probs, dtype=np.float32)

    def run(self, x):
        return np.tile(self.probs, (len(x), 1))


def test_format_predictions():
    predictions = [
        {"label": "espresso", "probability": 0.902},
        {"label": "cup", "probability": 0.031},
    ]
    assert format_predictions(predictions) == "espresso (90.2%), cup (3.1%)"
    assert format_predictions([]) == ""


def test_webcam_classifies_a_frame_with_any_predictor():
    from PIL import Image

    webcam = WebcamClassifier(FixedPredictor([0.1, 0.6, 0.2, 0.1]), top_k=2)
    assert webcam.latest_frame() is None  # headless: no frame ever arrives
    predictions = webcam.classify(Image.new("RGB", (48, 40), "orange"))
    assert [p["label"] for p in predictions] == ["citrus", "flower"]
    assert predictions[0]["probability"] == pytest.approx(0.6)
    assert webcam.label.value == "<b>citrus (60.0%), flower (20.0%)</b>"
    assert webcam.predictions == predictions


# --- hostile names: everything that goes into HTML is escaped -------------------------------

IMG_TAG = "<img src=x onerror=alert(1)>"
BOLD_CLASS = "<b>bold</b>"
HOSTILE_CLASSES = [IMG_TAG, BOLD_CLASS, "a&b", "tool"]


def assert_no_markup_from_user_data(widget):
    """No HTML the widget renders holds an unescaped tag from a file or class name."""
    for text in html_texts(widget):
        for raw in ("<img", "<b>bold", "<b>x", "a&b"):
            assert raw not in text, f"unescaped {raw!r} in {text!r}"


@pytest.fixture
def hostile_images(tmp_path, images):
    """Copies of two images under file names holding markup ('/' cannot be in a file name)."""
    import shutil

    paths = [tmp_path / f"{IMG_TAG}.jpg", tmp_path / "<b>x.jpg"]
    for src, dst in zip(images, paths):
        shutil.copy(src, dst)
    return paths


def test_results_widget_escapes_file_and_class_names(hostile_images):
    y_score = np.array([[0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]])
    widget = ResultsWidget(hostile_images, [0, 1], y_score, HOSTILE_CLASSES, im_width=50)
    box = widget.show()
    assert_no_markup_from_user_data(box)
    title = widget.title.value
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in title
    assert "true: <b>&lt;img src=x onerror=alert(1)&gt;</b>" in title  # our markup stays
    assert ">&lt;b&gt;bold&lt;/b&gt;</b>" in title
    assert widget.scores.value.split("<br>")[0] == "&lt;b&gt;bold&lt;/b&gt;: 0.700"
    widget.next_button.click()
    assert_no_markup_from_user_data(box)
    assert "&lt;b&gt;x.jpg" in widget.title.value and "a&amp;b" in widget.title.value
    widget.set_filter("correct")
    assert_no_markup_from_user_data(box)


def test_results_widget_shows_an_unreadable_image_escaped(tmp_path, images):
    broken = tmp_path / f"{IMG_TAG}.jpg"
    broken.write_bytes(b"not an image")
    widget = ResultsWidget([broken, images[0]], [0, 1], Y_SCORE[:2], HOSTILE_CLASSES)
    assert widget.image.value == b""
    assert "cannot show image" in widget.title.value
    assert_no_markup_from_user_data(widget.show())
    widget.next_button.click()  # still usable
    assert widget.current == 1 and widget.image.value[:2] == b"\xff\xd8"


def jpeg_bytes(color="orange") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def hostile_predictor(probs):
    predictor = FixedPredictor(probs)
    predictor.spec = ModelSpec(im_size=32, classes=HOSTILE_CLASSES, multilabel=False)
    return predictor


def test_webcam_label_escapes_class_names():
    webcam = WebcamClassifier(hostile_predictor([0.6, 0.3, 0.05, 0.05]), top_k=3)
    box = webcam.show()
    webcam.recorder.image.value = jpeg_bytes()  # a frame arrives from the browser
    assert [p["label"] for p in webcam.predictions] == [IMG_TAG, BOLD_CLASS, "a&b"]
    assert_no_markup_from_user_data(box)
    assert "&lt;img src=x onerror=alert(1)&gt; (60.0%)" in webcam.label.value
    assert "&lt;b&gt;bold&lt;/b&gt; (30.0%), a&amp;b (5.0%)" in webcam.label.value


def test_webcam_shows_a_failed_frame_escaped():
    class Failing(FixedPredictor):
        def run(self, x):
            raise RuntimeError(f"model broke on {IMG_TAG}")

    webcam = WebcamClassifier(Failing([1, 0, 0, 0]))
    webcam.recorder.image.value = jpeg_bytes()  # the callback must not raise
    assert "Cannot classify this frame" in webcam.label.value
    assert "model broke on &lt;img" in webcam.label.value
    assert_no_markup_from_user_data(webcam.show())


def test_webcam_honours_its_width():
    webcam = WebcamClassifier(FixedPredictor([1, 0, 0, 0]), width=300)
    box = webcam.show()
    # The camera is asked for frames about that wide ...
    assert webcam.camera.constraints["video"]["width"] == {"ideal": 300}
    assert webcam.camera.constraints["video"]["facingMode"] == "user"
    assert webcam.camera.constraints["audio"] is False
    # ... and the box holding stream, snapshot and label is that wide, with a style rule that
    # makes the <video> fill the box (the CameraStream view ignores its own layout.width).
    assert box.layout.width == "300px" and webcam.camera.layout.width == "300px"
    assert webcam.camera in box.children and webcam.label in box.children
    assert "utils-cv-webcam" in box._dom_classes
    styles = [t for t in html_texts(box) if "<style>" in t]
    assert len(styles) == 1
    assert ".utils-cv-webcam video" in styles[0] and "width: 100%" in styles[0]
    assert box.children[0].layout.display == "none"  # the rule takes no room
    assert WebcamClassifier(FixedPredictor([1, 0, 0, 0])).show().layout.width == "400px"


def test_results_widget_accepts_non_string_class_names(images):
    widget = ResultsWidget(images[:2], [0, 1], Y_SCORE[:2], [3, 7, 8, 9])
    assert "true: <b>3</b>" in widget.title.value
