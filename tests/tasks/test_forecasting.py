"""ForecastHead and ``visionfm train-forecast`` on synthetic forecasting data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tasks.test_features import run_cli
from visionfm.models.heads.forecast import ForecastHead, sinusoidal_table


def test_sinusoidal_table_matches_formula():
    pe = sinusoidal_table(50, 8)
    t, i = 37, 2
    ang = t * np.exp(-2 * i * np.log(10000.0) / 8)
    assert pe.shape == (50, 8)
    assert abs(float(pe[t, 2 * i]) - np.sin(ang)) < 1e-6 and abs(float(pe[t, 2 * i + 1]) - np.cos(ang)) < 1e-6


def test_forecast_head_shapes_projection_and_range():
    head = ForecastHead(16, max_len=100, in_features=64)  # n·D concat is projected to D
    x, days = torch.randn(5, 64), torch.tensor([0, 1, 50, 98, 99])
    out = head(x, days)
    assert out.shape == (5,)
    packed = torch.cat([x, days.float().unsqueeze(1)], 1)
    assert torch.allclose(head(packed), out)
    assert "pe" not in head.state_dict()  # a fixed buffer, rebuilt from (D, max_len)
    with pytest.raises(ValueError, match="outside the positional encoding range"):
        head(x[:1], torch.tensor([100]))
    with pytest.raises(ValueError, match="outside"):
        head(x[:1], torch.tensor([-1]))
    with pytest.raises(ValueError, match="width"):
        ForecastHead(16, 100)(x, days)


def test_train_forecast_beats_interval_only_baseline(tmp_path):
    from visionfm.data.synth import generate
    from visionfm.metrics import binary_auroc
    from visionfm.tasks.forecasting import interval_baseline

    size = 64
    generate("forecasting", tmp_path / "data", num=200, img_size=size, seed=0)
    root = tmp_path / "data" / "GlaucomaForecasting"
    out = tmp_path / "out"
    # a RANDOM frozen vit_tiny: the enlarged synthetic cup is visible in its mean patch token
    common = ["--data_path", str(root), "--pretrained_weights", "random", "--arch", "vit_tiny",
              "--input_size", str(size), "--patch_size", "16", "--avgpool_patchtokens", "1", "--epochs", "60",
              "--optimizer", "adamw", "--lr", "0.003", "--weight_decay", "0.05", "--batch_size_per_gpu", "64",
              "--num_workers", "0", "--pos_weight", "1", "--output_dir", str(out), "--device", "cpu",
              "--report_n_boot", "0"]
    assert run_cli("train-forecast", "--name", "fc", *common) == 0
    run = out / "fc"
    m = json.loads((run / "report" / "metrics.json").read_text())
    fc, base = m["forecast"], m["baseline_interval_only"]
    # the interval-only baseline, recomputed independently
    lines = [ln.split(", ") for ln in (root / "test.txt").read_text().splitlines()]
    tr = [ln.split(", ") for ln in (root / "training.txt").read_text().splitlines()]
    y = np.array([int(v[1]) for v in lines])
    p = interval_baseline(np.array([int(v[2]) for v in tr]), np.array([int(v[1]) for v in tr]),
                          np.array([int(v[2]) for v in lines]))
    assert abs(binary_auroc(y, p) - base["auroc"]) < 1e-9
    print("forecaster AUROC", fc["auroc"], "interval-only AUROC", base["auroc"])
    # image + interval must clearly beat the interval alone (seed 0: ≈0.934 vs 0.872)
    assert fc["auroc"] >= base["auroc"] + 0.03, (fc["auroc"], base["auroc"])
    for key in ("aupr", "f1", "sensitivity_at_specificity_0.9"):
        assert fc[key] is not None
    assert set(m["by_interval"]) == {"<1y", "1y-3y", ">=3y"}
    assert sum(b["n"] for b in m["by_interval"].values()) == fc["n"] == 200
    html = (run / "report" / "report.html").read_text()
    assert "Results by interval" in html and "interval-only" in html
    assert (run / "features" / "training" / "features.safetensors").is_file()  # a feature store
    best = json.loads((run / "checkpoint_best.json").read_text())
    assert best["test_metrics"]["auroc"] == fc["auroc"] and best["selection_key"] == "auroc"
    # the selected model as a model folder: it reproduces the run's own test probabilities from the images
    from visionfm.inference.io import read_image
    from visionfm.packaging import from_pretrained

    folder = run / "model"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["task"] == "forecasting" and cfg["head"]["type"] == "forecast_std" and cfg["max_days"] == 6499
    per = json.loads((run / "fc_Fundus_results.json").read_text())
    model = from_pretrained(folder)
    paths = sorted(per)[:48]
    pred = model.predict([read_image(p) for p in paths], days=[per[p]["days"] for p in paths])
    assert np.abs(pred["probabilities"] - np.array([per[p]["pred"] for p in paths])).max() < 1e-4
    # visionfm predict --days on that folder
    assert run_cli("predict", "--model", str(folder), "--input", paths[0], "--days", "90", "2000",
                   "--output", str(tmp_path / "pred"), "--device", "cpu", "--no_attention") == 0
    recs = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    recs = recs["predictions"] if isinstance(recs, dict) else recs
    assert sorted(r["days"] for r in recs) == [90.0, 2000.0]
    p90, p2000 = (model.predict([read_image(paths[0])], days=[d])["probabilities"][0] for d in (90, 2000))
    got = {r["days"]: r["probabilities"]["progression"] for r in recs}
    assert abs(got[90.0] - p90) < 1e-5 and abs(got[2000.0] - p2000) < 1e-5
    # a rerun under another name reuses nothing of the first; the same name reuses the feature cache
    before = (run / "features" / "test" / "features.safetensors").stat().st_mtime_ns
    assert run_cli("train-forecast", "--name", "fc", *common[:-6], "--epochs", "61", *common[-6:],
                   "--overwrite") == 0
    assert (run / "features" / "test" / "features.safetensors").stat().st_mtime_ns == before


def test_train_forecast_rejects_out_of_range_interval(tmp_path, capsys):
    from visionfm.data.synth import generate

    generate("forecasting", tmp_path / "data", num=6, img_size=32, seed=1)
    root = tmp_path / "data" / "GlaucomaForecasting"
    rc = run_cli("train-forecast", "--name", "x", "--data_path", str(root), "--pretrained_weights", "random",
                 "--arch", "vit_tiny", "--input_size", "32", "--max_len", "20", "--epochs", "1",
                 "--num_workers", "0", "--output_dir", str(tmp_path / "o"), "--device", "cpu")
    assert rc == 2
    assert "max_days=20" in capsys.readouterr().err
