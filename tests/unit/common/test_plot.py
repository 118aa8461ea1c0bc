"""utils_cv.common.plot, drawn with the Agg backend on real images."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as skdata  # noqa: E402

from utils_cv.common.image_io import load_rgb  # noqa: E402
from utils_cv.common.plot import line_graph, show_ims  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def im_paths(tmp_path):
    """Three real photos on disk: coffee (RGB PNG), camera (greyscale JPEG), chelsea (JPEG)."""
    paths = [tmp_path / "coffee.png", tmp_path / "camera.jpg", tmp_path / "chelsea.jpg"]
    for path, array in zip(paths, [skdata.coffee(), skdata.camera(), skdata.chelsea()]):
        Image.fromarray(array).save(path)
    return paths


def test_line_graph_several_series():
    train = [0.5, 0.7, 0.8, 0.85]
    valid = [0.4, 0.6, 0.75]
    fig = line_graph(
        [train, valid], ["train", "valid"], x_guides=[1, 2.5], x_name="epoch", y_name="accuracy"
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    curves = [ln for ln in ax.get_lines() if ln.get_label() in ("train", "valid")]
    assert [ln.get_label() for ln in curves] == ["train", "valid"]
    np.testing.assert_array_equal(curves[0].get_xdata(), [0, 1, 2, 3])
    np.testing.assert_array_equal(curves[0].get_ydata(), train)
    np.testing.assert_array_equal(curves[1].get_ydata(), valid)
    guides = [ln for ln in ax.get_lines() if ln not in curves]
    assert [ln.get_xdata()[0] for ln in guides] == [1, 2.5]
    assert all(ln.get_linestyle() == "--" for ln in guides)
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "accuracy"
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train", "valid"]
    assert legend._loc == 4  # "lower right"


def test_line_graph_single_series_and_label():
    fig = line_graph(np.array([3.0, 2.0, 1.0]), "loss", legend_loc="upper right")
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert line.get_label() == "loss"
    np.testing.assert_array_equal(line.get_ydata(), [3.0, 2.0, 1.0])
    assert ax.get_xlabel() == ""
    assert ax.get_legend()._loc == 1  # "upper right"


def test_line_graph_label_count_must_match():
    with pytest.raises(ValueError, match="2 series but 1 labels"):
        line_graph([[1, 2], [3, 4]], ["only one"])


def test_show_ims_grid(im_paths):
    fig = show_ims(im_paths, labels=["coffee", "camera", "cat"], size=2, rows=2)
    assert isinstance(fig, Figure)
    assert tuple(fig.get_size_inches()) == (4.0, 4.0)  # 2 columns x 2 rows of 2 inches
    assert len(fig.axes) == 4
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in shown] == ["coffee", "camera", "cat"]
    for ax, path in zip(shown, im_paths):
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), np.asarray(load_rgb(path)))
    np.testing.assert_array_equal(shown[0].get_images()[0].get_array(), skdata.coffee())
    assert shown[1].get_images()[0].get_array().shape == (512, 512, 3)  # greyscale shown as RGB
    assert not any(ax.axison for ax in fig.axes)  # no ticks, spare cell blank


def test_show_ims_one_row_without_labels(im_paths):
    fig = show_ims(im_paths[:2])
    assert tuple(fig.get_size_inches()) == (6.0, 3.0)
    assert [ax.get_title() for ax in fig.axes] == ["", ""]
    fig.canvas.draw()  # renders without error


def test_show_ims_bad_arguments(im_paths):
    with pytest.raises(ValueError, match="No images"):
        show_ims([])
    with pytest.raises(ValueError, match="3 images but 1 labels"):
        show_ims(im_paths, labels=["a"])
    with pytest.raises(ValueError, match="rows"):
        show_ims(im_paths, rows=0)
