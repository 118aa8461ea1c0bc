"""Classify webcam frames in a notebook (ipywebrtc), with a fallback when there is no camera."""

from __future__ import annotations

import io

import ipywidgets as widgets
from PIL import Image

from utils_cv.classification.predict import Predictor


def format_predictions(predictions: list[dict]) -> str:
    """'espresso (90.2%), cup (3.1%)' from a list of {"label", "probability"} dicts."""
    return ", ".join(f"{p['label']} ({p['probability']:.1%})" for p in predictions)


class WebcamClassifier:
    """A camera stream, a 'capture' recorder and a label showing the classifier's top classes.

    Every frame the recorder captures (click its record button in the browser) is classified and
    the label updated. Without a browser or a camera no frame ever arrives: ``latest_frame()``
    stays None, and callers fall back to a still image (see notebook 00).
    """

    def __init__(self, classifier: Predictor, top_k: int = 3, width: int = 400):
        from ipywebrtc import CameraStream, ImageRecorder

        self.classifier, self.top_k = classifier, top_k
        self.camera = CameraStream.facing_user(audio=False)
        self.recorder = ImageRecorder(stream=self.camera, format="jpeg")
        self.label = widgets.HTML(
            value="Click the camera icon below the stream to classify a frame."
        )
        self.camera.layout.width = f"{width}px"
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
        self.label.value = f"<b>{format_predictions(self.predictions)}</b>"
        return self.predictions

    def _on_frame(self, change):
        im = self.latest_frame()
        if im is not None:
            self.classify(im)

    def show(self):
        """The widget: stream, recorder controls and the prediction label."""
        return widgets.VBox([self.camera, self.recorder, self.label])
