"""Regression metrics (biomarker prediction) computed once over a whole evaluation set.

Per target ``j`` over the samples where the truth is finite (NaN truth = not measured):

* ``mae = mean|ŷ − y|``, ``rmse = sqrt(mean (ŷ − y)²)``, ``mean_error = mean(ŷ − y)`` (bias);
* ``r2 = 1 − Σ(ŷ − y)² / Σ(y − ȳ)²`` — undefined (``None``) when the target is constant;
* ``pearson_r`` — undefined when the target or the predictions are constant;
* ``relative_mae_original = mean|ŷ − y| / mean y`` — the original's "mae" (reference §5.6, §8
  item 24), a *relative* error, reported under that name for comparison only. The original
  computed it per batch and averaged batches; here it is computed over the whole set.

``*_mean`` keys average the per-target values over the defined targets (count in
``averaged_over``). Means across targets mix units; read the per-target table for clinical use.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from visionfm.metrics._common import Undefined, as_numpy, default_names, mean_defined

__all__ = ["regression_metrics"]

_PER_TARGET_KEYS = ("mae", "rmse", "mean_error", "r2", "pearson_r", "relative_mae_original", "mean_true", "std_true")


def _as_2d(x: Any, name: str) -> np.ndarray:
    arr = as_numpy(x, name=name, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [N] or [N, T], got {tuple(arr.shape)}")
    return arr


def regression_metrics(y_true: Any, y_pred: Any, target_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-target and mean MAE, RMSE, R², Pearson r and the original's relative MAE.

    Args:
        y_true: ``[N, T]`` (or ``[N]``) ground truth; NaN marks a value that was not measured and
            is left out for that target only.
        y_pred: ``[N, T]`` (or ``[N]``) predictions; must be finite.
        target_names: ``T`` display names (default ``"target <j>"``).

    Returns:
        ``{"task": "regression", "n_samples", "n_targets", "target_names", "mae_mean",
        "rmse_mean", "r2_mean", "pearson_r_mean", "relative_mae_original", "per_target":
        {name: {"n", "mae", "rmse", "mean_error", "r2", "pearson_r", "relative_mae_original",
        "mean_true", "std_true"}}, "averaged_over", "undefined", "notes"}``.

    Raises:
        ValueError: on shape mismatch or non-finite predictions.
    """
    y = _as_2d(y_true, "y_true")
    p = _as_2d(y_pred, "y_pred")
    if y.shape != p.shape:
        raise ValueError(f"y_true has shape {tuple(y.shape)} but y_pred has {tuple(p.shape)}")
    if y.shape[0] == 0:
        raise ValueError("empty evaluation set: no samples to score")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"y_pred contains {int(np.sum(~np.isfinite(p)))} NaN/inf values")
    n, t = y.shape
    names = default_names(target_names, t, "target", "target_names")
    und = Undefined()
    table: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        m = np.isfinite(y[:, j])
        yj, pj = y[m, j], p[m, j]
        nj = int(m.sum())
        if nj == 0:
            table[name] = {"n": 0}
            for key in _PER_TARGET_KEYS:
                table[name][key] = und.check(f"{key}[{name}]", None, "no measured value for this target")
            continue
        e = pj - yj
        mae = float(np.mean(np.abs(e)))
        ss_tot = float(np.sum((yj - yj.mean()) ** 2))
        ss_res = float(np.sum(e**2))
        sy, sp = float(yj.std()), float(pj.std())
        if sy > 0 and sp > 0:
            r = float(np.mean((yj - yj.mean()) * (pj - pj.mean())) / (sy * sp))
            r = max(-1.0, min(1.0, r))
        else:
            r = None
        mean_y = float(yj.mean())
        table[name] = {
            "n": nj,
            "mae": mae,
            "rmse": float(np.sqrt(ss_res / nj)),
            "mean_error": float(e.mean()),
            "r2": und.check(
                f"r2[{name}]", 1.0 - ss_res / ss_tot if ss_tot > 0 else None, "target is constant in ground truth"
            ),
            "pearson_r": und.check(
                f"pearson_r[{name}]",
                r,
                "target is constant in ground truth" if sy == 0 else "predictions are constant",
            ),
            "relative_mae_original": und.check(
                f"relative_mae_original[{name}]", mae / mean_y if mean_y != 0 else None, "mean of the target is 0"
            ),
            "mean_true": mean_y,
            "std_true": sy,
        }
    counts: dict[str, dict[str, int]] = {}
    result: dict[str, Any] = {
        "task": "regression",
        "n_samples": n,
        "n_targets": t,
        "target_names": names,
    }
    for key, out in (
        ("mae", "mae_mean"),
        ("rmse", "rmse_mean"),
        ("r2", "r2_mean"),
        ("pearson_r", "pearson_r_mean"),
        ("relative_mae_original", "relative_mae_original"),
    ):
        mean, n_def, n_tot = mean_defined(table[nm][key] for nm in names)
        counts[out] = {"n_defined": n_def, "n_total": n_tot}
        result[out] = und.check(out, mean, f"{key} undefined for every target")
    result.update(
        {
            "per_target": table,
            "averaged_over": counts,
            "undefined": und.reasons,
            "notes": [
                "relative_mae_original = mean_j(mean|ŷ−y| / mean y) is the original's 'mae' (reference §5.6), "
                "a relative error, computed here once over the whole set instead of per batch.",
                "Means across targets mix units; use the per-target values for clinical reading.",
                "NaN ground truth marks an unmeasured value and is left out for that target only.",
            ],
        }
    )
    return result
