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
    """Browse images with their true and predicted labels.

    im_paths : image files; y_true : class indices (n,); y_score : probabilities (n, n_classes);
    classes : class names. ``show()`` returns the widget. ``filter`` is "all", "correct" or
    "wrong"; ``next_button``/``previous_button``/``filter_dropdown`` can be driven from code.
    """

    def __init__(
        self, im_paths: Sequence, y_true, y_score, classes: Sequence[str], im_width: int = 300
    ):
        self.im_paths = [Path(p) for p in im_paths]
        self.y_true = np.asarray(y_true).astype(int)
        self.y_score = np.asarray(y_score)
        self.classes = list(classes)
        if not (len(self.im_paths) == len(self.y_true) == len(self.y_score)):
            raise ValueError("im_paths, y_true and y_score must have the same length.")
        self.y_pred = self.y_score.argmax(axis=1)
        self.im_width = im_width
        self.position = 0
        self._build()
        self.set_filter("all")

    @property
    def indices(self) -> list[int]:
        """Indices of the images the current filter shows."""
        correct = self.y_pred == self.y_true
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
        controls = widgets.HBox([self.previous_button, self.next_button, self.filter_dropdown])
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
            self.image.value = self._jpeg(self.im_paths[i])
        except Exception as e:  # unreadable image: say so and keep the widget usable
            self.image.value = b""
            position += f"<br>cannot show image: {escape(str(e))}"
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

    def _jpeg(self, path: Path) -> bytes:
        """JPEG bytes of the image at ``path``, at most twice ``im_width`` on its longer side."""
        im = load_rgb(path)
        im.thumbnail((self.im_width * 2, self.im_width * 2))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def show(self):
        """The widget box, for display in a notebook."""
        return self.box
