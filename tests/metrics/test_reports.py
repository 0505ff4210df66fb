"""visionfm.reports: figures have real content, the HTML is self-contained, writes are atomic."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from visionfm.metrics import LandmarkMeter, SegmentationMeter, classification_metrics
from visionfm.reports import (
    NothingToPlotError,
    evaluate_classification_run,
    evaluate_regression_run,
    plot_calibration,
    plot_confusion_matrix,
    plot_pr,
    plot_regression_scatter,
    plot_roc,
    save_overlay,
    write_predictions_csv,
    write_report,
)


def _assert_real_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert float(pixels[..., :3].std()) > 0.02  # not a blank canvas


def _no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def _multiclass(n: int = 90, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    s = rng.dirichlet(np.ones(c), n)
    s[np.arange(n), y] += 0.6
    return y, s / s.sum(1, keepdims=True)


def test_curves_confusion_and_calibration(tmp_path):
    y, s = _multiclass()
    names = ["healthy", "mild", "severe"]
    for fn, name in ((plot_roc, "roc.png"), (plot_pr, "pr.png"), (plot_calibration, "cal.png")):
        _assert_real_png(fn(y, s, tmp_path / name, task="multiclass", class_names=names))
    yb = (y > 0).astype(int)
    _assert_real_png(plot_roc(yb, s[:, 1:].sum(1), tmp_path / "roc_bin.png"))
    _assert_real_png(plot_pr(yb, s[:, 1:].sum(1), tmp_path / "pr_bin.png"))
    ml = np.stack([yb, (y == 2).astype(int)], 1).astype(float)
    _assert_real_png(plot_roc(ml, np.stack([s[:, 1:].sum(1), s[:, 2]], 1), tmp_path / "roc_ml.png", task="multilabel"))
    cm = classification_metrics(y, s, "multiclass")["confusion_matrix"]
    _assert_real_png(plot_confusion_matrix(cm, tmp_path / "cm.png", names))
    with pytest.raises(NothingToPlotError):
        plot_roc(np.zeros(5, int), np.linspace(0, 1, 5), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    _no_temp_files(tmp_path)


def test_regression_scatter_and_overlay(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 3))
    pred = y + 0.3 * rng.normal(size=y.shape)
    _assert_real_png(plot_regression_scatter(y, pred, tmp_path / "sc.png", ["a", "b", "c"]))

    image = np.full((64, 64, 3), 40, dtype=np.uint8)
    truth = np.zeros((64, 64), int)
    truth[10:40, 10:40] = 1
    pred = np.zeros((64, 64), int)
    pred[14:44, 12:42] = 1
    path = save_overlay(
        image,
        tmp_path / "overlay.png",
        pred_mask=pred,
        true_mask=truth,
        pred_points=np.array([[20.0, 22.0], [50.0, 50.0]]),
        true_points=np.array([[21.0, 20.0], [np.nan, np.nan]]),
        class_names=["background", "optic disc"],
    )
    _assert_real_png(path)  # a flat grey image only has variance through the drawn overlays


def test_write_report_is_self_contained(tmp_path):
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    s = np.eye(4)[[0, 1, 2, 0, 2, 2, 1, 1]] * 0.7 + 0.075
    metrics = classification_metrics(y, s, "multiclass", class_names=["a", "b", "c", "d"])
    png = plot_roc(y, s, tmp_path / "roc.png", task="multiclass")
    report = write_report(
        tmp_path,
        "Test <report>",
        metrics,
        images={"ROC": png},
        tables={"Extra": [{"site": "A", "n": 3}, {"site": "B", "n": 5}]},
        meta={"checkpoint": "weights.pth", "epochs": 3},
    )
    text = report.read_text(encoding="utf-8")
    assert "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() in text
    for name in ("auroc_macro", "f1_macro", "quadratic_weighted_kappa", "balanced_accuracy", "weights.pth", "Extra"):
        assert name in text
    assert "n/a (class absent from ground truth)" in text
    assert "Test &lt;report&gt;" in text
    assert "<script" not in text and "<link" not in text and "http://" not in text and "https://" not in text
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["per_class"]["d"]["auroc"] is None
    _no_temp_files(tmp_path)


def test_dense_results_render(tmp_path):
    seg = SegmentationMeter(2, hd95=True)
    seg.update(np.zeros((1, 8, 8), int), np.pad(np.ones((2, 2), int), 3)[None])
    lm = LandmarkMeter(2)
    lm.update(np.zeros((1, 2, 2)), np.ones((1, 2, 2)))
    for res in (seg.compute(), lm.compute()):
        text = write_report(tmp_path / res["task"], res["task"], res).read_text()
        assert "Per " in text and ("dice_mean" in text or "mre_px" in text)


def test_predictions_csv_atomic(tmp_path):
    rows_in = [{"path": "a.png", "score": 0.25}, {"path": "b.png", "extra": None}]
    path = write_predictions_csv(tmp_path / "p.csv", rows=rows_in)
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["path", "score", "extra"], ["a.png", "0.25", ""], ["b.png", "", ""]]
    write_predictions_csv(tmp_path / "q.csv", columns={"i": np.arange(3), "s": [0.5, float("nan"), 1.0]})
    assert (tmp_path / "q.csv").read_text() == "i,s\n0,0.5\n1,\n2,1.0\n"
    with pytest.raises(ValueError, match="different lengths"):
        write_predictions_csv(tmp_path / "bad.csv", columns={"a": [1, 2], "b": [1]})
    assert not (tmp_path / "bad.csv").exists()
    _no_temp_files(tmp_path)


def test_evaluate_classification_run(tmp_path):
    y, s = _multiclass(60, 3)
    paths = [f"img_{i:03d}.png" for i in range(60)]
    m = evaluate_classification_run(
        tmp_path, y, s, "multiclass", ["g0", "g1", "g2"], paths=paths, ordinal=True, n_boot=50, meta={"model": "test"}
    )
    assert set(m["ci"]) >= {"auroc_macro", "accuracy", "f1_macro", "quadratic_weighted_kappa"}
    for name in ("roc.png", "pr.png", "confusion_matrix.png", "calibration.png"):
        _assert_real_png(tmp_path / name)
    with (tmp_path / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 and rows[0]["path"] == "img_000.png"
    expected = {"path", "true", "true_name", "predicted", "predicted_name", "score_g0", "score_g1", "score_g2"}
    assert set(rows[0]) == expected
    assert json.loads((tmp_path / "metrics.json").read_text())["ci"]["accuracy"]["n_boot"] == 50
    assert "95% CI" in (tmp_path / "report.html").read_text()
    _no_temp_files(tmp_path)


def test_evaluate_binary_single_class_and_regression_runs(tmp_path):
    y = np.zeros(12, int)
    s = np.linspace(0.05, 0.95, 12)
    m = evaluate_classification_run(tmp_path / "bin", y, s, "binary", n_boot=20)
    assert m["auroc"] is None and any("ROC curve not drawn" in n for n in m["notes"])
    assert not (tmp_path / "bin" / "roc.png").exists()
    assert (tmp_path / "bin" / "report.html").is_file()

    rng = np.random.default_rng(0)
    yt = rng.normal(size=(30, 2))
    r = evaluate_regression_run(tmp_path / "reg", yt, yt + 0.1, ["IOP", "CDR"], n_boot=20)
    assert r["ci"]["mae[IOP]"]["low"] == pytest.approx(0.1)
    _assert_real_png(tmp_path / "reg" / "scatter.png")
    header = (tmp_path / "reg" / "predictions.csv").read_text().splitlines()[0]
    assert header == "index,true_IOP,pred_IOP,true_CDR,pred_CDR"
    _no_temp_files(tmp_path / "reg")
