"""Bootstrap intervals: coverage of the point estimate, determinism, skipping undefined resamples,
and agreement of the vectorised kernels with the point metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visionfm.metrics import (
    binary_auroc,
    bootstrap_ci,
    classification_metrics,
    regression_metrics,
    with_confidence_intervals,
)
from visionfm.metrics import bootstrap as bs


def _binary(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return y, s


def _accuracy(y, s):
    return float(np.mean((s >= 0.5) == y))


def test_ci_contains_estimate_and_is_deterministic():
    y, s = _binary()
    ci = bootstrap_ci(binary_auroc, y, s, n_boot=200, seed=1)
    low, high = ci
    assert low < binary_auroc(y, s) < high
    assert ci.n_valid == 200 and ci.n_skipped == 0
    assert tuple(bootstrap_ci(binary_auroc, y, s, n_boot=200, seed=1)) == (low, high)
    assert tuple(bootstrap_ci(binary_auroc, y, s, n_boot=200, seed=2)) != (low, high)
    assert ci.as_dict()["level"] == pytest.approx(0.95)


def test_vectorised_and_loop_forms_agree():
    y, s = _binary()
    loop = bootstrap_ci(_accuracy, y, s, n_boot=100, seed=3)
    vec = bootstrap_ci(lambda yy, ss: np.mean((ss >= 0.5) == yy, axis=1), y, s, n_boot=100, seed=3, vectorized=True)
    assert tuple(loop) == pytest.approx(tuple(vec))


def test_stratified_resamples_keep_group_sizes():
    y, s = _binary()
    ci = bootstrap_ci(lambda yy: int(yy.sum()), y, n_boot=50, stratify=y)
    assert ci.low == ci.high == int(y.sum())


def test_undefined_resamples_are_skipped_and_counted():
    y = np.zeros(20, dtype=int)
    y[0] = 1  # a single positive: many resamples have none, so AUROC is undefined there
    s = np.linspace(0, 1, 20)
    ci = bootstrap_ci(binary_auroc, y, s, n_boot=100, seed=0)
    # P(resample without the positive) = (19/20)^20 ≈ 0.36.
    assert 15 < ci.n_skipped < 60 and ci.n_valid + ci.n_skipped == 100
    none = bootstrap_ci(binary_auroc, np.zeros(5, int), np.arange(5) / 5, n_boot=10)
    assert tuple(none) == (None, None) and none.n_skipped == 10


def _identity(kernel, *arrays):
    """Run a vectorised kernel on the original sample (one 'resample' = the data itself)."""
    return {k: float(v[0]) for k, v in kernel(*(a[None] for a in arrays)).items()}


def test_kernels_reproduce_point_metrics():
    y, s = _binary()
    s = np.round(s, 2)  # ties exercise the rank and AP code paths
    point = classification_metrics(y, s, "binary")
    for key, value in _identity(bs._binary_kernel(0.5), y, s).items():
        assert value == pytest.approx(point[key]), key

    rng = np.random.default_rng(1)
    ym = rng.integers(0, 4, 120)
    ym[ym == 3] = 2  # class 3 absent: macro means over the 3 defined classes
    p = rng.dirichlet(np.ones(4), 120)
    point = classification_metrics(ym, p, "multiclass")
    for key, value in _identity(bs._multiclass_kernel, ym, p).items():
        assert value == pytest.approx(point[key]), key

    yl = (rng.random((80, 3)) < 0.3).astype(float)
    yl[:9, 0] = -1
    sl = np.clip(0.4 * yl + 0.6 * rng.random((80, 3)), 0, 1)
    point = classification_metrics(yl, sl, "multilabel")
    for key, value in _identity(bs._multilabel_kernel(np.full(3, 0.5)), yl, sl).items():
        assert value == pytest.approx(point[key]), key

    yr = rng.normal(size=(50, 3))
    pr = yr + rng.normal(size=(50, 3))
    yr[:4, 1] = np.nan
    point = regression_metrics(yr, pr)
    got = _identity(bs._regression_kernel(point["target_names"]), yr, pr)
    for key in ("mae_mean", "rmse_mean", "r2_mean", "pearson_r_mean"):
        assert got[key] == pytest.approx(point[key]), key
    assert got["mae[target 1]"] == pytest.approx(point["per_target"]["target 1"]["mae"])


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression"])
def test_with_confidence_intervals_brackets_point_estimates(task):
    rng = np.random.default_rng(5)
    if task == "binary":
        y, s = _binary(150)
        result = classification_metrics(y, s, task)
    elif task == "multiclass":
        y = rng.integers(0, 3, 150)
        s = rng.dirichlet(np.ones(3), 150)
        s[np.arange(150), y] += 0.5
        s /= s.sum(1, keepdims=True)
        result = classification_metrics(y, s, task)
    elif task == "multilabel":
        y = (rng.random((150, 3)) < 0.4).astype(float)
        s = np.clip(0.4 * y + 0.6 * rng.random((150, 3)), 0, 1)
        result = classification_metrics(y, s, task)
    else:
        y = rng.normal(size=(150, 2))
        s = y + 0.5 * rng.normal(size=(150, 2))
        result = regression_metrics(y, s)
    out = with_confidence_intervals(result, y, s, n_boot=100, seed=0)
    assert "ci" not in result  # the input is not modified
    assert out["ci_method"]["n_boot"] == 100
    for key, ci in out["ci"].items():
        if key in out:
            assert ci["low"] <= out[key] <= ci["high"], key
    again = with_confidence_intervals(result, y, s, n_boot=100, seed=0)
    assert again["ci"] == out["ci"]
    json.dumps(out, allow_nan=False)


def test_with_confidence_intervals_rejects_unknown_metric():
    y, s = _binary()
    result = classification_metrics(y, s, "binary")
    with pytest.raises(ValueError, match="no bootstrap kernel"):
        with_confidence_intervals(result, y, s, n_boot=5, metrics=["auroc", "hd95"])


# -- the level is really 95 %: scipy's percentile bootstrap on the same data ---------------------------

N_BOOT_REF = 20_000


def _scipy_percentile_ci(data, statistic, level, paired=False):
    from scipy.stats import bootstrap

    res = bootstrap(data, statistic, method="percentile", confidence_level=level, n_resamples=N_BOOT_REF,
                    paired=paired, vectorized=True, random_state=np.random.default_rng(12345))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _assert_matches_95_not_90(ours, ref95, ref90):
    """Each endpoint within a third of the 95 %-vs-90 % gap of scipy's (Monte-Carlo error of either side with
    20 000 resamples is about a tenth of that gap), so an interval at another level cannot pass."""
    for i, side in enumerate(("low", "high")):
        gap = abs(ref95[i] - ref90[i])
        assert gap > 0
        assert abs(ours[i] - ref95[i]) < gap / 3, (side, ours, ref95, ref90)


def test_bootstrap_ci_is_scipys_95_percent_percentile_interval():
    x = np.random.default_rng(7).gamma(2.0, 1.0, 300)  # skewed: the percentile interval is not symmetric
    ours = bootstrap_ci(lambda a: a.mean(axis=1), x, n_boot=N_BOOT_REF, seed=0, vectorized=True)
    assert ours.as_dict()["level"] == pytest.approx(0.95)
    stat = lambda a, axis=-1: a.mean(axis=axis)  # noqa: E731
    _assert_matches_95_not_90(tuple(ours), _scipy_percentile_ci((x,), stat, 0.95), _scipy_percentile_ci((x,), stat, 0.90))


def test_report_intervals_are_scipys_95_percent_percentile_intervals():
    """with_confidence_intervals (what the reports use) at its defaults: the regression MAE interval."""
    rng = np.random.default_rng(8)
    y = rng.normal(size=300)
    p = y + rng.standard_t(3, size=300)
    result = regression_metrics(y, p)
    out = with_confidence_intervals(result, y, p, n_boot=N_BOOT_REF, seed=0, metrics=["mae_mean"])
    ci = out["ci"]["mae_mean"]
    assert ci["level"] == pytest.approx(0.95) and out["ci_method"]["level"] == pytest.approx(0.95)
    mae = lambda a, b, axis=-1: np.abs(a - b).mean(axis=axis)  # noqa: E731
    ref95 = _scipy_percentile_ci((y, p), mae, 0.95, paired=True)
    ref90 = _scipy_percentile_ci((y, p), mae, 0.90, paired=True)
    _assert_matches_95_not_90((ci["low"], ci["high"]), ref95, ref90)


def test_ordinal_kernel_reproduces_point_metrics_and_is_bootstrapped():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 200)
    s = rng.dirichlet(np.ones(5), 200)
    s[np.arange(200), np.clip(y + rng.integers(-1, 2, 200), 0, 4)] += 1.0  # mostly within one grade
    s = np.round(s / s.sum(1, keepdims=True), 2)  # ties in the expected grade
    s /= s.sum(1, keepdims=True)
    point = classification_metrics(y, s, "multiclass", ordinal=True)
    got = _identity(bs._ordinal_kernel, y, s)
    assert set(got) == {f"ordinal.{k}" for k, v in point["ordinal"].items() if isinstance(v, float)}
    for key, value in got.items():
        assert value == pytest.approx(point["ordinal"][key.split(".", 1)[1]], abs=1e-12), key
    out = with_confidence_intervals(point, y, s, n_boot=100, seed=0)
    ci = out["ci"]["ordinal.quadratic_kappa"]
    assert ci["low"] <= point["ordinal"]["quadratic_kappa"] <= ci["high"] and ci["n_valid"] == 100
    assert "ordinal.quadratic_kappa" not in with_confidence_intervals(
        classification_metrics(y, s, "multiclass"), y, s, n_boot=5)["ci"]
