"""The original README's commands run as written — only the launcher and script name replaced by the
``visionfm`` subcommand, and size flags appended (argparse: later flags win) — and write the files the
original wrote under its names (README §3.2–§3.7, reference §5)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from visionfm.cli.main import main
from visionfm.data.synth import generate

pytestmark = pytest.mark.xdist_group("readme")

# the original commands, from `python ... <script>.py` on (shell redirections dropped)
EXTRACT_FUN = ("extract --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth --batch_size_per_gpu 768 "
               "--data_path {data}/FundusClassificationMulti/ --modality Fundus --dst_root {feat}/FunClsFeat/")
EXTRACT_OCT = ("extract --pretrained_weights ./pretrain_weights/VFM_OCT_weights.pth --batch_size_per_gpu 768 "
               "--data_path {data}/OCTClassificationMulti/ --modality OCT --dst_root {feat}/OCTClsFeat/")
MULTI_CLS = ("train-multi-cls --name train_debug --output_dir ./results --datasets FunClsFeat OCTClsFeat "
             "--data_path {feat}/ --batch_size_per_gpu 8192")
SINGLE_CLS = ("train-cls --name single_cls_debug --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth "
              "--output_dir ./results --data_path {data}/FundusClassification/ --num_labels 5 --batch_size_per_gpu 32")
SINGLE_CLS_TEST = SINGLE_CLS + " --load_from ./results/single_cls_debug/checkpoint_teacher_linear.pth --test"
SEG = ("train-seg --name single_seg_debug --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth "
       "--input_size 512 --modality Fundus --num_labels 5 --output_dir ./results "
       "--data_path {data}/VesselSegmentation/ --batch_size_per_gpu 5")
LANDMARK = ("train-landmark --name train_landmark --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth "
            "--output_dir ./results --data_path {data}/LandmarkDetection --batch_size_per_gpu 32")
EXTRACT_REG_F = ("extract --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth --batch_size_per_gpu 768 "
                 "--data_path {data}/FundusRegression --modality Fundus --dst_root {feat}/FunRegFeat/")
EXTRACT_REG_E = ("extract --pretrained_weights ./pretrain_weights/VFM_External_weights.pth --batch_size_per_gpu 768 "
                 "--data_path {data}/ExternalRegression --modality External --dst_root {feat}/ExternalRegFeat/")
REG = ("train-reg --name train_metric_reg_multi --output_dir ./results --datasets FunRegFeat ExternalRegFeat "
       "--data_path {feat}/ --batch_size_per_gpu 4096")
FORECAST = ("train-forecast --data_path {data}/ --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth "
            "--n_last_blocks 4 --avgpool_patchtokens 1 --input_size 224 --checkpoint_key teacher "
            "--output_dir ./results/glaucoma_forecasting --num_labels 2 --lr 0.001 --batch_size_per_gpu 128 --epochs 100")

SMALL = ["--arch", "vit_tiny", "--num_workers", "0", "--device", "cpu"]
IMAGE = ["--input_size", "32"]


def run(command: str, *extra: str, **fmt: str) -> int:
    return main(shlex.split(command.format(**fmt)) + list(extra))


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A working folder as the README assumes: ./pretrain_weights/VFM_*_weights.pth (here a random ViT-tiny
    teacher in the official layout) and the random data sets."""
    root = tmp_path_factory.mktemp("readme")
    from visionfm.models import build_encoder

    (root / "pretrain_weights").mkdir()
    torch.manual_seed(0)
    for mod in ("Fundus", "OCT", "External"):
        enc = build_encoder("vit_tiny", patch_size=16, img_size=224)
        torch.save({"teacher": {f"backbone.{k}": v for k, v in enc.state_dict().items()}},
                   root / "pretrain_weights" / f"VFM_{mod}_weights.pth")
    return root


def test_single_cls_train_then_test_from_the_original_checkpoint_name(place, monkeypatch):
    monkeypatch.chdir(place)
    data = place / "dataset" / "single_cls_random"
    generate("single_cls", data, num=10, img_size=32, seed=0)
    assert run(SINGLE_CLS, *SMALL, *IMAGE, "--epochs", "2", "--report_n_boot", "0", data=str(data)) == 0
    run_dir = place / "results" / "single_cls_debug"
    pth = run_dir / "checkpoint_teacher_linear.pth"
    obj = torch.load(pth, weights_only=True)
    assert set(obj) >= {"epoch", "state_dict", "best_f1"}
    assert any(k.startswith("module.classifier.") for k in obj["state_dict"])
    best = json.loads((run_dir / "checkpoint_best.json").read_text())
    assert obj["epoch"] == best["epoch"]
    (run_dir / "single_cls_debug_Fundus_results.json").unlink(missing_ok=True)
    assert run(SINGLE_CLS_TEST, *SMALL, *IMAGE, "--report_n_boot", "0", data=str(data)) == 0
    results = json.loads((run_dir / "single_cls_debug_Fundus_results.json").read_text())
    assert len(results) == 10 and all(len(r["pred"]) == 5 for r in results.values())


def test_multi_cls_and_regression_read_the_store_width(place, monkeypatch):
    monkeypatch.chdir(place)
    data, feat = place / "dataset" / "multi_cls_random", place / "dataset" / "multi_cls_random"
    generate("multi_cls", data, num=8, img_size=32, seed=0)
    for cmd in (EXTRACT_FUN, EXTRACT_OCT):
        assert run(cmd, *SMALL, *IMAGE, "--epochs", "1", data=str(data), feat=str(feat)) == 0
    # no --embed_dim: the stores say 192 (ViT-tiny); the original needed --embed_dim
    assert run(MULTI_CLS, "--device", "cpu", "--epochs", "2", "--report_n_boot", "0", feat=str(feat)) == 0
    run_dir = place / "results" / "train_debug"
    (pth,) = run_dir.glob("checkpoint_*_linear.pth")
    obj = torch.load(pth, weights_only=True)
    assert obj["state_dict"]["module.classifier.0.weight"].shape[1] == 4 * 192 and "best_f1" in obj
    rdata = place / "dataset" / "metric_random"
    generate("metric_reg", rdata, num=8, img_size=32, seed=0)
    for cmd in (EXTRACT_REG_F, EXTRACT_REG_E):
        assert run(cmd, *SMALL, *IMAGE, "--epochs", "1", data=str(rdata), feat=str(rdata)) == 0
    assert run(REG, "--device", "cpu", "--epochs", "2", "--report_n_boot", "0", feat=str(rdata)) == 0
    (pth,) = (place / "results" / "train_metric_reg_multi").glob("checkpoint_*_linear.pth")
    assert "module.classifier.3.weight" in torch.load(pth, weights_only=True)["state_dict"]
    # a width given by hand is a check
    assert run(REG, "--device", "cpu", "--epochs", "1", "--embed_dim", "768", "--name", "w", feat=str(rdata)) == 2


def test_segmentation_and_landmark_write_the_original_checkpoint(place, monkeypatch):
    monkeypatch.chdir(place)
    seg = place / "dataset" / "seg_random"
    generate("segmentation", seg, num=4, img_size=32, seed=0, num_classes=4)
    assert run(SEG, *SMALL, *IMAGE, "--epochs", "1", "--n_overlays", "0", data=str(seg)) == 0
    (pth,) = (place / "results" / "single_seg_debug").glob("checkpoint_*_linear.pth")
    obj = torch.load(pth, weights_only=True)
    assert "module.d1.deconv.weight" in obj["state_dict"] and obj["state_dict"]["module.cls.weight"].shape[0] == 5
    # the original file initialises a new run (--load_from), through the name map
    assert run(SEG, *SMALL, *IMAGE, "--epochs", "1", "--n_overlays", "0", "--name", "again", "--load_from", str(pth),
               data=str(seg)) == 0
    lmk = place / "dataset" / "landmark_random"
    generate("landmark", lmk, num=4, img_size=32, seed=0)
    assert run(LANDMARK, *SMALL, *IMAGE, "--epochs", "1", "--n_overlays", "0", data=str(lmk)) == 0
    (pth,) = (place / "results" / "train_landmark").glob("checkpoint_*_linear.pth")
    assert "best_mre" in torch.load(pth, weights_only=True)


def test_forecasting_command_without_a_name(place, monkeypatch):
    monkeypatch.chdir(place)
    data = place / "dataset" / "glaucoma_forecasting"
    generate("forecasting", data, num=12, img_size=32, seed=0)
    (sub,) = [p for p in data.iterdir() if p.is_dir()]
    out = place / "results" / "glaucoma_forecasting"
    assert run(FORECAST, *SMALL, *IMAGE, "--epochs", "2", "--report_n_boot", "0", data=str(sub)) == 0
    # no --name: the outputs are in --output_dir itself, as the original's
    assert (out / "checkpoint_best.safetensors").is_file() and (out / "report" / "metrics.json").is_file()
    assert (out / "glaucoma_forecasting_Fundus_results.json").is_file()  # the run is named after the folder


def _parser(command: str):
    import importlib

    from visionfm.cli.main import COMMANDS, build_parser

    _, subs = build_parser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(subs[command])
    return subs[command]


def test_flag_prefixes_as_the_original_argparse():
    """The FT-README writes ``--epoch 5``; a prefix shared by a flag and its hyphenated twin is one flag."""
    a = _parser("finetune").parse_args(["--data_path", "d", "--epoch", "5", "--batch", "8", "--output-d", "o"])
    assert (a.epochs, a.batch_size_per_gpu, a.output_dir, a.name) == (5, 8, "o", None)
    with pytest.raises(SystemExit) as err:  # an ambiguous prefix is still refused
        _parser("finetune").parse_args(["--data_path", "d", "--n", "3"])
    assert err.value.code == 2
