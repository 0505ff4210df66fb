"""Self-contained evaluation reports: ``report.html`` (figures embedded), ``metrics.json``, ``predictions.csv``.

The HTML page has no external CSS, JavaScript, fonts or images: figures are embedded as base64
PNG, so the single file can be mailed or archived with a model. It shows the run information, a
summary table of every scalar metric (with its bootstrap interval when present, and
``n/a (reason)`` for undefined values), one table per class / label / target / landmark, the
confusion matrix, extra tables, the figures, and the notes on conventions.

All files are written atomically (temporary file in the same folder, then ``os.replace``).

:func:`evaluate_classification_run` and :func:`evaluate_regression_run` are the end-of-training
helpers: metrics + bootstrap intervals, ``metrics.json``, ``predictions.csv``, figures and
``report.html`` in one call.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from visionfm.io.atomic import save_text_atomic
from visionfm.metrics._common import as_numpy, to_jsonable
from visionfm.metrics.bootstrap import REPORT_N_BOOT, with_confidence_intervals
from visionfm.metrics.classification import classification_metrics
from visionfm.metrics.collapse import classification_collapse, regression_collapse
from visionfm.metrics.regression import regression_metrics
from visionfm.reports import plots

__all__ = [
    "write_report",
    "write_metrics_json",
    "write_predictions_csv",
    "evaluate_classification_run",
    "evaluate_regression_run",
]

# Keys rendered in their own section (or not at all) rather than in the summary table.
_RESERVED = {
    "undefined",
    "notes",
    "ci",
    "ci_method",
    "averaged_over",
    "confusion_matrix",
    "confusion_matrix_axes",
    "support",
    "collapse",
    "ordinal",
}

# Readable names for the summary table; the JSON key is shown next to each.
_LABELS = {
    "n_samples": "Samples",
    "n_images": "Images",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "auroc": "AUROC",
    "auroc_macro": "AUROC (macro, one-vs-rest)",
    "auroc_weighted": "AUROC (weighted by prevalence)",
    "aupr": "AUPR (average precision)",
    "aupr_macro": "AUPR (macro)",
    "aupr_weighted": "AUPR (weighted)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "sensitivity_macro": "Sensitivity (macro)",
    "specificity_macro": "Specificity (macro)",
    "ppv": "Positive predictive value",
    "npv": "Negative predictive value",
    "f1_positive": "F1 (positive class)",
    "precision_macro": "Precision (macro, class 0 included)",
    "recall_macro": "Recall (macro, class 0 included)",
    "f1_macro": "F1 (macro, class 0 included)",
    "f1_micro": "F1 (micro)",
    "cohen_kappa": "Cohen's kappa",
    "quadratic_weighted_kappa": "Quadratic weighted kappa",
    "prevalence": "Prevalence",
    "mae_mean": "MAE (mean over targets)",
    "rmse_mean": "RMSE (mean over targets)",
    "r2_mean": "R² (mean over targets)",
    "pearson_r_mean": "Pearson r (mean over targets)",
    "dice_mean": "Dice (mean)",
    "iou_mean": "IoU (mean)",
    "hd95_mean": "HD95 in pixels (mean)",
    "mre_px": "Mean radial error (px, input resolution)",
    "mre_original_px": "Mean radial error (px, original resolution)",
}

_CSS = """
.ordinal-cm td.d0{background:#dcfce7}.ordinal-cm td.d1{background:#fef3c7}.ordinal-cm td.d2{background:#fee2e2}
.warning{border:1px solid #d97706;background:#fff7ed;color:#7c2d12;padding:10px 14px;border-radius:6px;margin:14px 0}
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2933;
margin:0;background:#f5f7fa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 8px;border-bottom:2px solid #d9e2ec;
padding-bottom:4px}.sub{color:#627d98;font-size:.9em;margin-bottom:16px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em;max-width:100%}
th,td{border:1px solid #d9e2ec;padding:4px 10px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f4f8;font-weight:600;overflow-wrap:break-word}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-size:.85em;color:#627d98}.na{color:#9aa5b1;font-style:italic}
.small{font-size:.8em;color:#627d98}figure{margin:12px 0 24px}
figure img{max-width:100%;border:1px solid #d9e2ec}figcaption{font-size:.9em;color:#486581;margin-top:4px}
ul{margin:4px 0 16px}li{margin:2px 0}
.scroll{overflow-x:auto;max-width:100%;margin:8px 0 16px}.scroll>table{margin:0}
.run td{word-break:break-all}.flag{color:#b42318;font-weight:600}
.rule{background:#f0f4f8;border-left:4px solid #486581;padding:6px 12px;margin:8px 0;font-size:.9em}
@media (max-width:900px){main{padding:16px 12px 32px}table{font-size:.82em}th,td{padding:3px 6px}}
"""


# --------------------------------------------------------------------------------------------
# Atomic file helpers
# --------------------------------------------------------------------------------------------


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``metrics`` as strict JSON (numpy values converted, NaN/inf as ``null``), atomically."""
    text = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return save_text_atomic(text, path)


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return repr(f) if math.isfinite(f) else ""
    return str(v)


def write_predictions_csv(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]] | None = None,
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> Path:
    """Write a CSV atomically from ``rows`` (dicts, one per image) or ``columns`` (name -> values).

    Column order follows the first row (then keys first seen later) or the ``columns`` mapping.
    Floats keep full precision; ``None``/NaN are written as empty cells.
    """
    if (rows is None) == (columns is None):
        raise ValueError("pass exactly one of rows= or columns=")
    if columns is not None:
        names = list(columns)
        cols = [list(as_numpy(v).tolist()) if hasattr(v, "shape") else list(v) for v in columns.values()]
        lengths = {len(c) for c in cols}
        if len(lengths) > 1:
            raise ValueError(f"columns have different lengths: { {n: len(c) for n, c in zip(names, cols)} }")
        row_list = [dict(zip(names, vals)) for vals in zip(*cols)]
    else:
        row_list = [dict(r) for r in rows]  # type: ignore[union-attr]
        names = []
        for r in row_list:
            names.extend(k for k in r if k not in names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for r in row_list:
        writer.writerow([_csv_value(r.get(k)) for k in names])
    return save_text_atomic(buf.getvalue(), path)


# --------------------------------------------------------------------------------------------
# HTML rendering
# --------------------------------------------------------------------------------------------


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return "n/a"
        if f == 0:
            return "0"
        if abs(f) < 1e-3 or abs(f) >= 1e5:
            return f"{f:.3e}"
        return f"{f:.4f}" if abs(f) < 100 else f"{f:.2f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _value_cell(v: Any, reason: str | None) -> str:
    if v is None:
        text = "n/a" + (f" ({reason})" if reason else "")
        return f'<td class="na">{_esc(text)}</td>'
    cls = ' class="num"' if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else ""
    return f"<td{cls}>{_esc(_fmt(v))}</td>"


def _ci_cell(ci: Mapping[str, Any] | None) -> str:
    if not ci:
        return "<td></td>"
    if ci.get("low") is None:
        return '<td class="na">n/a (undefined on every resample)</td>'
    text = f"{_fmt(ci['low'])} – {_fmt(ci['high'])}"
    if ci.get("n_skipped"):
        text += f" ({ci['n_skipped']} of {ci['n_boot']} resamples undefined, skipped)"
    return f'<td class="num">{_esc(text)}</td>'


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, np.integer, np.floating, np.bool_))


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping) and len(v) > 0 and all(isinstance(x, Mapping) for x in v.values())


def _summary_section(metrics: Mapping[str, Any]) -> str:
    undefined = metrics.get("undefined") or {}
    ci = metrics.get("ci") or {}
    counts = metrics.get("averaged_over") or {}
    has_ci = bool(ci)
    head = "<tr><th>Metric</th><th>Value</th>" + ("<th>95% CI</th>" if has_ci else "") + "</tr>"
    if has_ci:
        level = (metrics.get("ci_method") or {}).get("level")
        if level is not None:
            head = head.replace("95% CI", f"{100 * float(level):g}% CI")
    rows = []
    shown: set[str] = set()

    def add(key: str, label: str, value: Any, reason_key: str) -> None:
        shown.add(key)
        extra = ""
        cnt = counts.get(key)
        if isinstance(cnt, Mapping) and cnt.get("n_defined") != cnt.get("n_total"):
            extra = f' <span class="small">(over {cnt.get("n_defined")} of {cnt.get("n_total")} defined)</span>'
        row = f"<tr><td>{_esc(label)} <code>{_esc(key)}</code>{extra}</td>"
        row += _value_cell(value, undefined.get(reason_key))
        if has_ci:
            row += _ci_cell(ci.get(key))
        rows.append(row + "</tr>")

    original_rows: list[str] = []
    for key, value in metrics.items():
        if key in _RESERVED or _is_table(value) or isinstance(value, (bool, np.bool_)):
            continue
        if _is_original(key):
            n_before = len(rows)
            add(key, key.replace("_", " "), value, key)
            original_rows.extend(rows[n_before:])
            del rows[n_before:]
        elif _is_scalar(value):
            add(key, _LABELS.get(key, key.replace("_", " ")), value, key)
        elif isinstance(value, Mapping) and all(_is_scalar(x) for x in value.values()):
            for sub, v in value.items():
                add(f"{key}[{sub}]", f"{key.replace('_', ' ')} · {sub}", v, f"{key}[{sub}]")
    # CIs for keys that are not top-level scalars (e.g. per-target MAE) get their own rows.
    for key, entry in ci.items():
        if key not in shown and not key.startswith("ordinal."):  # those: in the ordinal section
            rows.append(
                f"<tr><td>{_esc(key.replace('_', ' '))} <code>{_esc(key)}</code></td><td></td>{_ci_cell(entry)}</tr>"
            )
    if not rows and not original_rows:
        return ""
    out = f"<h2>Summary</h2><div class=\"scroll\"><table>{head}{''.join(rows)}</table></div>" if rows else ""
    method = metrics.get("ci_method")
    if isinstance(method, Mapping):
        strat = method.get("stratified_by")
        out += (
            f'<p class="small">Intervals: {_esc(method.get("method", "bootstrap"))}, '
            f'{_esc(method.get("n_boot"))} resamples, seed {_esc(method.get("seed"))}'
            + (f", stratified by {_esc(strat)}" if strat else "")
            + ". Resamples on which a metric is undefined are skipped and counted.</p>"
        )
    if original_rows:
        out += (
            "<h2>Original VisionFM conventions (for comparison only)</h2>"
            '<p class="small">Values computed the way the original scripts did (see the notes below); '
            "use the summary above for clinical reading.</p>"
            f"<div class=\"scroll\"><table>{head}{''.join(original_rows)}</table></div>"
        )
    return out


def _is_original(key: str) -> bool:
    return key.endswith("_original") or "_excl_class0" in key or key.startswith("relative_mae_original")


def _settings_section(metrics: Mapping[str, Any]) -> str:
    rows = []
    for key, value in metrics.items():
        if key in _RESERVED or _is_table(value) or (_is_scalar(value) and not isinstance(value, (bool, np.bool_))):
            continue
        if isinstance(value, Mapping) and all(_is_scalar(x) for x in value.values()):
            continue
        text = _fmt(value) if isinstance(value, (list, tuple, str, bool, np.bool_)) else json.dumps(to_jsonable(value))
        rows.append(f"<tr><th>{_esc(key)}</th><td>{_esc(text)}</td></tr>")
    return f"<h2>Evaluation settings</h2><div class=\"scroll\"><table>{''.join(rows)}</table></div>" if rows else ""


def _entity_table(title: str, table: Mapping[str, Mapping[str, Any]], undefined: Mapping[str, str]) -> str:
    columns: list[tuple[str, str | None]] = []  # (key, sub-key for nested dicts)
    for row in table.values():
        for k, v in row.items():
            if isinstance(v, Mapping):
                for sub in v:
                    if (k, sub) not in columns:
                        columns.append((k, sub))
            elif (k, None) not in columns:
                columns.append((k, None))
    head = "<tr><th></th>" + "".join(
        f"<th>{_esc(k if s is None else f'{k} · {s}')}</th>" for k, s in columns
    ) + "</tr>"
    body = []
    for name, row in table.items():
        cells = []
        for k, s in columns:
            if s is None:
                v = row.get(k)
                reason = undefined.get(f"{k}[{name}]")
            else:
                v = (row.get(k) or {}).get(s)
                reason = undefined.get(f"{k}[{name}][{s}]")
            cells.append(_value_cell(v, reason))
        body.append(f"<tr><th>{_esc(name)}</th>{''.join(cells)}</tr>")
    return f"<h2>{_esc(title)}</h2><div class=\"scroll\"><table>{head}{''.join(body)}</table></div>"


def _dice_section(metrics: Mapping[str, Any]) -> str:
    """Segmentation: per class the mean per-image Dice beside the pooled (dataset) Dice, the empty-vs-empty
    rule that the per-image mean uses, and a flag on every class that the model never predicts."""
    table = metrics.get("per_class")
    if metrics.get("task") != "segmentation" or not _is_table(table):
        return ""
    undefined = metrics.get("undefined") or {}
    n = metrics.get("n_images")
    head = ("<tr><th>class</th><th>Dice, mean per image</th><th>Dice, dataset (pooled pixels)</th>"
            "<th>images with the class (truth)</th><th>images predicted with it</th>"
            "<th>images where both are empty (count 1.0)</th><th></th></tr>")
    body = []
    for name, row in table.items():
        predicted = row.get("n_images_predicted")
        flag = ""
        if predicted == 0:
            dice = row.get("dice")
            value = f"{_fmt(dice)} " if isinstance(dice, (int, float, np.floating)) else ""
            flag = (f'<span class="flag">never predicted</span> — per-image Dice {_esc(value)}comes only from '
                    "empty-vs-empty images")
        cells = [
            _value_cell(row.get("dice"), undefined.get(f"dice[{name}]")),
            _value_cell(row.get("dice_dataset"), undefined.get(f"dice_dataset[{name}]")),
            _value_cell(row.get("n_images_with_class"), None),
            _value_cell(predicted, None) if predicted is not None else '<td class="na">not recorded</td>',
            _value_cell(row.get("n_images_both_empty"), None),
            f"<td>{flag}</td>",
        ]
        body.append(f"<tr><th>{_esc(name)}</th>{''.join(cells)}</tr>")
    rule = ("<div class=\"rule\"><b>Empty-vs-empty rule.</b> Dice and IoU are computed per image and averaged "
            "over the images; a class absent from both the prediction and the ground truth of an image counts "
            "<b>1.0</b> for that image. The mean per image therefore rises with the number of images without "
            "the class, even when the model never finds it; the dataset Dice pools the pixels of all images "
            "and has no such rule (undefined only when the class is absent everywhere)."
            + (f" Images evaluated: {_esc(_fmt(n))}." if n is not None else "") + "</div>")
    return (f"<h2>Dice per class: per image and pooled</h2>{rule}"
            f"<div class=\"scroll\"><table>{head}{''.join(body)}</table></div>")


def _confusion_section(metrics: Mapping[str, Any]) -> str:
    cm = metrics.get("confusion_matrix")
    if cm is None:
        return ""
    m = np.asarray(cm)
    names = metrics.get("class_names") or [str(i) for i in range(m.shape[0])]
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{_esc(n)}</th>" for n in names) + "</tr>"
    body = "".join(
        f"<tr><th>{_esc(names[i])}</th>" + "".join(f'<td class="num">{int(x):,}</td>' for x in m[i]) + "</tr>"
        for i in range(m.shape[0])
    )
    axes = metrics.get("confusion_matrix_axes", "")
    return (
        f'<h2>Confusion matrix</h2><p class="small">{_esc(axes)}</p>'
        f'<div class="scroll"><table>{head}{body}</table></div>'
    )


_ORDINAL_ROWS = (("quadratic_kappa", "Quadratic weighted kappa"), ("linear_kappa", "Linear weighted kappa"),
                 ("mean_absolute_error", "Mean absolute grade error (grades)"),
                 ("within_one_accuracy", "Accuracy within one grade"),
                 ("spearman", "Spearman ρ, true vs predicted grade"),
                 ("spearman_expected_grade", "Spearman ρ, true vs expected grade"))
_DISTANCE_CLASSES = ("d0", "d1", "d2")


def _ordinal_section(metrics: Mapping[str, Any]) -> str:
    """Ordered grades: agreement metrics with CIs, errors by grade distance, the confusion matrix shaded by
    how many grades each cell is off."""
    ordn = metrics.get("ordinal")
    if not isinstance(ordn, Mapping):
        return ""
    ci = metrics.get("ci") or {}
    undefined = ordn.get("undefined") or {}
    rows = "".join(
        f"<tr><td>{_esc(label)} <code>ordinal.{_esc(key)}</code></td>"
        + _value_cell(ordn.get(key), undefined.get(key) or (metrics.get("undefined") or {}).get(f"ordinal.{key}"))
        + (_ci_cell(ci.get(f"ordinal.{key}")) if ci else "") + "</tr>"
        for key, label in _ORDINAL_ROWS if key in ordn)
    head = "<tr><th>Metric</th><th>Value</th>" + ("<th>95% CI</th>" if ci else "") + "</tr>"
    out = f"<h2>Ordinal grades</h2><div class=\"scroll\"><table>{head}{rows}</table></div>"
    off = ordn.get("off_by")
    if isinstance(off, Mapping) and off:
        total = sum(int(v) for v in off.values()) or 1
        cells = "".join(f"<tr><td>{_esc(k)}</td><td class=\"num\">{int(v):,}</td>"
                        f"<td class=\"num\">{int(v) / total:.3f}</td></tr>" for k, v in off.items())
        out += ("<h3>Errors by grade distance |predicted − true|</h3><div class=\"scroll\"><table>"
                f"<tr><th>grades off</th><th>images</th><th>fraction</th></tr>{cells}</table></div>")
    cm = metrics.get("confusion_matrix")
    if cm is not None:
        m = np.asarray(cm)
        names = metrics.get("class_names") or [str(i) for i in range(m.shape[0])]
        head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{_esc(n)}</th>" for n in names) + "</tr>"
        body = "".join(
            f"<tr><th>{_esc(names[i])}</th>" + "".join(
                f'<td class="num {_DISTANCE_CLASSES[min(abs(i - j), 2)] if x else ""}">{int(x):,}</td>'
                for j, x in enumerate(m[i])) + "</tr>" for i in range(m.shape[0]))
        out += ("<h3>Confusion matrix by grade distance</h3><p class=\"small\">Green cells are exact; amber cells are "
                "one grade off, red cells two or more (empty cells unshaded).</p>"
                f'<div class="scroll"><table class="ordinal-cm">{head}{body}</table></div>')
    return out


def _generic_table(title: str, table: Any) -> str:
    if isinstance(table, Mapping) and "columns" in table and "rows" in table:
        cols = list(table["columns"])
        rows = [list(r) for r in table["rows"]]
    elif _is_table(table):
        return _entity_table(title, table, {})
    else:
        records = [dict(r) for r in table]
        cols = []
        for r in records:
            cols.extend(k for k in r if k not in cols)
        rows = [[r.get(c) for c in cols] for r in records]
    head = "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>"
    body = "".join("<tr>" + "".join(_value_cell(v, None) for v in r) + "</tr>" for r in rows)
    return f"<h2>{_esc(title)}</h2><div class=\"scroll\"><table>{head}{body}</table></div>"


def _figures_section(images: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> str:
    if not images:
        return ""
    items = list(images.items()) if isinstance(images, Mapping) else list(images)
    parts = ["<h2>Figures</h2>"]
    for caption, path in items:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"report image {caption!r} not found: {p}")
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        mime = "image/jpeg" if p.suffix.lower() in {".jpg", ".jpeg"} else "image/png"
        parts.append(
            f'<figure><img alt="{_esc(caption)}" src="data:{mime};base64,{data}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    return "".join(parts)


def _list_section(title: str, items: Iterable[str]) -> str:
    lis = "".join(f"<li>{_esc(x)}</li>" for x in items)
    return f"<h2>{_esc(title)}</h2><ul>{lis}</ul>" if lis else ""


def write_report(
    out_dir: str | os.PathLike[str],
    title: str,
    metrics: Mapping[str, Any],
    images: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    tables: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    *,
    filename: str = "report.html",
    json_name: str | None = "metrics.json",
) -> Path:
    """Write a self-contained ``report.html`` (and ``metrics.json``) into ``out_dir``.

    Args:
        out_dir: destination folder (created if needed).
        title: page title, e.g. ``"DR grading — VisionFM Fundus encoder, test set"``.
        metrics: a result dict from :mod:`visionfm.metrics` (optionally with ``ci``); any dict of
            scalars, lists and per-entity dicts renders.
        images: ``{caption: png_path}`` or ``[(caption, png_path), ...]``; embedded as base64.
        tables: extra tables, ``{title: rows}`` where rows is a list of dicts, a dict of dicts,
            or ``{"columns": [...], "rows": [[...], ...]}``.
        meta: run information shown at the top (model, checkpoint, data, date, ...).
        filename: HTML file name.
        json_name: name of the metrics JSON written next to it; ``None`` to skip.

    Returns:
        Path of the HTML file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(metrics)
    undefined = metrics.get("undefined") or {}
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1><div class=\"sub\">Generated {stamp} by visionfm. "
        "Proportions are fractions between 0 and 1; n/a marks a value that cannot be computed on this set, "
        "with the reason in brackets.</div>",
    ]
    if meta:
        rows = "".join(
            f"<tr><th>{_esc(k)}</th><td>{_esc(v if isinstance(v, str) else json.dumps(to_jsonable(v)))}</td></tr>"
            for k, v in meta.items()
        )
        parts.append(f"<h2>Run</h2><div class=\"scroll\"><table class=\"run\">{rows}</table></div>")
    collapse = metrics.get("collapse")
    if isinstance(collapse, Mapping) and collapse.get("collapsed"):
        parts.append(f'<div class="warning" role="alert"><strong>Collapsed model:</strong> '
                     f'{_esc(collapse.get("reason"))} — the metrics below describe a degenerate model.</div>')
    parts.append(_summary_section(metrics))
    parts.append(_dice_section(metrics))
    for key, value in metrics.items():
        if key not in _RESERVED and _is_table(value):
            parts.append(_entity_table(key.replace("_", " ").capitalize(), value, undefined))
    parts.append(_confusion_section(metrics))
    parts.append(_ordinal_section(metrics))
    for t_title, table in (tables or {}).items():
        parts.append(_generic_table(t_title, table))
    parts.append(_figures_section(images))
    parts.append(_settings_section(metrics))
    parts.append(_list_section("Notes on conventions", metrics.get("notes") or []))
    parts.append(_list_section("Undefined values", (f"{k}: {v}" for k, v in undefined.items())))
    parts.append("</main></body></html>\n")
    path = save_text_atomic("".join(p for p in parts if p), out / filename)
    if json_name:
        write_metrics_json(metrics, out / json_name)
    return path


# --------------------------------------------------------------------------------------------
# End-of-run helpers
# --------------------------------------------------------------------------------------------


def _row_ids(paths: Sequence[Any] | None, n: int) -> tuple[str, list[Any]]:
    if paths is None:
        return "index", list(range(n))
    ids = [str(p) for p in paths]
    if len(ids) != n:
        raise ValueError(f"paths has {len(ids)} entries but there are {n} samples")
    return "path", ids


def _try_plot(fn: Any, notes: list[str], what: str, *args: Any, **kwargs: Any) -> Path | None:
    try:
        return fn(*args, **kwargs)
    except plots.NothingToPlotError as exc:
        notes.append(f"{what} not drawn: {exc}")
        return None


def evaluate_classification_run(
    out_dir: str | os.PathLike[str],
    y_true: Any,
    scores: Any,
    task: str,
    class_names: Sequence[str] | None = None,
    *,
    paths: Sequence[Any] | None = None,
    threshold: float | Sequence[float] = 0.5,
    ordinal: bool | None = None,
    n_boot: int = REPORT_N_BOOT,
    seed: int = 0,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    calibration: bool = True,
) -> dict[str, Any]:
    """Metrics, bootstrap CIs, ``predictions.csv``, figures, ``metrics.json`` and ``report.html``.

    Files written in ``out_dir``: ``metrics.json``, ``predictions.csv`` (one row per image:
    ``path`` or ``index``, true and predicted class index and name, one score column per class;
    multilabel: ``true_/pred_/score_<label>``), ``roc.png``, ``pr.png``,
    ``confusion_matrix.png`` (binary, multiclass), ``calibration.png`` (if ``calibration``), and
    ``report.html``. A figure that cannot be drawn (e.g. ROC with one class) is skipped with a note.

    Args:
        out_dir: destination folder.
        y_true, scores, task, class_names, threshold, ordinal: as
            :func:`~visionfm.metrics.classification_metrics`.
        paths: image paths, one per sample, for the CSV (default: row index).
        n_boot: bootstrap resamples for the intervals; 0 disables them.
        seed: bootstrap seed.
        title: report title.
        meta: run information for the report header.
        calibration: also draw a reliability diagram.

    Returns:
        The metrics dict (with ``ci`` when ``n_boot > 0``), as written to ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = classification_metrics(
        y_true, scores, task, class_names=class_names, threshold=threshold, ordinal=ordinal
    )
    if n_boot > 0:
        metrics = with_confidence_intervals(metrics, y_true, scores, n_boot=n_boot, seed=seed)
    names = metrics["class_names"]
    t = metrics["task"]
    s = as_numpy(scores, name="scores", dtype=np.float64)
    y = as_numpy(y_true, name="y_true")
    n = s.shape[0]
    id_col, ids = _row_ids(paths, n)
    cols: dict[str, Any] = {id_col: ids}
    if t == "binary":
        sb = s[:, -1] if s.ndim == 2 else s
        yb = y.reshape(-1).astype(np.int64)
        pred = (sb >= float(metrics["threshold"])).astype(np.int64)
        cols.update(
            {
                "true": yb,
                "true_name": [names[i] for i in yb],
                "predicted": pred,
                "predicted_name": [names[i] for i in pred],
                f"score_{names[1]}": sb,
            }
        )
    elif t == "multiclass":
        yi = (y.argmax(1) if (y.ndim == 2 and y.shape[1] > 1) else y.reshape(-1)).astype(np.int64)
        pred = s.argmax(1)
        cols.update(
            {
                "true": yi,
                "true_name": [names[i] for i in yi],
                "predicted": pred,
                "predicted_name": [names[i] for i in pred],
            }
        )
        cols.update({f"score_{nm}": s[:, k] for k, nm in enumerate(names)})
    else:
        yf = y.astype(np.float64)
        thr = np.broadcast_to(np.asarray(metrics["threshold"], dtype=np.float64), (s.shape[1],))
        for k, nm in enumerate(names):
            ann = np.isfinite(yf[:, k]) & (yf[:, k] >= 0)
            cols[f"true_{nm}"] = [int(v) if a else None for v, a in zip(yf[:, k], ann)]
            cols[f"pred_{nm}"] = (s[:, k] >= thr[k]).astype(np.int64)
            cols[f"score_{nm}"] = s[:, k]
    write_predictions_csv(out / "predictions.csv", columns=cols)
    predicted = pred if t in ("binary", "multiclass") else np.stack([cols[f"pred_{nm}"] for nm in names], 1)
    metrics["collapse"] = classification_collapse(t, predicted, names)

    notes: list[str] = []
    images: list[tuple[str, Path]] = []
    curves = [
        (plots.plot_roc, "ROC curve", "roc.png", "ROC curve (one-vs-rest per class where applicable)"),
        (plots.plot_pr, "Precision–recall curve", "pr.png", "Precision–recall curve"),
    ]
    if calibration:
        curves.append(
            (plots.plot_calibration, "Calibration plot", "calibration.png", "Calibration (reliability diagram)")
        )
    for fn, what, filename, caption in curves:
        png = _try_plot(fn, notes, what, y_true, scores, out / filename, task=t, class_names=names)
        if png:
            images.append((caption, png))
    if "confusion_matrix" in metrics:
        cm_png = plots.plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png", names)
        images.insert(2, ("Confusion matrix", cm_png))
    if notes:
        metrics["notes"] = list(metrics.get("notes", [])) + notes
    write_report(out, title or f"{t.capitalize()} classification report", metrics, images=images, meta=meta)
    return metrics


def evaluate_regression_run(
    out_dir: str | os.PathLike[str],
    y_true: Any,
    y_pred: Any,
    target_names: Sequence[str] | None = None,
    *,
    paths: Sequence[Any] | None = None,
    n_boot: int = REPORT_N_BOOT,
    seed: int = 0,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Regression metrics, bootstrap CIs, ``predictions.csv``, ``scatter.png``, ``metrics.json``, ``report.html``.

    ``predictions.csv`` has ``path`` (or ``index``) and ``true_<target>``, ``pred_<target>`` per
    target (empty cell for an unmeasured value).

    Returns:
        The metrics dict (with ``ci`` when ``n_boot > 0``), as written to ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = regression_metrics(y_true, y_pred, target_names)
    if n_boot > 0:
        metrics = with_confidence_intervals(metrics, y_true, y_pred, n_boot=n_boot, seed=seed)
    y = as_numpy(y_true, name="y_true", dtype=np.float64)
    p = as_numpy(y_pred, name="y_pred", dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    names = metrics["target_names"]
    metrics["collapse"] = regression_collapse(y, p, names)
    id_col, ids = _row_ids(paths, y.shape[0])
    cols: dict[str, Any] = {id_col: ids}
    for j, nm in enumerate(names):
        cols[f"true_{nm}"] = y[:, j]
        cols[f"pred_{nm}"] = p[:, j]
    write_predictions_csv(out / "predictions.csv", columns=cols)
    scatter = plots.plot_regression_scatter(y, p, out / "scatter.png", target_names=names)
    write_report(
        out,
        title or "Regression report",
        metrics,
        images=[("Predicted against measured, one panel per target", scatter)],
        meta=meta,
    )
    return metrics
