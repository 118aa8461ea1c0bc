"""Classify webcam frames live in a notebook, with a fallback when there is no camera.

Two camera front ends: ``"anywidget"`` (the default), our own small camera view (``webcam.js``)
loaded by the maintained ``anywidget`` package, and ``"ipywebrtc"`` (the unmaintained package
the seed used, kept as a fallback). FAQ.md says why; the browser tests (tests/browser/) run both.
"""

from __future__ import annotations

import io
import threading
import time
from html import escape
from pathlib import Path

import anywidget
import ipywidgets as widgets
import traitlets
from PIL import Image

from utils_cv.classification.predict import Predictor

BACKENDS = ("anywidget", "ipywebrtc")
# CSS class of the box holding button, stream, snapshot and label (see WEBCAM_STYLE).
WEBCAM_CLASS = "utils-cv-webcam"
# ipywebrtc's CameraStream view appends a bare <video> to its element, which shows at the
# stream's own size (640 px) whatever the widget's layout.width says (seen in JupyterLab 4 and
# Notebook 7). So the widget's width is honoured in two ways: the camera is asked for frames
# about that wide (getUserMedia constraint ``width: {ideal: ...}``, which never fails, only
# guides), and this rule makes the video (and the recorder's snapshot) fill the width of the
# box, whose layout.width is set, whatever frame size the camera actually delivers. The rule
# is static text (no user data) and only matches inside boxes with WEBCAM_CLASS. (Our own
# camera view sizes its video the same way by itself.)
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


class CameraWidget(anywidget.AnyWidget):
    """The browser's camera; while ``running``, a JPEG frame reaches the kernel every
    ``interval_ms`` milliseconds (the next one only after the previous one was handled).

    ``on_frame(callback)`` registers ``callback(jpeg_bytes)``; ``frame`` holds the last frame's
    bytes (None before the first). ``error`` is the browser's reason when the camera could not
    be opened (no camera, permission refused). The video fills the widget's ``layout.width``.
    """

    _esm = Path(__file__).with_name("webcam.js")
    running = traitlets.Bool(False).tag(sync=True)
    frame_width = traitlets.Int(400).tag(sync=True)  # pixels the camera is asked for (ideal)
    interval_ms = traitlets.Int(250).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.frame: bytes | None = None
        self._frame_callbacks: list = []
        self.on_msg(self._handle_message)

    def on_frame(self, callback) -> None:
        """Call ``callback(jpeg_bytes)`` for every frame the browser sends."""
        self._frame_callbacks.append(callback)

    def _handle_message(self, _widget, content, buffers) -> None:
        if not isinstance(content, dict) or content.get("type") != "frame" or not buffers:
            return
        try:
            self.frame = bytes(buffers[0])
            for callback in self._frame_callbacks:
                callback(self.frame)
        finally:
            self.send({"type": "done"})  # the browser may send the next frame


class WebcamClassifier:
    """A camera, a Start/Stop button and a label showing the classifier's top classes, live.

    After **Start** the frames are classified continuously (a few per second on a CPU, as fast
    as the classifier allows up to ``1000 / interval_ms``) and the label follows; ``status``
    counts them. Without a browser or a camera no frame ever arrives: ``latest_frame()`` stays
    None, and callers fall back to a still image (see notebook 00).

    Parameters
    ----------
    classifier : any ``Predictor``; its class names are shown escaped, as text.
    top_k : number of classes shown.
    width : width in pixels of the displayed video and label.
    backend : ``"anywidget"`` (our camera view) or ``"ipywebrtc"`` (the seed's widgets; its
        camera starts when shown, and Start/Stop then only switch the classification).
    interval_ms : the shortest time between two frames, in milliseconds.
    """

    def __init__(
        self,
        classifier: Predictor,
        top_k: int = 3,
        width: int = 400,
        backend: str = "anywidget",
        interval_ms: int = 250,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if int(width) <= 0 or int(interval_ms) < 0:
            raise ValueError(
                f"width must be > 0 and interval_ms >= 0, got width={width}, "
                f"interval_ms={interval_ms}"
            )
        self.classifier, self.top_k, self.width = classifier, top_k, int(width)
        self.backend = backend
        self.interval_ms = int(interval_ms)
        self.predictions: list[dict] = []
        self.frames_classified = 0
        self._started_at: float | None = None
        self.label = widgets.HTML(value="Click <b>Start</b> to classify what the camera sees.")
        self.status = widgets.HTML(value="")
        self.button = widgets.ToggleButton(
            value=False, description="Start", icon="play", tooltip="Start or stop the camera"
        )
        self.button.observe(self._on_button, names="value")
        children = [self.button]
        if backend == "anywidget":
            self.camera = CameraWidget(frame_width=self.width, interval_ms=self.interval_ms)
            self.camera.on_frame(self._on_jpeg)
            self.camera.observe(self._on_camera_error, names="error")
            self.camera.observe(self._on_camera_running, names="running")
            children.append(self.camera)
        else:
            from ipywebrtc import CameraStream, ImageRecorder

            self.camera = CameraStream.facing_user(
                audio=False, constraints={"video": {"width": {"ideal": self.width}}}
            )
            self.recorder = ImageRecorder(stream=self.camera, format="jpeg")
            self.recorder.image.observe(self._on_recorded, names="value")
            self.recorder.observe(self._on_recording, names="recording")
            self._requested_at = 0.0
            # The style rule takes no room: a <style> applies even inside a display: none element.
            style = widgets.HTML(WEBCAM_STYLE, layout=widgets.Layout(display="none"))
            children = [style, *children, self.camera, self.recorder]
        self.camera.layout.width = f"{self.width}px"
        self.box = widgets.VBox(
            [*children, self.label, self.status], layout=widgets.Layout(width=f"{self.width}px")
        )
        self.box.add_class(WEBCAM_CLASS)

    @property
    def running(self) -> bool:
        """Whether the camera is on and its frames are being classified."""
        return self.button.value

    def start(self) -> None:
        """Switch the camera on (as the Start button does)."""
        self.button.value = True

    def stop(self) -> None:
        """Switch the camera off (as the Stop button does)."""
        self.button.value = False

    def latest_frame(self) -> Image.Image | None:
        """The last frame received as an RGB PIL image, or None when none arrived."""
        data = self.camera.frame if self.backend == "anywidget" else self.recorder.image.value
        if not data:
            return None
        return Image.open(io.BytesIO(data)).convert("RGB")

    def classify(self, im: Image.Image) -> list[dict]:
        """Classify ``im``, show the result in the label and return the predictions."""
        self.predictions = self.classifier.predict([im], top_k=self.top_k)[0]
        self.label.value = f"<b>{escape(format_predictions(self.predictions))}</b>"
        return self.predictions

    def show(self):
        """The widget: Start/Stop button, camera and the prediction label, ``width`` wide."""
        return self.box

    # --- events --------------------------------------------------------------------------

    def _on_button(self, change) -> None:
        running = change["new"]
        self.button.description, self.button.icon = (
            ("Stop", "stop") if running else ("Start", "play")
        )
        if running:
            self.frames_classified, self._started_at = 0, time.monotonic()
            self.status.value = "Waiting for the camera ..."
        if self.backend == "anywidget":
            self.camera.running = running
        elif running:
            self._request_snapshot()

    def _on_camera_running(self, change) -> None:
        self.button.value = change["new"]  # the browser stopped it (no camera, refused)

    def _on_camera_error(self, change) -> None:
        if change["new"]:
            self.status.value = f"Camera unavailable: {escape(change['new'])}"

    def _on_recorded(self, change) -> None:
        self._on_jpeg(change["new"])

    def _on_recording(self, change) -> None:
        """ipywebrtc: the browser took the snapshot asked for (it sets ``recording`` back to
        False after sending the image); while running, ask for the next, ``interval_ms`` after
        the last request."""
        if change["new"] or not self.running:
            return
        wait = self.interval_ms / 1000 - (time.monotonic() - self._requested_at)
        if wait > 0:
            threading.Timer(wait, self._request_snapshot).start()
        else:
            self._request_snapshot()

    def _request_snapshot(self) -> None:
        if self.running:
            self._requested_at = time.monotonic()
            self.recorder.recording = True

    def _on_jpeg(self, data: bytes) -> None:
        """A frame arrived from the browser: classify it; show any error in the label (an
        exception here would only reach the browser's log)."""
        started = time.monotonic()
        try:
            if data:
                self.classify(Image.open(io.BytesIO(data)).convert("RGB"))
                self.frames_classified += 1
        except Exception as e:
            self.label.value = f"Cannot classify this frame: {escape(str(e))}"
            return
        if self._started_at is not None:
            now = time.monotonic()
            self.status.value = (
                f"{self.frames_classified} frames classified "
                f"({self.frames_classified / max(now - self._started_at, 1e-9):.1f} per second, "
                f"{1000 * (now - started):.0f} ms each)"
            )
