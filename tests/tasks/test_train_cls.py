"""train-cls end to end on tiny learnable data with a random (or official-format) vit_tiny encoder."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from tests.tasks.test_features import EXTRACT, run_cli, write_vfm

COMMON = ["--arch", "vit_tiny", "--input_size", "32", "--patch_size", "16", "--modality", "Fundus",
          "--batch_size_per_gpu", "16", "--num_workers", "0", "--epochs", "30", "--lr", "0.05", "--device", "cpu",
          "--report_n_boot", "0"]


def _metrics(run):
    return json.loads((run / "report" / "metrics.json").read_text())


def test_extract_then_train_from_store_and_from_images(tmp_path):
    data = write_vfm(tmp_path / "data", n_train=30, n_test=15, n_val=9, n_classes=3)
    dst = tmp_path / "feats"
    assert run_cli("extract", "--pretrained_weights", "random", "--data_path", str(data), "--dst_root", str(dst),
                   *EXTRACT) == 0
    out = tmp_path / "out"
    assert run_cli("train-cls", "--name", "store", "--features", str(dst), "--num_labels", "3",
                   "--output_dir", str(out), *COMMON) == 0
    m = _metrics(out / "store")
    assert m["accuracy"] >= 0.8, m["accuracy"]  # chance is 1/3
    lines = [json.loads(x) for x in (out / "store" / "log.txt").read_text().splitlines()]
    assert sum("val_selection" in x for x in lines) == 30  # every epoch logged, with the selection metric
    for f in ("checkpoint_best.safetensors", "checkpoint_best.json", "checkpoint_last.safetensors",
              "store_Fundus_results.json", "report/report.html", "report/predictions.csv"):
        assert (out / "store" / f).is_file(), f
    res = json.loads((out / "store" / "store_Fundus_results.json").read_text())
    first = next(iter(res.values()))
    assert len(first["gt"]) == 3 and abs(sum(first["pred"]) - 1) < 1e-5
    # from images, with the same encoder seed
    assert run_cli("train-cls", "--name", "img", "--pretrained_weights", "random", "--data_path", str(data),
                   "--num_labels", "3", "--output_dir", str(out), *COMMON) == 0
    assert _metrics(out / "img")["accuracy"] >= 0.8
    # --load_from --test reproduces the best checkpoint's metrics
    best = json.loads((out / "store" / "checkpoint_best.json").read_text())
    assert run_cli("train-cls", "--name", "again", "--features", str(dst), "--num_labels", "3", "--test",
                   "--load_from", str(out / "store" / "checkpoint_best.safetensors"), "--output_dir", str(out),
                   *COMMON) == 0
    again = _metrics(out / "again")
    assert again["accuracy"] == m["accuracy"] and again["f1_macro"] == m["f1_macro"]
    assert best["test_metrics"]["f1_macro"] == again["f1_macro"]
    _assert_same_predictions(out / "again" / "again_Fundus_results.json", out / "store" / "store_Fundus_results.json")
    # without --test, --load_from initialises the head: with lr 0 and BatchNorm momentum 0 one epoch
    # changes nothing, so the selected weights are the loaded ones and so are the test predictions
    flags = [*COMMON, "--lr", "0", "--epochs", "1", "--bn_momentum", "0"]
    assert run_cli("train-cls", "--name", "init", "--features", str(dst), "--num_labels", "3",
                   "--load_from", str(out / "store" / "checkpoint_best.safetensors"), "--output_dir", str(out),
                   *flags) == 0
    source, loaded = _model_tensors(out / "store"), _model_tensors(out / "init")
    assert source.keys() == loaded.keys() and source
    for k in source:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(loaded[k], source[k]), k
    _assert_same_predictions(out / "init" / "init_Fundus_results.json", out / "store" / "store_Fundus_results.json")
    assert _metrics(out / "init")["accuracy"] == m["accuracy"]


def _model_tensors(run):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(run / "checkpoint_best.safetensors")).items() if k.startswith("model.")}


def _assert_same_predictions(a, b):
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra.keys() == rb.keys() and ra
    for k in ra:
        assert ra[k]["gt"] == rb[k]["gt"]
        assert ra[k]["pred"] == pytest.approx(rb[k]["pred"], rel=1e-6, abs=1e-7), k


def test_official_checkpoint_binary_without_val(tmp_path):
    from visionfm import build_encoder

    enc = build_encoder("vit_tiny", img_size=32, patch_size=16)
    ckpt = tmp_path / "official.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in enc.state_dict().items()},
                "args": argparse.Namespace(arch="vit_tiny", patch_size=16)}, ckpt)
    data = write_vfm(tmp_path / "data", n_train=24, n_test=12, n_classes=2)
    out = tmp_path / "out"
    assert run_cli("train-cls", "--name", "bin", "--pretrained_weights", str(ckpt), "--data_path", str(data),
                   "--num_labels", "1", "--output_dir", str(out), *COMMON) == 0
    m = _metrics(out / "bin")
    assert m["task"] == "binary" and m["accuracy"] >= 0.8
    log = (out / "bin" / "log.txt").read_text()
    assert "model selection on the test split" in log
    res = json.loads((out / "bin" / "bin_Fundus_results.json").read_text())
    assert all(len(v["gt"]) == 1 and len(v["pred"]) == 1 for v in res.values())


def test_multilabel_linear_head(tmp_path):
    data = write_vfm(tmp_path / "data", n_train=30, n_test=15, kind="multilabel")
    out = tmp_path / "out"
    assert run_cli("train-cls", "--name", "ml", "--pretrained_weights", "random", "--data_path", str(data),
                   "--num_labels", "3", "--head", "linear", "--output_dir", str(out), *COMMON) == 0
    m = _metrics(out / "ml")
    assert m["task"] == "multilabel" and m["auroc_macro"] >= 0.75, m["auroc_macro"]


def test_cls_head_shapes_and_bn():
    from visionfm.models.heads import ClsHead, LinearHead

    h = ClsHead(768, 5)
    assert [m.out_features for m in h.classifier if isinstance(m, torch.nn.Linear)] == [384, 192, 5]
    assert h.channel_bn.eps == 1e-6 and h.channel_bn.momentum == 0.1
    assert ClsHead(64, 2, layers=1, bn_momentum=0.99).channel_bn.momentum == 0.99
    assert abs(float(h.classifier[0].weight.std()) - 0.01) < 0.002
    assert LinearHead(64, 3)(torch.randn(4, 64)).shape == (4, 3)


def test_test_without_load_from_is_an_error(tmp_path, capsys):
    data = write_vfm(tmp_path / "data", n_train=4, n_test=4)
    rc = run_cli("train-cls", "--name", "x", "--pretrained_weights", "random", "--data_path", str(data), "--test",
                 "--output_dir", str(tmp_path), *COMMON)
    assert rc == 2 and "--load_from" in capsys.readouterr().err


def test_store_run_packages_the_store_encoder_without_encoder_flags(tmp_path):
    """train-cls --features takes arch/patch/input size from the store, not the vit_base defaults."""
    data = write_vfm(tmp_path / "data", n_train=12, n_test=6, n_classes=3)
    dst = tmp_path / "feats"
    assert run_cli("extract", "--pretrained_weights", "random", "--data_path", str(data), "--dst_root", str(dst),
                   *EXTRACT) == 0
    assert run_cli("train-cls", "--name", "bare", "--features", str(dst), "--num_labels", "3", "--epochs", "2",
                   "--batch_size_per_gpu", "8", "--report_n_boot", "0", "--output_dir", str(tmp_path / "out")) == 0
    cfg = json.loads((tmp_path / "out" / "bare" / "model" / "config.json").read_text())
    assert cfg["encoder"]["arch"] == "vit_tiny" and cfg["preprocess"]["input_size"] == 32
