"""visionfm.metrics.regression against scikit-learn / numpy, and the original's relative MAE by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from visionfm.metrics import regression_metrics


def _data():
    rng = np.random.default_rng(0)
    y = rng.normal(10.0, 3.0, size=(30, 3))
    p = y + rng.normal(0.0, 1.0, size=(30, 3))
    return y, p


def test_matches_sklearn_per_target_and_mean():
    y, p = _data()
    r = regression_metrics(y, p, target_names=["IOP", "CDR", "RNFL"])
    names = ["IOP", "CDR", "RNFL"]
    mae = skm.mean_absolute_error(y, p, multioutput="raw_values")
    rmse = np.sqrt(skm.mean_squared_error(y, p, multioutput="raw_values"))
    r2 = skm.r2_score(y, p, multioutput="raw_values")
    pearson = [np.corrcoef(y[:, j], p[:, j])[0, 1] for j in range(3)]
    assert [r["per_target"][n]["mae"] for n in names] == pytest.approx(mae)
    assert [r["per_target"][n]["rmse"] for n in names] == pytest.approx(rmse)
    assert [r["per_target"][n]["r2"] for n in names] == pytest.approx(r2)
    assert [r["per_target"][n]["pearson_r"] for n in names] == pytest.approx(pearson)
    assert r["mae_mean"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert r["r2_mean"] == pytest.approx(skm.r2_score(y, p))
    assert r["rmse_mean"] == pytest.approx(rmse.mean())
    json.dumps(r, allow_nan=False)


def test_relative_mae_original_by_hand():
    # Target 0: |err| = 1, 1, 2 -> mean 4/3; mean y = 4 -> 1/3. Target 1: |err| = 0, 2, 2 -> 4/3; mean y = 2 -> 2/3.
    y = np.array([[2.0, 1.0], [4.0, 2.0], [6.0, 3.0]])
    p = np.array([[3.0, 1.0], [3.0, 4.0], [8.0, 1.0]])
    r = regression_metrics(y, p)
    assert r["per_target"]["target 0"]["relative_mae_original"] == pytest.approx(1 / 3)
    assert r["per_target"]["target 1"]["relative_mae_original"] == pytest.approx(2 / 3)
    assert r["relative_mae_original"] == pytest.approx(0.5)


def test_constant_target_is_undefined():
    y, p = _data()
    y[:, 1] = 5.0
    r = regression_metrics(torch.tensor(y), torch.tensor(p))
    row = r["per_target"]["target 1"]
    assert row["r2"] is None and row["pearson_r"] is None
    assert r["undefined"]["r2[target 1]"] == "target is constant in ground truth"
    assert r["averaged_over"]["r2_mean"] == {"n_defined": 2, "n_total": 3}
    assert r["r2_mean"] == pytest.approx(skm.r2_score(y[:, [0, 2]], p[:, [0, 2]]))
    assert row["mae"] == pytest.approx(np.abs(p[:, 1] - 5.0).mean())
    json.dumps(r, allow_nan=False)


def test_nan_truth_is_skipped_per_target_and_1d_input():
    y, p = _data()
    y[[0, 3], 2] = np.nan
    r = regression_metrics(y, p)
    keep = np.ones(30, bool)
    keep[[0, 3]] = False
    assert r["per_target"]["target 2"]["n"] == 28
    assert r["per_target"]["target 2"]["mae"] == pytest.approx(skm.mean_absolute_error(y[keep, 2], p[keep, 2]))
    assert r["per_target"]["target 0"]["n"] == 30
    one = regression_metrics(y[:, 0], p[:, 0])
    assert one["n_targets"] == 1 and one["mae_mean"] == pytest.approx(skm.mean_absolute_error(y[:, 0], p[:, 0]))
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics(y, np.full_like(p, np.nan))
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(y, p[:, :2])
