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


# Multi-label: true labels and scores of three images; threshold 0.5.
ML_TRUE = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]])
ML_SCORE = np.array(
    [
        [0.9, 0.6, 0.1, 0.2],  # apple, citrus: both right
        [0.7, 0.1, 0.8, 0.1],  # flower right, apple wrong
        [0.8, 0.2, 0.1, 0.3],  # apple right, tool missed
    ]
)


def test_multilabel_shows_every_label_above_the_threshold(images):
    widget = ResultsWidget(images[:3], ML_TRUE, ML_SCORE, CLASSES)
    assert widget.multilabel and widget.indices == [0, 1, 2]
    title = widget.title.value
    assert "true: <b>apple, citrus</b>" in title
    assert "color:green'>apple</b> (0.90)" in title and "color:green'>citrus</b> (0.60)" in title
    assert "color:red" not in title and "missed" not in title
    widget.next_button.click()
    title = widget.title.value
    # highest score first; a predicted label that is not true is red
    assert title.index(">flower</b> (0.80)") < title.index(">apple</b> (0.70)")
    assert "color:red'>apple</b>" in title and "color:green'>flower</b>" in title
    widget.next_button.click()
    assert "missed: <b style='color:red'>tool</b>" in widget.title.value
    # "correct" needs every label right
    widget.set_filter("correct")
    assert widget.indices == [0]
    widget.set_filter("wrong")
    assert widget.indices == [1, 2]
    # a higher threshold predicts fewer labels: image 0 then misses citrus
    strict = ResultsWidget(images[:3], ML_TRUE, ML_SCORE, CLASSES, threshold=0.65)
    assert "missed: <b style='color:red'>citrus</b>" in strict.title.value
    assert strict.indices == [0, 1, 2] and (strict.set_filter("correct") or strict.indices == [])


def test_multilabel_with_no_label_says_none(images):
    widget = ResultsWidget(images[:1], [[0, 0, 0, 0]], [[0.1, 0.2, 0.3, 0.4]], CLASSES)
    assert "true: <b>(none)</b>" in widget.title.value
    assert "predicted (&ge; 0.50): (none)" in widget.title.value


def test_multilabel_bad_shapes_and_threshold(images):
    with pytest.raises(ValueError, match=r"multi-label y_true should have the shape.*\(3, 4\)"):
        ResultsWidget(images[:3], ML_TRUE[:, :3], ML_SCORE, CLASSES)
    with pytest.raises(ValueError, match=r"y_score should have shape \(n, 4\)"):
        ResultsWidget(images[:3], ML_TRUE, ML_SCORE[:, :3], CLASSES)
    with pytest.raises(ValueError, match="threshold should be between 0 and 1"):
        ResultsWidget(images[:3], ML_TRUE, ML_SCORE, CLASSES, threshold=1.5)
    # single-label data (1-D y_true) ignores the threshold: the most probable class is shown
    single = ResultsWidget(images[:6], Y_TRUE, Y_SCORE, CLASSES, threshold=0.9)
    assert not single.multilabel and list(single.y_pred) == list(Y_SCORE.argmax(axis=1))


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


def send_frame(webcam, data: bytes) -> None:
    """What a frame from the browser does: a comm message (anywidget) or a recorded image."""
    if webcam.backend == "anywidget":
        webcam.camera._handle_message(webcam.camera, {"type": "frame"}, [memoryview(data)])
    else:
        webcam.recorder.image.value = data


@pytest.mark.parametrize("backend", ["anywidget", "ipywebrtc"])
def test_webcam_label_escapes_class_names(backend):
    webcam = WebcamClassifier(hostile_predictor([0.6, 0.3, 0.05, 0.05]), top_k=3, backend=backend)
    box = webcam.show()
    send_frame(webcam, jpeg_bytes())
    assert [p["label"] for p in webcam.predictions] == [IMG_TAG, BOLD_CLASS, "a&b"]
    assert_no_markup_from_user_data(box)
    assert "&lt;img src=x onerror=alert(1)&gt; (60.0%)" in webcam.label.value
    assert "&lt;b&gt;bold&lt;/b&gt; (30.0%), a&amp;b (5.0%)" in webcam.label.value


@pytest.mark.parametrize("backend", ["anywidget", "ipywebrtc"])
def test_webcam_shows_a_failed_frame_escaped(backend):
    class Failing(FixedPredictor):
        def run(self, x):
            raise RuntimeError(f"model broke on {IMG_TAG}")

    webcam = WebcamClassifier(Failing([1, 0, 0, 0]), backend=backend)
    send_frame(webcam, jpeg_bytes())  # the callback must not raise
    assert "Cannot classify this frame" in webcam.label.value
    assert "model broke on &lt;img" in webcam.label.value
    assert webcam.frames_classified == 0
    assert_no_markup_from_user_data(webcam.show())


def test_webcam_ipywebrtc_honours_its_width():
    webcam = WebcamClassifier(FixedPredictor([1, 0, 0, 0]), width=300, backend="ipywebrtc")
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


def test_webcam_honours_its_width():
    webcam = WebcamClassifier(FixedPredictor([1, 0, 0, 0]), width=300)
    box = webcam.show()
    assert webcam.backend == "anywidget"
    # The camera is asked for frames about that wide; its view fills layout.width (webcam.js).
    assert webcam.camera.frame_width == 300 and webcam.camera.layout.width == "300px"
    assert box.layout.width == "300px" and "utils-cv-webcam" in box._dom_classes
    assert box.children == (webcam.button, webcam.camera, webcam.label, webcam.status)
    assert WebcamClassifier(FixedPredictor([1, 0, 0, 0])).show().layout.width == "400px"


def test_webcam_start_stop_button_drives_the_camera():
    webcam = WebcamClassifier(FixedPredictor([0.1, 0.6, 0.2, 0.1]), top_k=1, interval_ms=100)
    assert not webcam.running and not webcam.camera.running
    assert webcam.button.description == "Start" and webcam.camera.interval_ms == 100
    webcam.button.value = True  # a click on Start
    assert webcam.camera.running and webcam.button.description == "Stop"
    for color in ("orange", "green", "blue"):
        send_frame(webcam, jpeg_bytes(color))
    assert webcam.frames_classified == 3
    assert webcam.status.value.startswith("3 frames classified (")
    assert webcam.label.value == "<b>citrus (60.0%)</b>"
    assert webcam.latest_frame().getpixel((24, 20))[2] > 200  # the last frame, blue
    webcam.stop()
    assert not webcam.camera.running and webcam.button.description == "Start"
    webcam.start()
    assert webcam.camera.running and webcam.frames_classified == 0  # counts restart


def test_webcam_reports_a_camera_the_browser_could_not_open():
    webcam = WebcamClassifier(FixedPredictor([1, 0, 0, 0]))
    webcam.start()
    # What webcam.js does when getUserMedia fails: an error text, and running switched off.
    webcam.camera.error = "NotAllowedError: Permission <denied>"
    webcam.camera.running = False
    assert not webcam.running and webcam.button.description == "Start"
    assert webcam.status.value == "Camera unavailable: NotAllowedError: Permission &lt;denied&gt;"


def test_webcam_ipywebrtc_asks_for_the_next_snapshot_while_running():
    webcam = WebcamClassifier(FixedPredictor([1, 0, 0, 0]), backend="ipywebrtc", interval_ms=0)
    webcam.start()
    assert webcam.recorder.recording  # the first snapshot is requested
    # What the browser does with a request: send the image, then set recording back to False.
    send_frame(webcam, jpeg_bytes())
    webcam.recorder.recording = False
    assert webcam.frames_classified == 1 and webcam.recorder.recording  # the next one
    webcam.stop()
    send_frame(webcam, jpeg_bytes("green"))
    webcam.recorder.recording = False
    assert webcam.frames_classified == 2 and not webcam.recorder.recording  # no more


def test_webcam_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        WebcamClassifier(FixedPredictor([1, 0, 0, 0]), backend="opencv")
    with pytest.raises(ValueError, match="interval_ms >= 0"):
        WebcamClassifier(FixedPredictor([1, 0, 0, 0]), interval_ms=-1)


def test_results_widget_accepts_non_string_class_names(images):
    widget = ResultsWidget(images[:2], [0, 1], Y_SCORE[:2], [3, 7, 8, 9])
    assert "true: <b>3</b>" in widget.title.value
