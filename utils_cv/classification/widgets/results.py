"""ResultsWidget: browse validation predictions in a notebook, filter correct or wrong ones.

File names and class names are user data: every one is passed through ``html.escape`` before it
goes into an HTML widget, so a class named ``<img src=x onerror=...>`` shows as text.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from html import escape
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from utils_cv.common.image_io import load_rgb


class ResultsWidget:
    """Browse images with their true and predicted labels, single- or multi-label.

    im_paths : image files; y_true : class indices (n,) for single-label data, or a 0/1 matrix
    (n, n_classes) for multi-label data; y_score : probabilities (n, n_classes); classes : class
    names; threshold : the probability from which a label is predicted, for multi-label data
    (default 0.5; single-label data ignores it and shows the most probable class). Single-label shows the predicted class; multi-label shows every label at or
    above the threshold with its score (green when true, red when not) and the true labels it
    missed; "correct" means all labels right. ``show()`` returns the widget. ``filter`` is
    "all", "correct" or "wrong"; ``next_button``/``previous_button``/``filter_dropdown`` can be
    driven from code.
    cam_model : a TorchPredictor or learner (``cam.class_activation_maps``): adds a
    ``cam_checkbox`` that shows the Grad-CAM of the predicted class over the image.
    """

    def __init__(
        self,
        im_paths: Sequence,
        y_true,
        y_score,
        classes: Sequence[str],
        im_width: int = 300,
        cam_model=None,
        threshold: float | None = None,
    ):
        self.im_paths = [Path(p) for p in im_paths]
        self.y_true = np.asarray(y_true).astype(int)
        self.y_score = np.asarray(y_score)
        self.classes = list(classes)
        if not (len(self.im_paths) == len(self.y_true) == len(self.y_score)):
            raise ValueError("im_paths, y_true and y_score must have the same length.")
        if self.y_score.ndim != 2 or self.y_score.shape[1] != len(self.classes):
            raise ValueError(
                f"y_score should have shape (n, {len(self.classes)}) (one column per class), "
                f"got {self.y_score.shape}."
            )
        self.multilabel = self.y_true.ndim == 2
        if self.multilabel and self.y_true.shape != self.y_score.shape:
            raise ValueError(
                f"multi-label y_true should have the shape of y_score {self.y_score.shape}, "
                f"got {self.y_true.shape}."
            )
        self.threshold = 0.5 if threshold is None else float(threshold)
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold should be between 0 and 1, got {threshold}.")
        if self.multilabel:
            self.y_pred = (self.y_score >= self.threshold).astype(int)
        else:
            self.y_pred = self.y_score.argmax(axis=1)
        self.im_width = im_width
        self.cam_model = cam_model
        self.position = 0
        self._build()
        self.set_filter("all")

    @property
    def indices(self) -> list[int]:
        """Indices of the images the current filter shows."""
        correct = self.y_pred == self.y_true
        if self.multilabel:
            correct = correct.all(axis=1)
        if self.filter == "correct":
            return list(np.flatnonzero(correct))
        if self.filter == "wrong":
            return list(np.flatnonzero(~correct))
        return list(range(len(self.im_paths)))

    def set_filter(self, value: str) -> None:
        if value not in ("all", "correct", "wrong"):
            raise ValueError("filter must be 'all', 'correct' or 'wrong'.")
        self.filter = value
        self.position = 0
        self._update()

    def _build(self):
        self.image = widgets.Image(format="jpeg", width=self.im_width)
        self.title = widgets.HTML()
        self.scores = widgets.HTML()
        self.previous_button = widgets.Button(description="previous")
        self.next_button = widgets.Button(description="next")
        self.filter_dropdown = widgets.Dropdown(
            options=["all", "correct", "wrong"], value="all", description="show"
        )
        self.previous_button.on_click(lambda _: self._step(-1))
        self.next_button.on_click(lambda _: self._step(1))
        self.filter_dropdown.observe(lambda change: self.set_filter(change["new"]), names="value")
        buttons = [self.previous_button, self.next_button, self.filter_dropdown]
        self.cam_checkbox = widgets.Checkbox(
            value=False,
            description="class activation map",
            disabled=self.cam_model is None,
            indent=False,
        )
        self.cam_checkbox.observe(lambda change: self._update(), names="value")
        if self.cam_model is not None:
            buttons.append(self.cam_checkbox)
        controls = widgets.HBox(buttons)
        self.box = widgets.VBox(
            [controls, widgets.HBox([self.image, widgets.VBox([self.title, self.scores])])]
        )

    def _step(self, delta: int):
        n = len(self.indices)
        if n:
            self.position = (self.position + delta) % n
        self._update()

    @property
    def current(self) -> int | None:
        """Index (into im_paths) of the image shown, None when the filter matches nothing."""
        indices = self.indices
        return indices[self.position] if indices else None

    def _update(self):
        i = self.current
        if i is None:
            self.title.value = f"<b>No {escape(self.filter)} predictions.</b>"
            self.scores.value = ""
            self.image.value = b""
            return
        name = escape(self.im_paths[i].name)
        position = f"<b>{self.position + 1} / {len(self.indices)}</b> {name}"
        try:
            if self.cam_model is not None and self.cam_checkbox.value:
                top_class = int(self.y_score[i].argmax())
                self.image.value = self._cam_jpeg(self.im_paths[i], top_class)
            else:
                self.image.value = self._jpeg(self.im_paths[i])
        except Exception as e:  # unreadable image: say so and keep the widget usable
            self.image.value = b""
            position += f"<br>cannot show image: {escape(str(e))}"
        if self.multilabel:
            self.title.value = f"{position}<br>{self._multilabel_text(i)}"
        else:
            ok = self.y_pred[i] == self.y_true[i]
            true_name = escape(str(self.classes[self.y_true[i]]))
            pred_name = escape(str(self.classes[self.y_pred[i]]))
            self.title.value = (
                f"{position}<br>true: <b>{true_name}</b>, predicted: "
                f"<b style='color:{'green' if ok else 'red'}'>{pred_name}</b>"
            )
        top = np.argsort(-self.y_score[i])[:5]
        self.scores.value = "<br>".join(
            f"{escape(str(self.classes[j]))}: {self.y_score[i, j]:.3f}" for j in top
        )

    def _multilabel_text(self, i: int) -> str:
        """HTML: true labels, predicted labels with scores (green right, red wrong), misses."""
        names = [escape(str(c)) for c in self.classes]
        true = [names[j] for j in np.flatnonzero(self.y_true[i])]
        order = np.argsort(-self.y_score[i])
        predicted = [
            f"<b style='color:{'green' if self.y_true[i, j] else 'red'}'>{names[j]}</b> "
            f"({self.y_score[i, j]:.2f})"
            for j in order
            if self.y_pred[i, j]
        ]
        missed = [names[j] for j in order if self.y_true[i, j] and not self.y_pred[i, j]]
        text = (
            f"true: <b>{', '.join(true) or '(none)'}</b><br>predicted "
            f"(&ge; {self.threshold:.2f}): {', '.join(predicted) or '(none)'}"
        )
        if missed:
            text += f"<br>missed: <b style='color:red'>{', '.join(missed)}</b>"
        return text

    def _jpeg(self, path: Path) -> bytes:
        """JPEG bytes of the image at ``path``, at most twice ``im_width`` on its longer side."""
        im = load_rgb(path)
        im.thumbnail((self.im_width * 2, self.im_width * 2))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def _cam_jpeg(self, path: Path, class_index: int) -> bytes:
        """JPEG bytes of the Grad-CAM of class ``class_index`` over the image at ``path``."""
        from utils_cv.classification.cam import class_activation_maps, model_view, overlay

        cams, _, _ = class_activation_maps(self.cam_model, [path], [class_index])
        im = overlay(model_view(self.cam_model.spec, load_rgb(path)), cams[0])
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def show(self):
        """The widget box, for display in a notebook."""
        return self.box
