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


# -- README §3.3, the other variants of train_cls_decoder.py -------------------------------------------------

SINGLE_CLS_IMAGENET = ("train-cls --name single_cls_debug --dataset_format ImageNet "
                       "--pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth --output_dir ./results "
                       "--data_path ./dataset/xxx/ --num_labels 5 --batch_size_per_gpu 32")
SINGLE_CLS_OCT = ("train-cls --name single_cls_debug --pretrained_weights ./pretrain_weights/VFM_OCT_weights.pth "
                  "--output_dir ./results --data_path ./dataset/ProcessedDatasets/SingleModalCls/OCTClassification "
                  "--num_labels 1 --modality OCT --batch_size_per_gpu 32")
RETFOUND = " --arch vit_large --checkpoint_key model"  # "adding two additional params"
NO_ARCH = ["--num_workers", "0", "--device", "cpu"]  # SMALL without --arch: read from the file


def _workdir(place: Path, name: str) -> Path:
    """A fresh working folder beside the others, with the same ./pretrain_weights."""
    work = place / name
    work.mkdir()
    (work / "pretrain_weights").symlink_to(place / "pretrain_weights")
    return work


def _encoder_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "model" / "config.json").read_text())


def test_imagenet_layout_without_arch_reads_the_file(place, monkeypatch):
    """``--dataset_format ImageNet`` on <root>/{train,val,test}/<class>/ folders; no --arch given: the
    architecture is read from the weights (ViT-tiny here), and recorded as such."""
    from PIL import Image

    work = _workdir(place, "imagenet")
    monkeypatch.chdir(work)
    rng = torch.Generator().manual_seed(0)
    classes = ["anoDR", "bmildDR", "cmoderateDR", "dsevereDR", "eproDR"]
    for split in ("train", "val", "test"):
        for c, cname in enumerate(classes):
            d = work / "dataset" / "xxx" / split / cname
            d.mkdir(parents=True)
            for i in range(2):
                px = (torch.rand(32, 32, 3, generator=rng) * 80 + 40 * c).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(d / f"{i}.png")
    assert run(SINGLE_CLS_IMAGENET, *NO_ARCH, *IMAGE, "--epochs", "2", "--report_n_boot", "0") == 0
    run_dir = work / "results" / "single_cls_debug"
    results = json.loads((run_dir / "single_cls_debug_Fundus_results.json").read_text())
    assert len(results) == 10 and all(len(r["pred"]) == 5 for r in results.values())
    cfg = _encoder_record(run_dir)
    assert (cfg["encoder"]["arch"], cfg["encoder"]["patch_size"], cfg["modality"]) == ("vit_tiny", 16, "Fundus")
    assert cfg["class_names"] == classes  # the class folders, in order
    assert (run_dir / "checkpoint_teacher_linear.pth").is_file()


def test_oct_binary_command(place, monkeypatch):
    """``--num_labels 1 --modality OCT`` with VFM_OCT_weights.pth: one sigmoid output, OCT statistics."""
    work = _workdir(place, "oct")
    monkeypatch.chdir(work)
    tmp = work / "gen"
    generate("single_cls", tmp, num=8, img_size=32, seed=1)
    dst = work / "dataset" / "ProcessedDatasets" / "SingleModalCls" / "OCTClassification"
    dst.parent.mkdir(parents=True)
    (tmp / "FundusClassification").rename(dst)
    for f in dst.glob("*/*_labels.txt"):  # grades 0-4 → binary (healthy, DR)
        lines = [ln.rsplit(";", 1) for ln in f.read_text().splitlines() if ln.strip()]
        f.write_text("".join(f"{p};{min(int(k), 1)}\n" for p, k in lines))
    for f in dst.glob("*/classes.txt"):  # and the names of the two classes
        f.write_text("healthy\nDR\n")
    assert run(SINGLE_CLS_OCT, *SMALL, *IMAGE, "--epochs", "2", "--report_n_boot", "0") == 0
    run_dir = work / "results" / "single_cls_debug"
    results = json.loads((run_dir / "single_cls_debug_OCT_results.json").read_text())
    assert len(results) == 8 and all(len(r["pred"]) == 1 and len(r["gt"]) == 1 for r in results.values())
    sd = torch.load(run_dir / "checkpoint_teacher_linear.pth", weights_only=True)["state_dict"]
    (last,) = [k for k in sd if k.startswith("module.classifier.") and k.endswith(".weight") and sd[k].shape[0] == 1]
    assert sd[last].shape[0] == 1
    assert _encoder_record(run_dir)["modality"] == "OCT"


def test_retfound_weights_with_the_two_additional_params(place, monkeypatch):
    """RETFound's MAE file (encoder + decoder_* + mask_token under 'model'): ``--arch vit_large
    --checkpoint_key model`` added; the appended size flag ``--arch vit_tiny`` wins (argparse: later flags)."""
    from visionfm.models import build_encoder

    work = _workdir(place, "retfound")
    monkeypatch.chdir(work)
    torch.manual_seed(1)
    enc = build_encoder("vit_tiny", patch_size=16, img_size=224)
    sd = {k: v for k, v in enc.state_dict().items() if k != "masked_embed"}
    sd.update({"mask_token": torch.zeros(1, 1, 64), "decoder_embed.weight": torch.randn(64, 192),
               "decoder_pos_embed": torch.zeros(1, 197, 64), "decoder_pred.weight": torch.randn(768, 64)})
    (work / "weights").mkdir()
    torch.save({"model": sd}, work / "weights" / "RETFound_cfp_weights.pth")
    data = work / "dataset" / "single_cls_random"
    generate("single_cls", data, num=6, img_size=32, seed=2)
    cmd = SINGLE_CLS.replace("./pretrain_weights/VFM_Fundus_weights.pth", "./weights/RETFound_cfp_weights.pth")
    assert run(cmd + RETFOUND, *SMALL, *IMAGE, "--epochs", "1", "--report_n_boot", "0", data=str(data)) == 0
    run_dir = work / "results" / "single_cls_debug"
    cfg = _encoder_record(run_dir)
    assert (cfg["encoder"]["arch"], cfg["encoder"]["checkpoint_key"]) == ("vit_tiny", "model")
    # the encoder in the model folder is exactly RETFound's (its decoder_* and mask_token ignored)
    from safetensors.torch import load_file

    packed = load_file(run_dir / "model" / "model.safetensors")
    assert torch.equal(packed["encoder.blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    assert (run_dir / "checkpoint_model_linear.pth").is_file()  # checkpoint_<key>_linear.pth, as the original


def test_a_wrong_arch_is_one_line_naming_the_file(place, monkeypatch, capsys):
    """Given, --arch is a check: ViT-small asked of a ViT-tiny file is exit 2 and one line naming the file."""
    work = _workdir(place, "wrong_arch")
    monkeypatch.chdir(work)
    data = work / "dataset" / "single_cls_random"
    generate("single_cls", data, num=2, img_size=32, seed=0)
    capsys.readouterr()
    rc = run(SINGLE_CLS, *SMALL, *IMAGE, "--arch", "vit_small", "--epochs", "1", data=str(data))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "VFM_Fundus_weights.pth" in err[0] and "--arch vit_small" in err[0] and "vit_tiny" in err[0]
    rc = run(SINGLE_CLS, *NO_ARCH, *IMAGE, "--patch_size", "8", "--epochs", "1", data=str(data))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--patch_size 8" in err[0] and "VFM_Fundus_weights.pth" in err[0], err
