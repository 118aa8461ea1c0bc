"""Classify webcam frames in a notebook (ipywebrtc), with a fallback when there is no camera."""

from __future__ import annotations

import io
from html import escape

import ipywidgets as widgets
from PIL import Image

from utils_cv.classification.predict import Predictor

# CSS class of the box holding the stream, the snapshot and the label (see WEBCAM_STYLE).
WEBCAM_CLASS = "utils-cv-webcam"
# ipywebrtc's CameraStream view appends a bare <video> to its element, which shows at the
# stream's own size (640 px) whatever the widget's layout.width says (seen in JupyterLab 4 and
# Notebook 7). So the widget's width is honoured in two ways: the camera is asked for frames
# about that wide (getUserMedia constraint ``width: {ideal: ...}``, which never fails, only
# guides), and this rule makes the video (and the recorder's snapshot) fill the width of the
# box, whose layout.width is set, whatever frame size the camera actually delivers. The rule
# is static text (no user data) and only matches inside boxes with WEBCAM_CLASS.
WEBCAM_STYLE = (
    "<style>"
    f".{WEBCAM_CLASS} video {{ width: 100%; height: auto; }}"
    f".{WEBCAM_CLASS} img {{ max-width: 100%; height: auto; }}"
    "</style>"
)


def format_predictions(predictions: list[dict]) -> str:
    """'espresso (90.2%), cup (3.1%)' from a list of {"label", "probability"} dicts.

    Plain text: escape it (``html.escape``) before putting it into HTML.
    """
    return ", ".join(f"{p['label']} ({p['probability']:.1%})" for p in predictions)


class WebcamClassifier:
    """A camera stream, a 'capture' recorder and a label showing the classifier's top classes.

    Every frame the recorder captures (click its record button in the browser) is classified and
    the label updated. Without a browser or a camera no frame ever arrives: ``latest_frame()``
    stays None, and callers fall back to a still image (see notebook 00).

    Parameters
    ----------
    classifier : any ``Predictor``; its class names are shown escaped, as text.
    top_k : number of classes shown.
    width : width in pixels of the displayed video, snapshot and label.
    """

    def __init__(self, classifier: Predictor, top_k: int = 3, width: int = 400):
        from ipywebrtc import CameraStream, ImageRecorder

        self.classifier, self.top_k, self.width = classifier, top_k, int(width)
        self.camera = CameraStream.facing_user(
            audio=False, constraints={"video": {"width": {"ideal": self.width}}}
        )
        self.camera.layout.width = f"{self.width}px"
        self.recorder = ImageRecorder(stream=self.camera, format="jpeg")
        self.label = widgets.HTML(
            value="Click the camera icon below the stream to classify a frame."
        )
        # The style rule takes no room: a <style> applies even inside a display: none element.
        style = widgets.HTML(WEBCAM_STYLE, layout=widgets.Layout(display="none"))
        self.box = widgets.VBox(
            [style, self.camera, self.recorder, self.label],
            layout=widgets.Layout(width=f"{self.width}px"),
        )
        self.box.add_class(WEBCAM_CLASS)
        self.predictions: list[dict] = []
        self.recorder.image.observe(self._on_frame, names="value")

    def latest_frame(self) -> Image.Image | None:
        """The last captured frame as an RGB PIL image, or None when nothing was captured."""
        data = self.recorder.image.value
        if not data:
            return None
        return Image.open(io.BytesIO(data)).convert("RGB")

    def classify(self, im: Image.Image) -> list[dict]:
        """Classify ``im``, show the result in the label and return the predictions."""
        self.predictions = self.classifier.predict([im], top_k=self.top_k)[0]
        self.label.value = f"<b>{escape(format_predictions(self.predictions))}</b>"
        return self.predictions

    def _on_frame(self, change):
        """A frame arrived from the browser: classify it; show any error in the label (an
        exception here would only reach the browser's log)."""
        try:
            im = self.latest_frame()
            if im is not None:
                self.classify(im)
        except Exception as e:
            self.label.value = f"Cannot classify this frame: {escape(str(e))}"

    def show(self):
        """The widget: stream, recorder controls and the prediction label, ``width`` wide."""
        return self.box
