"""train-reg: RegHead, standardised targets, synthetic metric_reg beats the training-mean baseline."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from tests.tasks.test_features import run_cli


def test_reg_head_shapes_and_init():
    from visionfm.models.heads.reg import RegHead

    h = RegHead(3072, 38)
    assert [m.out_features for m in h.regressor if isinstance(m, torch.nn.Linear)] == [768, 38]
    assert h.channel_bn.eps == 1e-6 and abs(float(h.regressor[0].weight.std()) - 0.01) < 0.002
    assert float(h.regressor[3].bias.abs().sum()) == 0.0
    assert h(torch.randn(5, 3072)).shape == (5, 38)


def test_standardisation_and_masked_loss():
    from visionfm.tasks.regression import masked_smooth_l1, standardisation, standardised_mae

    y = torch.tensor([[1.0, 5.0, float("nan")], [3.0, 5.0, 2.0]])
    mean, std = standardisation(y)
    assert mean.tolist() == [2.0, 5.0, 2.0] and std.tolist() == [1.0, 1.0, 1.0]  # constant target: std 1
    z = torch.tensor([[0.0, 0.0, 9.0], [2.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0, float("nan")], [0.0, 0.0, 0.0]])
    assert float(masked_smooth_l1(z, t)) == pytest.approx(1.5 / 5)  # NaN entry ignored; |2| -> 2 - 0.5
    zmae, per = standardised_mae(z, t)
    assert per == [1.0, 0.0, 0.0] and zmae == pytest.approx(1 / 3)


def _targets(path, *names):
    path.mkdir(parents=True, exist_ok=True)
    (path / "targets.json").write_text(json.dumps({"targets": [
        {"index": i, "name": n, **({"unit": "0-255"} if n == "mean_red" else {})} for i, n in enumerate(names)]}))


def test_target_names_from_targets_json(tmp_path):
    from visionfm.errors import DataFormatError
    from visionfm.tasks.regression import read_target_names

    _targets(tmp_path / "A" / "ds", "mean_red", "disc_radius")
    _targets(tmp_path / "B" / "ds", "mean_red", "pupil")
    _targets(tmp_path / "C" / "ds", "mean_red", "disc_radius")
    # a folder is searched for the chosen datasets' files only
    names, files = read_target_names(3, [str(tmp_path)], entries=["A", "C"])
    assert names == ["mean_red [0-255]", "disc_radius", "target 2"] and len(files) == 2
    names, files = read_target_names(3, [str(tmp_path)], entries=["B"])
    assert names[1] == "pupil" and files == [str(tmp_path / "B" / "ds" / "targets.json")]
    # two chosen datasets that name one target differently are refused, naming both files
    with pytest.raises(DataFormatError, match=r"target 1 is 'pupil'.*'disc_radius'.*A/ds/targets.json"):
        read_target_names(3, [str(tmp_path)], entries=["A", "B"])
    with pytest.raises(Exception, match="none of its 3 targets.json files"):
        read_target_names(3, [str(tmp_path)], entries=["Other"])


def test_train_reg_beats_training_mean_in_original_units(tmp_path):
    from visionfm.data.synth import generate

    generate("metric_reg", tmp_path / "data", num=64, img_size=48, seed=0)
    for mod in ("Fundus", "External"):
        assert run_cli("extract", "--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size", "48",
                       "--modality", mod, "--data_path", str(tmp_path / "data" / f"{mod}Regression"),
                       "--dst_root", str(tmp_path / "feats" / f"{mod}Regression"), "--epochs", "1",
                       "--num_workers", "0", "--device", "cpu", "--batch_size_per_gpu", "64") == 0
    out = tmp_path / "out"
    # the synthetic Fundus and External targets differ after index 17, so they are not pooled with names
    common = ["--data_path", str(tmp_path / "feats"), "--datasets", "FundusRegression",
              "--embed_dim", "192", "--batch_size_per_gpu", "32", "--report_n_boot", "0", "--device", "cpu",
              "--output_dir", str(out), "--targets_json", str(tmp_path / "data")]
    assert run_cli("train-reg", "--name", "reg", "--epochs", "40", *common) == 0
    run = out / "reg"
    m = json.loads((run / "report" / "metrics.json").read_text())
    assert m["r2_mean"] > 0.1, m["r2_mean"]
    assert "relative_mae_original" in m and "mean_red [0-255]" in m["per_target"]
    # the predict-the-training-mean baseline, in original units
    best = json.loads((run / "checkpoint_best.json").read_text())
    mu = np.array(best["target_mean"])
    with open(run / "report" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = m["target_names"]
    y = np.array([[float(r[f"true_{n}"]) for n in names] for r in rows])
    p = np.array([[float(r[f"pred_{n}"]) for n in names] for r in rows])
    base_mae = np.abs(y - mu).mean(axis=0)
    model_mae = np.abs(y - p).mean(axis=0)
    assert (model_mae / base_mae).mean() < 0.9, (model_mae / base_mae).mean()
    # predictions are in the original units (mean red of a photograph is tens to hundreds, not ~0)
    j = names.index("mean_red [0-255]")
    assert 20 < p[:, j].mean() < 255 and abs(p[:, j].mean() - y[:, j].mean()) < 0.25 * y[:, j].mean()
    assert best["selection_key"] == "mae_std_mean" and best["higher_is_better"] is False
    # --test with the best checkpoint reproduces the report
    assert run_cli("train-reg", "--name", "again", "--test", "--load_from", str(run / "checkpoint_best"),
                   *common) == 0
    again = json.loads((out / "again" / "report" / "metrics.json").read_text())
    assert again["mae_mean"] == pytest.approx(m["mae_mean"])


def _tiny_reg_stores(root, d=8, n_train=24, n_test=8, n_targets=2):
    from visionfm.data.features import FeatureStore

    g = torch.Generator().manual_seed(0)
    for split, n in (("training", n_train), ("test", n_test)):
        FeatureStore.write(root / "Reg" / "ds" / split / "pass_0", torch.randn(n, 4, d, generator=g),
                           1.0 + torch.rand(n, n_targets, generator=g),
                           [{"rel_path": f"ds/{split}/{i}.png", "dataset": "ds", "subject": ""} for i in range(n)],
                           {"weights_fingerprint": "f", "arch": None, "modality": "Fundus", "split": split, "pass": 0})


def _lrs_and_groups(run):
    rows = [json.loads(line) for line in (run / "log.txt").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "train_loss" in r]
    groups = json.loads((run / "checkpoint_last.json").read_text())["optimizer"]["param_groups"]
    return lrs, groups


def test_train_reg_defaults_are_the_originals_raw_constant_lr_and_flags_restore_scaling_and_cosine(tmp_path):
    """train_metric_reg_multi_decoder.py: AdamW(--lr, betas (0.9, 0.999), wd 0.05), no batch scaling, no scheduler."""
    import math

    _tiny_reg_stores(tmp_path / "stores")
    common = ["--data_path", str(tmp_path / "stores"), "--datasets", "Reg", "--num_labels", "2", "--epochs", "4",
              "--batch_size_per_gpu", "8", "--report_n_boot", "0", "--device", "cpu", "--output_dir", str(tmp_path)]
    assert run_cli("train-reg", "--name", "orig", *common) == 0
    lrs, groups = _lrs_and_groups(tmp_path / "orig")
    assert lrs == [0.001] * 4
    assert [(g["lr"], g["betas"], g["weight_decay"]) for g in groups] == [(0.001, [0.9, 0.999], 0.05)]
    assert run_cli("train-reg", "--name", "scaled", "--lr_scaling", "linear", "--scheduler", "cosine", *common) == 0
    lrs, _ = _lrs_and_groups(tmp_path / "scaled")
    base = 0.001 * 8 / 256
    assert lrs == pytest.approx([base * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)], rel=1e-9)
