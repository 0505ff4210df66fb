"""README §2.2 (pretraining) runs as written — the launcher replaced by ``visionfm``, size flags appended
(argparse: later flags win). ``--load_pretrain`` without ``--pretrain_path`` reads the DINO ImageNet
file the original downloaded from torch hub's checkpoint folder, and fails with one line without it."""

from __future__ import annotations

import shlex

import pytest
import torch

from visionfm.cli.main import main
from visionfm.data.synth import generate

pytestmark = pytest.mark.xdist_group("readme")

# `python -m torch.distributed.launch --nproc_per_node=1 main_pretrain.py` replaced by `visionfm pretrain`
PRETRAIN = ("pretrain --local-rank=0 --data_path ./dataset/pretrain_random --modality Fundus --norm_last_layer true "
            "--epochs 400 --batch_size_per_gpu 12 --shared_head true --out_dim 8192 --output_dir ./results "
            "--global_crops_scale 0.32 1.0 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 --name Train_Random_Fundus "
            "--load_pretrain")
# ViT-S/16 is the smallest architecture with a DINO file; --lr 0 keeps the weights where they started
SIZE = ["--arch", "vit_small", "--input_size", "32", "--out_dim", "64", "--batch_size_per_gpu", "4", "--epochs", "1",
        "--warmup_epochs", "0", "--warmup_teacher_temp_epochs", "1", "--lr", "0", "--min_lr", "0", "--num_workers", "0",
        "--device", "cpu", "--no_progress"]
DINO = "dino_deitsmall16_pretrain.pth"


@pytest.fixture
def place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    generate("pretrain", tmp_path / "dataset" / "pretrain_random", num=8, img_size=32, seed=0)
    return tmp_path


def test_without_the_dino_file_one_line_and_nothing_written(place, capsys):
    assert main(shlex.split(PRETRAIN) + SIZE) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    where = place / "torch_home" / "hub" / "checkpoints" / DINO
    assert str(where) in err
    assert "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth" in err
    assert not (place / "results").exists()
    # an architecture without a DINO file: --pretrain_path is the way
    assert main(shlex.split(PRETRAIN) + SIZE + ["--arch", "vit_tiny"]) == 2
    assert "pass --pretrain_path" in capsys.readouterr().err
    assert not (place / "results").exists()


def test_with_the_dino_file_both_backbones_start_from_it(place):
    from visionfm.models.encoder import VisionFMEncoder, resample_pos_embed

    torch.manual_seed(0)
    dino = VisionFMEncoder("vit_small", 224, 16, 0.0, masked_im_modeling=False).state_dict()  # a bare ViT-S/16
    where = place / "torch_home" / "hub" / "checkpoints"
    where.mkdir(parents=True)
    torch.save(dino, where / DINO)
    assert main(shlex.split(PRETRAIN) + SIZE) == 0
    ckpt = torch.load(place / "results" / "Train_Random_Fundus" / "checkpoint.pth", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["args"].load_pretrain
    pos = resample_pos_embed(dino["pos_embed"], (2, 2))
    for net, prefix in (("student", "module.backbone."), ("teacher", "backbone.")):
        sd = ckpt[net]
        for k in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias",
                  "norm.weight"):
            assert torch.equal(sd[prefix + k], dino[k]), (net, k)
        torch.testing.assert_close(sd[prefix + "pos_embed"], pos)


@pytest.mark.parametrize("spelling", [["--local-rank=0"], ["--local_rank", "0"], ["--local-rank", "1"]])
def test_launcher_rank_flag_is_accepted(spelling):
    from visionfm.cli.pretrain import config_from_argv

    cfg = config_from_argv(spelling + ["--name", "x", "--data_path", "d"])
    assert cfg.name == "x"  # accepted and ignored: the rank comes from the environment
