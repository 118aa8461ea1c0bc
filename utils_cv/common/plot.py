"""Matplotlib figures: training curves and image grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from utils_cv.common.image_io import load_rgb


def line_graph(
    values: Sequence[float] | Sequence[Sequence[float]],
    labels: str | Sequence[str],
    x_guides: Sequence[float] | None = None,
    x_name: str | None = None,
    y_name: str | None = None,
    legend_loc: str = "lower right",
) -> Figure:
    """Plot one or more series against their index, e.g. accuracy per epoch.

    Parameters
    ----------
    values : sequence of numbers, or sequence of such sequences
        One series, or several (they may differ in length); point ``i`` is drawn at x = ``i``.
    labels : str or sequence of str
        Legend label of each series.
    x_guides : sequence of float, optional
        x positions of dashed vertical guide lines (e.g. where a training stage starts).
    x_name, y_name : str, optional
        Axis titles.
    legend_loc : str
        Matplotlib legend location.

    Returns
    -------
    matplotlib.figure.Figure
        A new pyplot figure (shown by notebooks; ``plt.close(fig)`` to free it).
    """
    series = [values] if np.ndim(values[0]) == 0 else list(values)
    labels = [labels] if isinstance(labels, str) else list(labels)
    if len(labels) != len(series):
        raise ValueError(f"Got {len(series)} series but {len(labels)} labels")
    fig, ax = plt.subplots()
    for ys, label in zip(series, labels):
        ax.plot(np.arange(len(ys)), ys, label=label)
    for x in x_guides or []:
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
    if x_name:
        ax.set_xlabel(x_name)
    if y_name:
        ax.set_ylabel(y_name)
    ax.legend(loc=legend_loc)
    return fig


def show_ims(
    im_paths: Sequence[str | Path],
    labels: Sequence[str] | None = None,
    size: float = 3,
    rows: int = 1,
) -> Figure:
    """Show images in a grid, each with an optional title.

    Parameters
    ----------
    im_paths : sequence of str or Path
        Image files, drawn row by row (loaded as RGB with ``load_rgb``).
    labels : sequence of str, optional
        Title of each image.
    size : float
        Width and height of each grid cell, in inches.
    rows : int
        Number of grid rows; columns are as many as needed.

    Returns
    -------
    matplotlib.figure.Figure
        A new pyplot figure of ``columns * size`` by ``rows * size`` inches.
    """
    if not im_paths:
        raise ValueError("No images to show")
    if labels is not None and len(labels) != len(im_paths):
        raise ValueError(f"Got {len(im_paths)} images but {len(labels)} labels")
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    cols = math.ceil(len(im_paths) / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(im_paths):
            ax.imshow(load_rgb(im_paths[i]))
            if labels is not None:
                ax.set_title(labels[i])
    fig.tight_layout()
    return fig
