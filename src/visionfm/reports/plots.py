"""Evaluation figures saved as PNG files (matplotlib, Agg canvas, no pyplot state).

Every function draws on its own :class:`matplotlib.figure.Figure` attached to an Agg canvas, so
nothing depends on the interactive backend or on pyplot's global figure list, and nothing needs
closing: the figure is cleared after saving and dropped. Each returns the saved PNG path. Files
are written atomically (temporary file, then rename).

Curves use the same definitions as :mod:`visionfm.metrics.classification` (``score >= threshold``
is positive; AUROC by ranks; AP on scores), so legend values match ``metrics.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from visionfm.errors import NothingToPlotError
from visionfm.io.atomic import atomic_path
from visionfm.metrics._common import as_numpy, default_names
from visionfm.metrics.classification import average_precision, binary_auroc, pr_points, roc_points

__all__ = [
    "NothingToPlotError",
    "plot_roc",
    "plot_pr",
    "plot_confusion_matrix",
    "plot_calibration",
    "plot_regression_scatter",
    "save_overlay",
]

_DPI = 120
# Colour-blind-safe qualitative palette (Okabe–Ito), cycled for many classes.
_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _colour(i: int) -> str:
    return _COLOURS[i % len(_COLOURS)]


def _figure(width: float, height: float) -> Figure:
    # constrained layout keeps titles, colour bars and the legends placed outside the axes from overlapping
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    fig.clear()
    return dest


def _binary_problems(
    y_true: Any, scores: Any, task: str, class_names: Sequence[str] | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The one-vs-rest problems behind per-class curves: ``(name, y in {0,1}, score)``."""
    s = as_numpy(scores, name="scores", dtype=np.float64)
    y = as_numpy(y_true, name="y_true")
    if task == "binary":
        if s.ndim == 2:
            s = s[:, -1]
        names = list(class_names) if class_names is not None else ["negative", "positive"]
        return [(names[-1], y.reshape(-1).astype(np.int64), s)]
    if task == "multiclass":
        c = s.shape[1]
        if y.ndim == 2 and y.shape[1] > 1:
            y = y.argmax(1)
        y = y.reshape(-1).astype(np.int64)
        names = default_names(class_names, c, "class", "class_names")
        return [(names[k], (y == k).astype(np.int64), s[:, k]) for k in range(c)]
    if task == "multilabel":
        yf = y.astype(np.float64)
        names = default_names(class_names, s.shape[1], "label", "class_names")
        out = []
        for j, name in enumerate(names):
            m = np.isfinite(yf[:, j]) & (yf[:, j] >= 0)
            out.append((name, yf[m, j].astype(np.int64), s[m, j]))
        return out
    raise ValueError(f"task={task!r}; expected binary, multiclass or multilabel")


def _outside_legend(fig: Figure, ax: Any) -> None:
    """The axes' legend below them, outside, so that it never covers a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=1 if len(handles) > 4 else 2, fontsize=8,
                   frameon=False)


def _finish_axes(fig: Figure, ax: Any, xlabel: str, ylabel: str, title: str | None) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    _outside_legend(fig, ax)


def plot_roc(
    y_true: Any,
    scores: Any,
    path: str | os.PathLike[str],
    task: str = "binary",
    class_names: Sequence[str] | None = None,
    title: str | None = "ROC curve",
) -> Path:
    """ROC curve(s): one per class / label (one-vs-rest) plus the macro-average curve.

    The legend gives each AUROC; classes whose AUROC is undefined are listed as ``n/a``. The
    macro curve averages TPR over a common FPR grid; its legend shows the mean of the per-class
    AUROCs (``auroc_macro``), not the area under the averaged curve.

    Raises:
        NothingToPlotError: when no class has both positives and negatives.
    """
    problems = _binary_problems(y_true, scores, task, class_names)
    fig = _figure(6.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    grid = np.linspace(0.0, 1.0, 501)
    tprs, aucs = [], []
    for i, (name, y, s) in enumerate(problems):
        auc = binary_auroc(y, s) if y.size else None
        if auc is None:
            ax.plot([], [], color=_colour(i), label=f"{name}: n/a (one class only)")
            continue
        fpr, tpr, _ = roc_points(y, s)
        ax.step(fpr, tpr, where="post", color=_colour(i), lw=1.6, label=f"{name}: AUROC {auc:.3f}")
        tprs.append(np.interp(grid, fpr, tpr))
        aucs.append(auc)
    if not aucs:
        fig.clear()
        raise NothingToPlotError("ROC undefined for every class (each has a single class in the ground truth)")
    if len(problems) > 1 and len(aucs) > 1:
        label = f"macro average: AUROC {np.mean(aucs):.3f}"
        ax.plot(grid, np.mean(tprs, 0), color="black", lw=2.2, ls="--", label=label)
    _finish_axes(fig, ax, "1 − specificity (false-positive rate)", "sensitivity (true-positive rate)", title)
    return _save(fig, path)


def plot_pr(
    y_true: Any,
    scores: Any,
    path: str | os.PathLike[str],
    task: str = "binary",
    class_names: Sequence[str] | None = None,
    title: str | None = "Precision–recall curve",
) -> Path:
    """Precision–recall curve(s) per class / label, plus the macro average (legend: average precision).

    For a single binary problem the prevalence (the precision of a random classifier) is drawn.

    Raises:
        NothingToPlotError: when no class has a positive sample.
    """
    problems = _binary_problems(y_true, scores, task, class_names)
    fig = _figure(6.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(0.0, 1.0, 501)
    precs, aps = [], []
    for i, (name, y, s) in enumerate(problems):
        ap = average_precision(y, s) if y.size else None
        if ap is None:
            ax.plot([], [], color=_colour(i), label=f"{name}: n/a (no positive case)")
            continue
        precision, recall, _ = pr_points(y, s)
        ax.step(recall, precision, where="post", color=_colour(i), lw=1.6, label=f"{name}: AP {ap:.3f}")
        # Interpolated precision (max precision at recall >= r) for the macro curve.
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        precs.append(np.interp(grid, recall, envelope))
        aps.append(ap)
        if len(problems) == 1:
            prev = float(np.mean(y))
            ax.axhline(prev, ls=":", color="grey", lw=1, label=f"prevalence {prev:.3f}")
    if not aps:
        fig.clear()
        raise NothingToPlotError("precision-recall undefined for every class (no positive case)")
    if len(problems) > 1 and len(aps) > 1:
        ax.plot(grid, np.mean(precs, 0), color="black", lw=2.2, ls="--", label=f"macro average: AP {np.mean(aps):.3f}")
    _finish_axes(fig, ax, "recall (sensitivity)", "precision (PPV)", title)
    return _save(fig, path)


def _matrix_panel(fig: Figure, ax: Any, values: np.ndarray, names: Sequence[str], fmt: str, title: str,
                  ylabel: bool = True) -> None:
    c = len(names)
    shown = np.where(np.isfinite(values), values, 0.0)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=max(float(shown.max()), 1e-12))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted class")
    if ylabel:  # the right-hand panel shares the rows; its label would crowd the left colour bar
        ax.set_ylabel("true class")
    ax.set_title(title)
    if c <= 20:
        top = float(shown.max()) if shown.size else 0.0
        for i in range(c):
            for j in range(c):
                v = values[i, j]
                text = "–" if not np.isfinite(v) else format(v, fmt)
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")


def plot_confusion_matrix(
    cm: Any,
    path: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    title: str | None = "Confusion matrix",
) -> Path:
    """Counts and row-normalised (per true class; rows sum to 1) confusion matrices side by side.

    Args:
        cm: ``[C, C]`` counts, rows = true class, columns = predicted class.
    """
    m = as_numpy(cm, name="confusion matrix", dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {tuple(m.shape)}")
    names = default_names(class_names, m.shape[0], "class", "class_names")
    rows = m.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, m / np.where(rows > 0, rows, 1.0), np.nan)
    side = max(4.5, 0.55 * len(names) + 2.5)
    fig = _figure(2 * side + 1.0, side)
    _matrix_panel(fig, fig.add_subplot(1, 2, 1), m, names, ".0f", "counts")
    _matrix_panel(fig, fig.add_subplot(1, 2, 2), norm, names, ".2f", "row-normalised (recall per class)",
                  ylabel=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_calibration(
    y_true: Any,
    scores: Any,
    path: str | os.PathLike[str],
    task: str = "binary",
    class_names: Sequence[str] | None = None,
    n_bins: int = 10,
    title: str | None = "Calibration (reliability diagram)",
) -> Path:
    """Observed frequency against mean predicted probability in ``n_bins`` equal-width bins.

    Binary and multilabel: one line per positive class / label. Multiclass: confidence of the
    predicted class against its accuracy. The lower panel is a histogram of the plotted scores.
    """
    fig = _figure(6.0, 7.5)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if task == "multiclass":
        s = as_numpy(scores, name="scores", dtype=np.float64)
        y = as_numpy(y_true, name="y_true")
        y = (y.argmax(1) if (y.ndim == 2 and y.shape[1] > 1) else y.reshape(-1)).astype(np.int64)
        series = [("top-1 confidence", (s.argmax(1) == y).astype(np.float64), s.max(1))]
    else:
        series = [(n, y.astype(np.float64), s) for n, y, s in _binary_problems(y_true, scores, task, class_names)]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    drawn = 0
    for i, (name, y, s) in enumerate(series):
        if s.size == 0:
            continue
        b = np.clip(np.digitize(s, edges[1:-1]), 0, n_bins - 1)
        cnt = np.bincount(b, minlength=n_bins)
        ok = cnt > 0
        mean_p = np.bincount(b, weights=s, minlength=n_bins)[ok] / cnt[ok]
        freq = np.bincount(b, weights=y, minlength=n_bins)[ok] / cnt[ok]
        ax.plot(mean_p, freq, marker="o", ms=4, color=_colour(i), lw=1.4, label=name)
        hist.hist(s, bins=edges, histtype="step", color=_colour(i), lw=1.2)
        drawn += 1
    if not drawn:
        fig.clear()
        raise NothingToPlotError("no score to draw a calibration curve from")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("observed frequency")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("count")
    _outside_legend(fig, ax)
    return _save(fig, path)


def plot_regression_scatter(
    y_true: Any,
    y_pred: Any,
    path: str | os.PathLike[str],
    target_names: Sequence[str] | None = None,
    max_columns: int = 5,
    title: str | None = "Predicted against measured",
) -> Path:
    """Small multiples: predicted vs measured per target, identity line, MAE and R² in each title.

    Samples with a NaN measurement are left out of that target's panel.
    """
    y = as_numpy(y_true, name="y_true", dtype=np.float64)
    p = as_numpy(y_pred, name="y_pred", dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"y_true and y_pred must both be [N, T]; got {tuple(y.shape)} and {tuple(p.shape)}")
    t = y.shape[1]
    names = default_names(target_names, t, "target", "target_names")
    cols = min(t, max(1, max_columns))
    rows = math.ceil(t / cols)
    fig = _figure(3.2 * cols, 3.2 * rows + (0.4 if title else 0.0))
    for j, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, j + 1)
        m = np.isfinite(y[:, j]) & np.isfinite(p[:, j])
        yj, pj = y[m, j], p[m, j]
        if yj.size == 0:
            ax.text(0.5, 0.5, "no measured value", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name, fontsize=9)
            continue
        lo = float(min(yj.min(), pj.min()))
        hi = float(max(yj.max(), pj.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls=":", color="grey", lw=1)
        ax.scatter(yj, pj, s=8, alpha=0.6, color=_colour(0), edgecolors="none")
        mae = float(np.mean(np.abs(pj - yj)))
        ss_tot = float(np.sum((yj - yj.mean()) ** 2))
        r2 = f"{1 - float(np.sum((pj - yj) ** 2)) / ss_tot:.3f}" if ss_tot > 0 else "n/a"
        ax.set_title(f"{name}\nMAE {mae:.3g}  R² {r2}", fontsize=9)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if j % cols == 0:
            ax.set_ylabel("predicted", fontsize=8)
        if j >= (rows - 1) * cols:
            ax.set_xlabel("measured", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


#: prediction fills per foreground class 1, 2, ... (Okabe-Ito blues, green and pink: visible on a red
#: fundus and on grey OCT) and ground-truth outlines (yellow, white, orange, ...: a different colour from
#: every fill, with a dark edge), so prediction and truth are told apart on thin vessels too.
_FILL_COLOURS = ["#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#999999"]
_TRUTH_COLOURS = ["#FFD400", "#FFFFFF", "#FF9F1C", "#F0E442", "#FFB3DE", "#B8FF5C"]
_FILL_ALPHA = 0.6
#: landmark markers: ground truth (hollow circle) and prediction (cross), told apart by colour and shape.
_TRUTH_POINT = "#FFD400"
_PRED_POINT = "#00D4FF"


def _fill_colour(c: int) -> str:
    return _FILL_COLOURS[(c - 1) % len(_FILL_COLOURS)]


def _truth_colour(c: int) -> str:
    return _TRUTH_COLOURS[(c - 1) % len(_TRUTH_COLOURS)]


def _class_name(class_names: Sequence[str] | None, c: int) -> str:
    return str(class_names[c]) if class_names is not None and c < len(class_names) else f"class {c}"


def save_overlay(
    image: Any,
    path: str | os.PathLike[str],
    pred_mask: Any = None,
    true_mask: Any = None,
    pred_points: Any = None,
    true_points: Any = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    landmark_names: Sequence[str] | None = None,
) -> Path:
    """An image with the predicted masks as translucent fills, the ground truth as outlines, and landmarks.

    Args:
        image: ``[H, W, 3]`` uint8 RGB (``[H, W]`` grey is accepted).
        pred_mask / true_mask: ``[H, W]`` integer label maps (0 = background). Prediction: a translucent
            fill in the class's colour; ground truth: an outline in a light tint of it with a dark edge,
            so both stay visible on thin vessels. Without ``true_mask`` (``predict``) the legend names
            only the prediction.
        pred_points / true_points: ``[K, 2]`` landmark coordinates as ``(x, y)`` = (column, row) in
            pixels of ``image``; ground truth as yellow circles, predictions as cyan crosses, joined by a
            thin line, each labelled with its name. NaN points are not drawn.
        class_names: legend names by label value (index 0 = background).
        landmark_names: one name per landmark (default ``landmark 1`` ... ``landmark K``).
    """
    from matplotlib import patheffects
    from matplotlib.patches import Patch

    img = as_numpy(image, name="image")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be [H, W, 3] uint8, got shape {tuple(img.shape)}")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    scale = 6.0 / max(h, w)
    fig = _figure(max(2.0, w * scale), max(2.0, h * scale) + 0.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, interpolation="antialiased")
    ax.set_axis_off()
    halo = [patheffects.withStroke(linewidth=2.6, foreground="black", alpha=0.8)]
    thin_halo = [patheffects.withStroke(linewidth=1.6, foreground="black", alpha=0.7)]
    handles: list[Any] = []

    def label_map(mask: Any, what: str) -> np.ndarray:
        m = as_numpy(mask, name=what).astype(np.int64)
        if m.shape != (h, w):
            raise ValueError(f"{what} shape {tuple(m.shape)} does not match image {(h, w)}")
        return m

    pm = label_map(pred_mask, "pred_mask") if pred_mask is not None else None
    tm = label_map(true_mask, "true_mask") if true_mask is not None else None
    pred_classes = [int(c) for c in np.unique(pm) if c > 0] if pm is not None else []
    true_classes = [int(c) for c in np.unique(tm) if c > 0] if tm is not None else []
    if pm is not None:
        from matplotlib.colors import to_rgb

        fill = np.zeros((h, w, 4))
        for c in pred_classes:
            fill[pm == c] = (*to_rgb(_fill_colour(c)), _FILL_ALPHA)
        ax.imshow(fill, interpolation="nearest")
    if tm is not None:
        for c in true_classes:
            binary = (tm == c).astype(np.float64)
            ax.contour(binary, levels=[0.5], colors=[_truth_colour(c)], linewidths=0.8,
                       linestyles="solid").set(path_effects=thin_halo)
    for c in sorted(set(pred_classes) | set(true_classes)):
        name = _class_name(class_names, c)
        if c in pred_classes:
            handles.append(Patch(facecolor=_fill_colour(c), alpha=_FILL_ALPHA + 0.2, edgecolor="none",
                                 label=f"prediction: {name} (fill)"))
        if c in true_classes:
            handles.append(Line2D([], [], color=_truth_colour(c), lw=1.6, path_effects=halo,
                                  label=f"ground truth: {name} (outline)"))
    if pm is not None and not pred_classes:
        handles.append(Patch(facecolor="none", edgecolor="grey", label="prediction: no foreground class"))
    if tm is not None and not true_classes:
        handles.append(Line2D([], [], color="grey", lw=1.0, label="ground truth: no foreground class"))

    tp = as_numpy(true_points, name="true_points", dtype=np.float64).reshape(-1, 2) if true_points is not None else None
    pp = as_numpy(pred_points, name="pred_points", dtype=np.float64).reshape(-1, 2) if pred_points is not None else None
    k = max(len(tp) if tp is not None else 0, len(pp) if pp is not None else 0)
    if landmark_names is not None and len(landmark_names) != k and k:
        raise ValueError(f"landmark_names has {len(landmark_names)} names for {k} landmarks")
    names = [str(n) for n in landmark_names] if landmark_names is not None else [f"landmark {i + 1}" for i in range(k)]
    if tp is not None and pp is not None and tp.shape == pp.shape:
        for (x0, y0), (x1, y1) in zip(tp, pp):
            if np.isfinite([x0, y0, x1, y1]).all():
                ax.plot([x0, x1], [y0, y1], color="white", lw=0.9, alpha=0.9, path_effects=halo)
    ms = 60
    if tp is not None:
        ok = np.isfinite(tp).all(1)
        ax.scatter(tp[ok, 0], tp[ok, 1], s=ms, facecolors="none", edgecolors=_TRUTH_POINT, linewidths=1.8,
                   path_effects=halo, zorder=3)
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec=_TRUTH_POINT, mew=1.8, ms=8,
                              path_effects=halo, label="landmark: ground truth"))
    if pp is not None:
        ok = np.isfinite(pp).all(1)
        ax.scatter(pp[ok, 0], pp[ok, 1], s=ms, marker="x", color=_PRED_POINT, linewidths=2.0, path_effects=halo,
                   zorder=4)
        handles.append(Line2D([], [], ls="", marker="x", color=_PRED_POINT, mew=2.0, ms=8, path_effects=halo,
                              label="landmark: prediction"))
    offset = 0.035 * max(h, w)
    for i, name in enumerate(names):
        # the name next to the predicted point (or the truth without one), on the side away from the other
        p_i = pp[i] if pp is not None and i < len(pp) and np.isfinite(pp[i]).all() else None
        t_i = tp[i] if tp is not None and i < len(tp) and np.isfinite(tp[i]).all() else None
        anchor = p_i if p_i is not None else t_i
        if anchor is None:
            continue
        away = anchor - t_i if (p_i is not None and t_i is not None) else np.zeros(2)
        norm = float(np.hypot(*away))
        away = away / norm if norm > 1e-6 else np.array([0.7071, -0.7071])
        if anchor[0] + away[0] * offset > 0.8 * w:  # keep the label inside the picture
            away[0] = -abs(away[0])
        x, y = anchor + away * offset
        ax.annotate(name, tuple(anchor), xytext=(x, y), fontsize=8, color="white",
                    ha="left" if away[0] >= 0 else "right", va="bottom" if away[1] <= 0 else "top",
                    path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")], zorder=5)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if handles:
        # below the image, so that no part of the image (or a landmark) is hidden by the legend
        fig.legend(handles=handles, loc="outside lower center", ncol=min(2, len(handles)), fontsize=8,
                   frameon=False, handlelength=2.2)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
