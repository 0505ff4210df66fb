"""Is a trained model degenerate? One predicted class for every image, a constant regression, no foreground.

A collapsed model can still score a plausible accuracy on imbalanced data (always "no DR") or a Dice from
empty-vs-empty images; these checks make the ending summary and the report say so instead.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["classification_collapse", "regression_collapse", "segmentation_collapse"]

#: predictions whose spread is below this fraction of the truth's spread count as constant
CONSTANT_RTOL = 1e-3


def _result(collapsed: bool, reason: str | None) -> dict[str, Any]:
    return {"collapsed": bool(collapsed), "reason": reason}


def classification_collapse(task: str, y_pred: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """``{"collapsed", "reason"}``: every sample got the same predicted class (binary/multiclass) or the
    same predicted label set (multilabel). ``y_pred``: class indices ``[N]`` or 0/1 ``[N, L]``."""
    p = np.asarray(y_pred)
    if p.shape[0] < 2:
        return _result(False, None)
    if task == "multilabel":
        rows = np.unique(p.reshape(p.shape[0], -1), axis=0)
        if len(rows) == 1:
            on = [class_names[k] for k, v in enumerate(rows[0]) if v] or ["no label"]
            return _result(True, f"the model predicts the same labels ({', '.join(on)}) for all {p.shape[0]} samples")
        return _result(False, None)
    classes = np.unique(p.reshape(-1))
    if len(classes) == 1:
        k = int(classes[0])
        name = class_names[k] if 0 <= k < len(class_names) else str(k)
        return _result(True, f"the model predicts one class ({name!r}) for all {p.shape[0]} samples")
    return _result(False, None)


def regression_collapse(y_true: Any, y_pred: Any, target_names: Sequence[str]) -> dict[str, Any]:
    """Targets whose predictions are constant (spread below ``CONSTANT_RTOL`` of the truth's)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim == 1:
        t, p = t[:, None], p[:, None]
    if p.shape[0] < 2:
        return _result(False, None)
    flat = []
    for j in range(p.shape[1]):
        ok = np.isfinite(t[:, j]) & np.isfinite(p[:, j])
        if ok.sum() < 2:
            continue
        spread_true = float(np.std(t[ok, j]))
        if spread_true > 0 and float(np.std(p[ok, j])) <= CONSTANT_RTOL * spread_true:
            flat.append(target_names[j] if j < len(target_names) else f"target {j}")
    if not flat:
        return _result(False, None)
    shown = ", ".join(flat[:5]) + (f" and {len(flat) - 5} more" if len(flat) > 5 else "")
    return {**_result(True, f"constant predictions for {len(flat)} of {p.shape[1]} target(s): {shown}"),
            "constant_targets": flat}


def segmentation_collapse(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """From :class:`~visionfm.metrics.dense.SegmentationMeter` results: foreground classes present in the
    ground truth that the model never predicts (``per_class[...]["n_images_predicted"] == 0``)."""
    table = metrics.get("per_class") or {}
    names = list(metrics.get("class_names") or table)
    never = [nm for nm in names[1:] if nm in table and table[nm].get("n_images_predicted") == 0
             and table[nm].get("n_images_with_class", 0) > 0]
    if not never:
        return _result(False, None)
    return {**_result(True, f"the model never predicts {', '.join(repr(n) for n in never)} (present in the ground "
                            "truth); its per-image Dice comes from images where the class is absent from both"),
            "never_predicted": never}
