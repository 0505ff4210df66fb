"""Figures: overlay legends and colours, landmark names, legends outside the curves, no overlapping titles."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from visionfm.reports import plots


@pytest.fixture
def figures(monkeypatch):
    """The figures that ``plots`` saves (drawn, so text positions are final), still saved to disk."""
    from pathlib import Path

    kept = []

    def keep(fig, path):  # plots._save without its fig.clear(), so the test can read the figure
        fig.savefig(path, format="png", dpi=plots._DPI, facecolor="white")
        kept.append((fig, fig.canvas.get_renderer()))
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def _image_and_masks():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (48, 64, 3), dtype=np.uint8)
    truth = np.zeros((48, 64), np.int64)
    truth[10:12, 5:60] = 1  # a thin "vessel", 2 px wide
    truth[25:40, 20:35] = 2
    pred = np.zeros_like(truth)
    pred[11:13, 5:60] = 1
    return img, truth, pred


def test_segmentation_overlay_truth_outline_and_prediction_fill_differ(tmp_path, figures):
    img, truth, pred = _image_and_masks()
    plots.save_overlay(img, tmp_path / "o.png", pred_mask=pred, true_mask=truth,
                       class_names=["background", "vessel", "optic disc"])
    fig, _ = figures[0]
    texts = _legend_texts(fig)
    assert "prediction: vessel (fill)" in texts and "ground truth: vessel (outline)" in texts
    assert "ground truth: optic disc (outline)" in texts  # a class missed by the prediction is still listed
    ax = fig.axes[0]
    fill = ax.get_images()[1].get_array()
    fill_rgb = tuple(np.asarray(fill[11, 30, :3]).round(3))
    outline = [tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in ax.collections if len(c.get_edgecolor())]
    assert fill[11, 30, 3] == pytest.approx(plots._FILL_ALPHA) and fill[30, 30, 3] == 0  # translucent, only there
    assert outline and all(np.abs(np.subtract(o, fill_rgb)).max() > 0.3 for o in outline)  # other colours
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_predict_overlay_legend_names_only_the_prediction(tmp_path, figures):
    img, _, pred = _image_and_masks()
    plots.save_overlay(img, tmp_path / "p.png", pred_mask=pred, class_names=["background", "vessel"])
    texts = _legend_texts(figures[0][0])
    assert texts == ["prediction: vessel (fill)"]
    assert not any("truth" in t for t in texts)
    plots.save_overlay(img, tmp_path / "e.png", pred_mask=np.zeros_like(pred), class_names=["background", "vessel"])
    assert _legend_texts(figures[1][0]) == ["prediction: no foreground class"]


def test_landmarks_are_named_with_distinct_truth_and_prediction_markers(tmp_path, figures):
    img, _, _ = _image_and_masks()
    truth = np.array([[10.0, 10.0], [50.0, 30.0]])
    pred = truth + 3
    plots.save_overlay(img, tmp_path / "l.png", pred_points=pred, true_points=truth, landmark_names=["fovea", "disc"])
    fig, _ = figures[0]
    annotations = [t.get_text() for t in fig.axes[0].texts]
    assert annotations == ["fovea", "disc"]
    texts = _legend_texts(fig)
    assert texts == ["landmark: ground truth", "landmark: prediction"]
    assert to_rgb(plots._TRUTH_POINT) != to_rgb(plots._PRED_POINT)
    plots.save_overlay(img, tmp_path / "d.png", pred_points=pred)
    assert [t.get_text() for t in figures[1][0].axes[0].texts] == ["landmark 1", "landmark 2"]
    assert _legend_texts(figures[1][0]) == ["landmark: prediction"]
    with pytest.raises(ValueError, match="landmark_names has 1 names for 2 landmarks"):
        plots.save_overlay(img, tmp_path / "x.png", pred_points=pred, landmark_names=["fovea"])


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _curves(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    s = rng.random((120, 3))
    s[np.arange(120), y] += 0.6
    return y, s / s.sum(1, keepdims=True)


@pytest.mark.parametrize("fn", [plots.plot_pr, plots.plot_roc, plots.plot_calibration])
def test_curve_legends_sit_outside_the_axes(tmp_path, figures, fn):
    y, s = _curves()
    fn(y, s, tmp_path / "c.png", task="multiclass", class_names=["normal", "diabetic retinopathy", "amd"])
    fig, renderer = figures[0]
    assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
    legend_box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not _overlaps(legend_box, ax.get_window_extent(renderer)), fn.__name__


@pytest.mark.parametrize("which", ["confusion", "scatter", "overlay"])
def test_titles_do_not_overlap_panels(tmp_path, figures, which):
    if which == "confusion":
        plots.plot_confusion_matrix(np.array([[5, 1], [2, 7]]), tmp_path / "m.png", ["a", "b"])
    elif which == "scatter":
        rng = np.random.default_rng(0)
        y = rng.random((40, 3))
        plots.plot_regression_scatter(y, y + 0.05, tmp_path / "s.png", ["a [mm]", "b", "c"])
    else:
        img, truth, pred = _image_and_masks()
        plots.save_overlay(img, tmp_path / "o.png", pred_mask=pred, true_mask=truth, title="a.png")
    fig, renderer = figures[0]
    title = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        boxes = [ax.get_window_extent(renderer), ax.title.get_window_extent(renderer)]
        assert not any(_overlaps(title, b) for b in boxes if b.width > 0), which
