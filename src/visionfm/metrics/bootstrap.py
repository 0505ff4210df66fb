"""Percentile bootstrap confidence intervals for metrics computed on a whole evaluation set.

* :func:`bootstrap_ci` — a CI for any metric function. Resample rows with replacement (within
  each stratum when ``stratify`` is given, keeping stratum sizes), recompute the metric, take the
  ``alpha/2`` and ``1 − alpha/2`` percentiles. Resamples on which the metric is undefined (``None``
  or NaN, e.g. a binary AUROC on a resample without positives) are skipped and counted.
* :func:`with_confidence_intervals` — adds ``result["ci"]`` to a dict from
  :func:`~visionfm.metrics.classification_metrics` or
  :func:`~visionfm.metrics.regression_metrics` for its main scalar metrics, using vectorised
  kernels (all resamples of a chunk in one numpy call).

Defaults: ``bootstrap_ci`` uses ``n_boot=1000``; ``with_confidence_intervals`` uses 500, which
keeps an end-of-training evaluation to a few seconds for ~10⁴ images while the percentile
endpoints move by well under a point of AUROC between seeds. Results are deterministic for a
given ``seed``. Classification resamples are stratified by the true class by default, so every
resample keeps the class counts (and every macro mean has the same classes defined).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from scipy.stats import rankdata

from visionfm.metrics._common import as_numpy

__all__ = ["BootstrapCI", "bootstrap_ci", "with_confidence_intervals", "DEFAULT_N_BOOT", "REPORT_N_BOOT"]

DEFAULT_N_BOOT = 1000
REPORT_N_BOOT = 500
_CHUNK_ELEMENTS = 4_000_000  # resampled elements held at once, per chunk


class BootstrapCI(tuple[float | None, float | None]):
    """``(low, high)`` that also carries how it was obtained.

    Unpacks as a 2-tuple (``low, high = ci``); ``low``/``high`` are ``None`` when no resample gave
    a defined value. Extra attributes: ``n_boot``, ``n_valid``, ``n_skipped``, ``alpha``, ``seed``,
    ``stratified``.
    """

    n_boot: int
    n_valid: int
    alpha: float
    seed: int | None
    stratified: bool

    def __new__(
        cls,
        low: float | None,
        high: float | None,
        n_boot: int = 0,
        n_valid: int = 0,
        alpha: float = 0.05,
        seed: int | None = None,
        stratified: bool = False,
    ) -> BootstrapCI:
        obj = super().__new__(cls, (low, high))
        obj.n_boot = int(n_boot)
        obj.n_valid = int(n_valid)
        obj.alpha = float(alpha)
        obj.seed = seed
        obj.stratified = bool(stratified)
        return obj

    def __getnewargs__(self) -> tuple[Any, ...]:  # keeps pickling / copy working
        return (self[0], self[1], self.n_boot, self.n_valid, self.alpha, self.seed, self.stratified)

    @property
    def low(self) -> float | None:
        return self[0]

    @property
    def high(self) -> float | None:
        return self[1]

    @property
    def n_skipped(self) -> int:
        return self.n_boot - self.n_valid

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description: low, high, level, n_boot, n_valid, n_skipped."""
        return {
            "low": self.low,
            "high": self.high,
            "level": 1.0 - self.alpha,
            "n_boot": self.n_boot,
            "n_valid": self.n_valid,
            "n_skipped": self.n_skipped,
        }

    def __repr__(self) -> str:
        return f"BootstrapCI(low={self.low!r}, high={self.high!r}, n_valid={self.n_valid}/{self.n_boot})"


# --------------------------------------------------------------------------------------------
# Resampling engine
# --------------------------------------------------------------------------------------------


def _strata(stratify: Any, n: int) -> list[np.ndarray] | None:
    if stratify is None:
        return None
    s = as_numpy(stratify, name="stratify")
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"stratify must be a [N] array of group labels with N={n}, got shape {tuple(s.shape)}")
    _, inv = np.unique(s, return_inverse=True)
    return [np.flatnonzero(inv == g) for g in range(int(inv.max()) + 1)] if n else []


def _index_chunks(n: int, n_boot: int, seed: int, strata: list[np.ndarray] | None, width: int) -> Iterator[np.ndarray]:
    """Yield ``[b, N]`` resampling index arrays, ``n_boot`` rows in total."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(1, n * width)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        if strata is None:
            idx = rng.integers(0, n, size=(b, n))
        else:
            idx = np.concatenate([g[rng.integers(0, len(g), size=(b, len(g)))] for g in strata], axis=1)
        yield idx
        done += b


def _prepare(arrays: Sequence[Any]) -> tuple[list[np.ndarray], int, int]:
    arrs = [as_numpy(a, name=f"array {i}") for i, a in enumerate(arrays)]
    if not arrs:
        raise ValueError("bootstrap needs at least one array to resample")
    n = arrs[0].shape[0] if arrs[0].ndim else 0
    for i, a in enumerate(arrs):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"all arrays must share their first dimension N={n}; array {i} has shape {tuple(a.shape)}")
    if n == 0:
        raise ValueError("cannot bootstrap an empty evaluation set")
    width = sum(int(np.prod(a.shape[1:])) if a.ndim > 1 else 1 for a in arrs)
    return arrs, n, width


def _interval(values: np.ndarray, n_boot: int, alpha: float, seed: int, stratified: bool) -> BootstrapCI:
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return BootstrapCI(None, None, n_boot, 0, alpha, seed, stratified)
    low, high = np.quantile(ok, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(float(low), float(high), n_boot, int(ok.size), alpha, seed, stratified)


def _as_float(v: Any) -> float:
    if v is None:
        return math.nan
    f = float(v)
    return f if math.isfinite(f) else math.nan


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    *arrays: Any,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = 0.05,
    seed: int = 0,
    stratify: Any = None,
    vectorized: bool = False,
) -> BootstrapCI:
    """Percentile bootstrap confidence interval of ``metric_fn(*arrays)``.

    Args:
        metric_fn: called on resampled copies of ``arrays`` (rows drawn with replacement); returns
            a float, or ``None``/NaN when undefined on that resample. With ``vectorized=True`` it
            receives arrays with a leading resample axis (``[b, N, ...]``) and returns ``[b]``.
        *arrays: arrays sharing their first dimension ``N`` (numpy or torch).
        n_boot: number of resamples (default 1000).
        alpha: ``1 − alpha`` is the coverage (0.05 → 95 % CI).
        seed: seed of the resampling generator; equal seeds give equal intervals.
        stratify: optional ``[N]`` group labels; each resample keeps every group's size.
        vectorized: see ``metric_fn``.

    Returns:
        :class:`BootstrapCI` — unpacks as ``(low, high)``; ``n_skipped`` counts undefined resamples.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha}; expected a value in (0, 1)")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot={n_boot}; expected at least 1")
    arrs, n, width = _prepare(arrays)
    strata = _strata(stratify, n)
    values: list[np.ndarray] = []
    for idx in _index_chunks(n, int(n_boot), seed, strata, width):
        if vectorized:
            out = np.asarray(metric_fn(*(a[idx] for a in arrs)), dtype=np.float64).reshape(-1)
            if out.shape[0] != idx.shape[0]:
                raise ValueError(f"vectorized metric_fn returned {out.shape[0]} values for {idx.shape[0]} resamples")
            values.append(out)
        else:
            values.append(np.array([_as_float(metric_fn(*(a[row] for a in arrs))) for row in idx]))
    return _interval(np.concatenate(values), int(n_boot), alpha, seed, strata is not None)


# --------------------------------------------------------------------------------------------
# Vectorised kernels: inputs carry a leading resample axis, outputs are [b] with NaN = undefined.
# Hand-written because scikit-learn scores one resample per call (500 Python calls per metric); the
# tests check each kernel against classification_metrics (scikit-learn) on the original sample.
# --------------------------------------------------------------------------------------------


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    ok = np.isfinite(x)
    cnt = ok.sum(axis)
    return _div(np.where(ok, x, 0.0).sum(axis), cnt)


def _k_auroc(y: np.ndarray, s: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """Rank AUROC per row of ``[b, N]``; rows masked out by ``m`` are pushed above every score."""
    y = y.astype(bool)
    if m is not None:
        y = y & m
        s = np.where(m, s, np.inf)
        n_all = m.sum(1)
    else:
        n_all = np.full(y.shape[0], y.shape[1])
    ranks = rankdata(s, axis=1)
    p = y.sum(1).astype(np.float64)
    q = n_all - p
    return _div((ranks * y).sum(1) - p * (p + 1) / 2.0, p * q)


def _k_ap(y: np.ndarray, s: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """Average precision per row of ``[b, N]``; masked rows sink below every score and add nothing."""
    y = y.astype(bool)
    if m is not None:
        y = y & m
        s = np.where(m, s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    ys = np.take_along_axis(y, order, 1).astype(np.float64)
    ss = np.take_along_axis(s, order, 1)
    tps = np.cumsum(ys, 1)
    is_last = np.ones_like(ys, dtype=bool)
    is_last[:, :-1] = ss[:, :-1] != ss[:, 1:]
    reached = np.maximum.accumulate(np.where(is_last, tps, 0.0), axis=1)
    prev = np.concatenate([np.zeros((ys.shape[0], 1)), reached[:, :-1]], axis=1)
    rank = np.arange(1, ys.shape[1] + 1, dtype=np.float64)[None, :]
    contrib = np.where(is_last, (tps - prev) * tps / rank, 0.0)
    return _div(contrib.sum(1), tps[:, -1])


def _batched_cm(y: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    b = y.shape[0]
    idx = (np.arange(b)[:, None] * c * c + y * c + pred).reshape(-1)
    return np.bincount(idx, minlength=b * c * c).reshape(b, c, c).astype(np.float64)


def _cm_scalars(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro F1, balanced accuracy and kappas from ``[b, C, C]`` confusion matrices."""
    c = cm.shape[1]
    n = cm.sum((1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    rows, cols = cm.sum(2), cm.sum(1)
    f1 = _div(2 * tp, rows + cols)
    i, j = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    expected = _div(rows[:, :, None] * cols[:, None, :], n[:, None, None])
    out = {
        "accuracy": _div(tp.sum(1), n),
        "balanced_accuracy": _nanmean(_div(tp, rows)),
        "f1_macro": _nanmean(f1),
    }
    weights = {
        "cohen_kappa": (i != j).astype(np.float64),
        "quadratic_weighted_kappa": ((i - j) ** 2).astype(np.float64),
    }
    for key, w in weights.items():
        den = (w * expected).sum((1, 2))
        out[key] = 1.0 - _div((w * cm).sum((1, 2)), den)
        out[key] = np.where(den > 0, out[key], np.nan)
    return out


def _binary_kernel(threshold: float) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    def kernel(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
        yb = y.astype(bool)
        pred = s >= threshold
        tp = (pred & yb).sum(1)
        fp = (pred & ~yb).sum(1)
        fn = (~pred & yb).sum(1)
        tn = (~pred & ~yb).sum(1)
        cm = np.stack([np.stack([tn, fp], 1), np.stack([fn, tp], 1)], 1).astype(np.float64)
        out = _cm_scalars(cm)
        del out["quadratic_weighted_kappa"]
        out.update(
            {
                "auroc": _k_auroc(yb, s),
                "aupr": _k_ap(yb, s),
                "sensitivity": _div(tp, tp + fn),
                "specificity": _div(tn, tn + fp),
                "f1_positive": _div(2 * tp, 2 * tp + fp + fn),
            }
        )
        return out

    return kernel


def _multiclass_kernel(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    c = s.shape[-1]
    out = _cm_scalars(_batched_cm(y, s.argmax(-1), c))
    out["auroc_macro"] = _nanmean(np.stack([_k_auroc(y == k, s[..., k]) for k in range(c)], -1))
    out["aupr_macro"] = _nanmean(np.stack([_k_ap(y == k, s[..., k]) for k in range(c)], -1))
    return out


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    da = a - a.mean(1, keepdims=True)
    db = b - b.mean(1, keepdims=True)
    return _div((da * db).sum(1), np.sqrt((da**2).sum(1) * (db**2).sum(1)))


def _ordinal_kernel(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    """The ``result["ordinal"]`` metrics (as ``"ordinal.<key>"``) per resample of grades ``y`` ``[b, N]``."""
    c = s.shape[-1]
    pred = s.argmax(-1)
    cm = _batched_cm(y, pred, c)
    n = cm.sum((1, 2))
    i, j = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    dist = np.abs(i - j).astype(np.float64)
    rows, cols = cm.sum(2), cm.sum(1)
    expected_cm = _div(rows[:, :, None] * cols[:, None, :], n[:, None, None])
    out: dict[str, np.ndarray] = {}
    for key, w in (("quadratic_kappa", dist**2), ("linear_kappa", dist)):
        den = (w * expected_cm).sum((1, 2))
        out[f"ordinal.{key}"] = np.where(den > 0, 1.0 - _div((w * cm).sum((1, 2)), den), np.nan)
    out["ordinal.mean_absolute_error"] = _div((dist * cm).sum((1, 2)), n)
    out["ordinal.within_one_accuracy"] = _div(((dist <= 1) * cm).sum((1, 2)), n)
    # Spearman = Pearson correlation of the average ranks (scipy.stats.spearmanr's definition).
    ranks_y = rankdata(y, axis=1)
    out["ordinal.spearman"] = _pearson_rows(ranks_y, rankdata(pred, axis=1))
    total = s.sum(-1)
    grade = (s * np.arange(c)).sum(-1) / np.where(total > 0, total, 1.0)
    out["ordinal.spearman_expected_grade"] = _pearson_rows(ranks_y, rankdata(grade, axis=1))
    return out


def _multiclass_ordinal_kernel(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    return {**_multiclass_kernel(y, s), **_ordinal_kernel(y, s)}


def _multilabel_kernel(threshold: np.ndarray) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    def kernel(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
        ann = np.isfinite(y) & (y >= 0)
        pos = ann & (y == 1)
        per: dict[str, list[np.ndarray]] = {k: [] for k in ("auroc", "aupr", "sensitivity", "specificity", "f1")}
        for j in range(y.shape[-1]):
            m, yj, sj = ann[..., j], pos[..., j], s[..., j]
            pj = (sj >= threshold[j]) & m
            tp = (pj & yj).sum(1)
            fp = (pj & ~yj).sum(1)
            fn = (~pj & yj).sum(1)
            tn = m.sum(1) - tp - fp - fn
            per["auroc"].append(_k_auroc(yj, sj, m))
            per["aupr"].append(_k_ap(yj, sj, m))
            per["sensitivity"].append(_div(tp, tp + fn))
            per["specificity"].append(_div(tn, tn + fp))
            per["f1"].append(_div(2 * tp, 2 * tp + fp + fn))
        return {f"{k}_macro": _nanmean(np.stack(v, -1)) for k, v in per.items()}

    return kernel


def _regression_kernel(names: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    def kernel(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        m = np.isfinite(y)
        cnt = m.sum(1).astype(np.float64)  # [b, T]
        y0 = np.where(m, y, 0.0)
        p0 = np.where(m, p, 0.0)
        e = p0 - y0
        mae = _div(np.abs(e).sum(1), cnt)
        rmse = np.sqrt(_div((e**2).sum(1), cnt))
        my = _div(y0.sum(1), cnt)
        mp = _div(p0.sum(1), cnt)
        dy = np.where(m, y0 - my[:, None, :], 0.0)
        dp = np.where(m, p0 - mp[:, None, :], 0.0)
        ss_tot = (dy**2).sum(1)
        r2 = 1.0 - _div((e**2).sum(1), ss_tot)
        r2 = np.where(ss_tot > 0, r2, np.nan)
        pearson = _div((dy * dp).sum(1), np.sqrt(ss_tot * (dp**2).sum(1)))
        out = {
            "mae_mean": _nanmean(mae),
            "rmse_mean": _nanmean(rmse),
            "r2_mean": _nanmean(r2),
            "pearson_r_mean": _nanmean(pearson),
        }
        if len(names) > 1:
            for t, name in enumerate(names):
                out[f"mae[{name}]"] = mae[:, t]
        return out

    return kernel


# --------------------------------------------------------------------------------------------
# Attaching intervals to a result dict
# --------------------------------------------------------------------------------------------


def with_confidence_intervals(
    result: dict[str, Any],
    y_true: Any,
    scores: Any,
    *,
    n_boot: int = REPORT_N_BOOT,
    alpha: float = 0.05,
    seed: int = 0,
    stratify: bool = True,
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Return a copy of ``result`` with percentile bootstrap CIs for its main scalar metrics.

    Args:
        result: output of :func:`~visionfm.metrics.classification_metrics` or
            :func:`~visionfm.metrics.regression_metrics` (its ``task``, ``threshold`` and
            ``class_names``/``target_names`` say how to recompute the metrics).
        y_true: the same ground truth that produced ``result``.
        scores: the same scores (classification) or predictions (regression).
        n_boot: resamples (default 500, see the module docstring).
        alpha: 0.05 gives 95 % intervals.
        seed: resampling seed.
        stratify: resample within each true class (binary and multiclass only).
        metrics: restrict to these keys; default: every supported key of the task
            (binary: accuracy, balanced_accuracy, auroc, aupr, sensitivity, specificity, f1_macro,
            f1_positive, cohen_kappa; multiclass: accuracy, balanced_accuracy, auroc_macro,
            aupr_macro, f1_macro, cohen_kappa, quadratic_weighted_kappa, and when ``result`` has
            ``"ordinal"`` also ``ordinal.quadratic_kappa``, ``ordinal.linear_kappa``,
            ``ordinal.mean_absolute_error``, ``ordinal.within_one_accuracy``, ``ordinal.spearman``,
            ``ordinal.spearman_expected_grade``; multilabel: auroc_macro,
            aupr_macro, sensitivity_macro, specificity_macro, f1_macro; regression: mae_mean,
            rmse_mean, r2_mean, pearson_r_mean and ``mae[<target>]``).

    Returns:
        The copy, with ``"ci": {key: {"low", "high", "level", "n_boot", "n_valid", "n_skipped"}}``
        and ``"ci_method"`` describing the procedure.
    """
    task = result.get("task")
    out = copy.deepcopy(result)
    strat_note = None
    y: np.ndarray  # 1-D labels or [N, C] targets, depending on the task
    if task == "binary":
        y = as_numpy(y_true, name="y_true").reshape(-1).astype(np.int64)
        s = as_numpy(scores, name="scores", dtype=np.float64)
        s = s[:, -1] if s.ndim == 2 else s
        kernel = _binary_kernel(float(result.get("threshold", 0.5)))
        arrays = [y, s]
        strat = y if stratify else None
        strat_note = "true class" if stratify else None
    elif task == "multiclass":
        s = as_numpy(scores, name="scores", dtype=np.float64)
        y = as_numpy(y_true, name="y_true")
        y = (y.argmax(1) if (y.ndim == 2 and y.shape[1] > 1) else y.reshape(-1)).astype(np.int64)
        # result["ordinal"] is present when the metrics were computed with ordinal=True.
        kernel = _multiclass_ordinal_kernel if isinstance(result.get("ordinal"), dict) else _multiclass_kernel
        arrays = [y, s]
        strat = y if stratify else None
        strat_note = "true class" if stratify else None
    elif task == "multilabel":
        y = as_numpy(y_true, name="y_true", dtype=np.float64)
        s = as_numpy(scores, name="scores", dtype=np.float64)
        thr = np.broadcast_to(np.asarray(result.get("threshold", 0.5), dtype=np.float64), (s.shape[1],))
        kernel = _multilabel_kernel(thr)
        arrays = [y, s]
        strat = None
    elif task == "regression":
        y = as_numpy(y_true, name="y_true", dtype=np.float64)
        p = as_numpy(scores, name="y_pred", dtype=np.float64)
        y, p = (y[:, None], p[:, None]) if y.ndim == 1 else (y, p)
        kernel = _regression_kernel(result.get("target_names") or [f"target {t}" for t in range(y.shape[1])])
        arrays = [y, p]
        strat = None
    else:
        raise ValueError(f"result['task']={task!r}; expected binary, multiclass, multilabel or regression")

    arrs, n, width = _prepare(arrays)
    strata = _strata(strat, n)
    collected: dict[str, list[np.ndarray]] = {}
    for idx in _index_chunks(n, int(n_boot), seed, strata, width):
        for key, vals in kernel(*(a[idx] for a in arrs)).items():
            collected.setdefault(key, []).append(np.asarray(vals, dtype=np.float64))
    wanted = list(metrics) if metrics is not None else list(collected)
    unknown = [k for k in wanted if k not in collected]
    if unknown:
        raise ValueError(f"no bootstrap kernel for {unknown!r} (task {task}); available: {sorted(collected)}")
    ci: dict[str, Any] = {}
    for key in wanted:
        ci[key] = _interval(np.concatenate(collected[key]), int(n_boot), alpha, seed, strata is not None).as_dict()
    out["ci"] = ci
    out["ci_method"] = {
        "method": "percentile bootstrap over images",
        "n_boot": int(n_boot),
        "level": 1.0 - alpha,
        "seed": int(seed),
        "stratified_by": strat_note,
        "undefined_resamples": "skipped and counted in n_skipped",
    }
    return out
