"""The few lines every training / evaluation command ends with.

>>> print(format_summary("train-cls", metrics, selection={"metric": "f1_macro", "value": 0.81, "epoch": 37,
...                      "epochs": 100, "split": "val"}, paths={"report": "runs/a/report/report.html"}))
visionfm train-cls: multiclass classification, 120 test samples
  test   accuracy 0.812 (95% CI 0.744-0.871) · auroc_macro 0.931 (0.902-0.957) · f1_macro 0.790 (0.71-0.85)
  chosen epoch 37 of 100 by f1_macro on val = 0.810
  report runs/a/report/report.html

Epochs are numbered from 1, as in log.txt and the checkpoint JSON files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["KEY_METRICS", "key_metrics", "format_summary", "summary_from_report"]

#: the metrics shown per task (those present in the metrics dict, in this order)
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "aupr", "accuracy", "f1", "sensitivity", "specificity"),
    "multiclass": ("accuracy", "auroc_macro", "f1_macro", "quadratic_weighted_kappa"),
    "multilabel": ("auroc_macro", "aupr_macro", "f1_macro", "subset_accuracy"),
    "regression": ("mae_mean", "rmse_mean", "r2_mean", "pearson_r_mean"),
    "segmentation": ("dice_mean", "iou_mean", "hd95_mean"),
    "landmark": ("mre_px", "mre_original_px"),
}

TASK_TEXT = {
    "binary": "binary classification",
    "multiclass": "multiclass classification",
    "multilabel": "multi-label classification",
    "regression": "regression",
    "segmentation": "segmentation",
    "landmark": "landmark detection",
}


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if not math.isfinite(float(v)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    a = abs(float(v))
    return f"{v:.3f}" if a < 1000 else f"{v:.1f}"


def key_metrics(metrics: Mapping[str, Any], task: str | None = None,
                extra: Sequence[str] = ()) -> list[tuple[str, Any, Mapping[str, Any] | None]]:
    """``[(name, value, ci or None)]`` of the task's :data:`KEY_METRICS` (+ ``extra``) present in ``metrics``."""
    task = str(task or metrics.get("task") or "")
    names = list(KEY_METRICS.get(task, ())) + [e for e in extra if e not in KEY_METRICS.get(task, ())]
    cis = metrics.get("ci") or {}
    out = []
    for name in names:
        if name in metrics and (metrics[name] is None or isinstance(metrics[name], (int, float))):
            ci = cis.get(name) if isinstance(cis, Mapping) else None
            out.append((name, metrics[name], ci if isinstance(ci, Mapping) else None))
    return out


def _n_text(metrics: Mapping[str, Any]) -> str:
    for key, what in (("n_samples", "samples"), ("n_images", "images"), ("n", "samples")):
        if isinstance(metrics.get(key), int):
            return f", {metrics[key]} test {what}"
    return ""


def format_summary(command: str, metrics: Mapping[str, Any] | None, *, task: str | None = None,
                   selection: Mapping[str, Any] | None = None, paths: Mapping[str, Any] | None = None,
                   extra_metrics: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """The ending summary of ``visionfm <command>``.

    Args:
        metrics: the test metrics (with ``ci`` when bootstrapped, ``collapse`` when checked).
        task: the task kind (default ``metrics["task"]``).
        selection: ``{"metric", "value", "epoch", "epochs", "split", "higher_is_better"}`` of the chosen epoch.
        paths: ``{"report": ..., "model": ..., "log": ...}`` (``None`` values are left out).
        extra_metrics: metric keys shown after the task's key metrics.
        notes: further lines (warnings) shown before the paths.
    """
    m = dict(metrics or {})
    kind = str(task or m.get("task") or "")
    lines = [f"visionfm {command}: {TASK_TEXT.get(kind, kind or 'done')}{_n_text(m)}"]
    shown = []
    for name, value, ci in key_metrics(m, kind, extra_metrics):
        text = f"{name} {_num(value) if value is not None else 'undefined'}"
        if ci and ci.get("low") is not None and ci.get("high") is not None:
            level = int(round(100 * float(ci.get("level", 0.95))))
            text += f" ({level}% CI {_num(ci['low'])}-{_num(ci['high'])})"
        shown.append(text)
    if shown:
        lines.append("  test     " + " · ".join(shown))
    if selection:
        sel = dict(selection)
        where = f" on {sel['split']}" if sel.get("split") else ""
        of = f" of {sel['epochs']}" if sel.get("epochs") else ""
        value = sel.get("value")
        if "value" not in sel:  # an evaluated checkpoint: its selection value is not known here
            value_text = ""
        else:
            value_text = f" = {_num(value)}" if value is not None else " (never defined: the last epoch was kept)"
        direction = "" if sel.get("higher_is_better") is None else (
            " (higher is better)" if sel["higher_is_better"] else " (lower is better)")
        if sel.get("epoch") and "value" not in sel:
            lines.append(f"  evaluated the checkpoint of epoch {sel['epoch']} (selected by {sel.get('metric')})")
        elif sel.get("epoch"):
            lines.append(f"  chosen   epoch {sel['epoch']}{of} by {sel.get('metric')}{where}{value_text}{direction}")
        elif sel.get("metric"):
            lines.append(f"  checkpoint evaluated; selection metric {sel.get('metric')}")
    collapse = m.get("collapse")
    if isinstance(collapse, Mapping) and collapse.get("collapsed"):
        lines.append(f"  WARNING  collapsed model: {collapse.get('reason')}")
    for note in notes:
        lines.append(f"  note     {note}")
    for key, value in (paths or {}).items():
        if value is not None:
            lines.append(f"  {key:<8} {value}")
    return "\n".join(lines)


def summary_from_report(command: str, report_dir: str | Path, head: Mapping[str, Any] | None, *,
                        selection: Mapping[str, Any] | None, paths: Mapping[str, Any],
                        extra_metrics: Sequence[str] = ()) -> str:
    """:func:`format_summary` of the report in ``report_dir``: its ``metrics.json`` (with the CIs) when it wrote
    one, else the headline ``head``; ``report`` is ``report.html`` when present, else the folder."""
    report_dir = Path(report_dir)
    full = report_dir / "metrics.json"
    metrics = json.loads(full.read_text(encoding="utf-8")) if full.is_file() else dict(head or {})
    html = report_dir / "report.html"
    return format_summary(command, metrics, selection=selection, extra_metrics=extra_metrics,
                          paths={"report": html if html.is_file() else report_dir, **paths})
