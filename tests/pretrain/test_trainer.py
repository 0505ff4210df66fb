"""End-to-end pretraining: a tiny run learns, resumes exactly after a SIGKILL, and loads as an encoder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from visionfm import load_encoder
from visionfm.cli.main import main as cli_main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _write_images(root: Path, modality: str, n: int, size: int = 64, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    d = root / modality
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        cx, cy, r = rng.uniform(16, size - 16, 2).tolist() + [rng.uniform(6, 14)]
        img = np.zeros((size, size, 3), np.uint8)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[..., 0] = 60 + 120 * disc
        img[..., 1] = 30 + rng.integers(0, 60)
        Image.fromarray(img).save(d / f"{i:08d}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_data")
    _write_images(root, "Fundus", 32)
    _write_images(root, "OCT", 16, seed=1)
    return root


def _flags(data_root, out, name, extra=()):
    return [
        "pretrain", "--data_path", str(data_root), "--modality", "Fundus", "--arch", "vit_tiny",
        "--input_size", "32", "--batch_size_per_gpu", "8", "--epochs", "2", "--warmup_epochs", "1",
        "--warmup_teacher_temp_epochs", "1", "--out_dim", "64", "--patch_out_dim", "64",
        "--name", name, "--output_dir", str(out), "--num_workers", "0", "--no_progress", "--seed", "3", *extra,
    ]


# Runs the CLI in a child process; ``kill_at`` SIGKILLs it right after that global iteration, through
# the trainer's test hook (nothing in the production loop reads the environment for this).
_CHILD = """
import os, signal, sys
from visionfm.pretrain.trainer import IBOTTrainer
kill_at = int(sys.argv[1])
if kill_at >= 0:
    IBOTTrainer.after_iteration = lambda self, it: it == kill_at and os.kill(os.getpid(), signal.SIGKILL)
from visionfm.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _run_subprocess(args, kill_at=-1):
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", _CHILD, str(kill_at), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_tiny_run_writes_official_layout_and_loads_as_encoder(data_root, tmp_path):
    assert cli_main(_flags(data_root, tmp_path, "t", ["--saveckp_freq", "1"])) == 0
    run = tmp_path / "t"
    lines = [json.loads(x) for x in (run / "log.txt").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert {"train_loss", "train_cls", "train_patch", "train_lr", "train_wd", "train_acc"} <= set(lines[0])
    assert all(np.isfinite(x["train_loss"]) for x in lines)
    ckpt = torch.load(run / "checkpoint.pth", weights_only=False)
    assert {"student", "teacher", "optimizer", "epoch", "args", "ibot_loss"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["args"].arch == "vit_tiny"
    assert all(k.startswith("module.") for k in ckpt["student"])
    assert any(k.startswith("backbone.blocks.") for k in ckpt["teacher"])
    assert "head.last_layer.weight_g" in ckpt["teacher"]  # official weight-norm key names
    assert (run / "checkpoint0001.pth").is_file() and (run / "config.yaml").is_file()
    assert list((run / "tf_logs").iterdir())
    enc = load_encoder(run / "checkpoint.pth", arch="vit_tiny", checkpoint_key="teacher", img_size=32)
    torch.testing.assert_close(enc.state_dict()["cls_token"], ckpt["teacher"]["backbone.cls_token"])
    # the teacher moved away from the student's initial copy through the EMA only
    assert not torch.equal(ckpt["teacher"]["backbone.cls_token"], ckpt["student"]["module.backbone.cls_token"])
    # visionfm export turns the teacher into a safetensors encoder that loads identically
    assert cli_main(["export", "--weights", str(run / "checkpoint.pth"), "--checkpoint_key", "teacher",
                     "--modality", "Fundus", "--out", str(tmp_path / "teacher.safetensors")]) == 0
    exported = load_encoder(tmp_path / "teacher.safetensors", arch=None, patch_size=None, img_size=32)
    assert exported.load_report.modality == "Fundus"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(exported.eval()(x), enc.eval()(x))


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_kill_mid_epoch_then_resume_matches_uninterrupted(data_root, tmp_path, augment_on):
    """Both input paths (PIL in the workers; crops in the workers + photometry batched on the
    device, here the CPU) resume a SIGKILLed run to the uninterrupted run's teacher."""
    # a learning rate that moves the weights (the default's 2e-6 peak would hide any data difference)
    extra = ["--saveckp_iters", "2", "--augment_on", augment_on, "--device", "cpu", "--lr", "0.05"]
    base = _flags(data_root, tmp_path, "full", extra)
    full = _run_subprocess(base)
    assert full.returncode == 0, full.stderr[-2000:]
    killed_flags = _flags(data_root, tmp_path, "resumed", [*extra, "--resume", "auto"])
    # 4 iterations per epoch: die right after global iteration 5 (mid-epoch 1; last save after iteration 5)
    killed = _run_subprocess(killed_flags, kill_at=5)
    assert killed.returncode == -9
    ck = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=False)
    assert (ck["epoch"], ck["epoch_iter"]) == (1, 2)
    resumed = _run_subprocess(killed_flags)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=False)["teacher"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=False)["teacher"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())["augment_on"] == augment_on


def test_mix_scheme_uses_several_modalities(data_root, tmp_path):
    flags = _flags(data_root, tmp_path, "mix", ["--scheme", "mix", "--modality_weights", "balanced", "--epochs", "1"])
    flags[flags.index("--modality") + 1] = "Fundus,oct"
    assert cli_main(flags) == 0
    cfg = (tmp_path / "mix" / "config.yaml").read_text()
    assert "scheme: mix" in cfg


@pytest.mark.parametrize("log_freq, optimizer", [("1", "adamw"), ("10", "adamw"), ("1", "lars")])
def test_nonfinite_losses_are_skipped_then_stop_cleanly(data_root, tmp_path, monkeypatch, log_freq, optimizer):
    """A non-finite loss must leave student, teacher and optimizer untouched. With fused AdamW the
    skip happens on the device and the streak is read at the next log point (log_freq 1: exactly at
    the limit; 10: at the epoch end, after the 4 iterations of epoch 0); LARS reads it every step."""
    from visionfm.cli.pretrain import config_from_argv
    from visionfm.pretrain import trainer as trainer_mod

    flags = _flags(data_root, tmp_path, "nan", ["--max_nonfinite_steps", "3", "--log_freq", log_freq,
                                                 "--optimizer", optimizer])[1:]
    args = config_from_argv(flags)
    tr = trainer_mod.IBOTTrainer(args)
    assert tr.device_skip is (optimizer == "adamw")
    before = {k: v.clone() for k, v in tr.student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    real = tr.loss_call

    def poisoned(*a, **k):
        out = real(*a, **k)
        return {key: v * float("nan") for key, v in out.items()}

    tr.loss_call = poisoned
    with pytest.raises(trainer_mod.NonFiniteLossError, match="consecutive non-finite"):
        tr.fit()
    assert tr.skipped_steps == (4 if log_freq == "10" else 3)
    after = tr.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step touched the weights
    t_after = tr.teacher.state_dict()
    assert all(torch.equal(teacher_before[k], t_after[k]) for k in teacher_before if "center" not in k)
    steps = [st["step"] for st in tr.optimizer.state.values() if "step" in st]
    assert all(float(x) == 0.0 for x in steps)  # the optimizer never counted a step
    assert not (tmp_path / "nan" / "checkpoint.pth").exists()


def test_bad_flags_fail_loudly(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(_flags(data_root, tmp_path, "x", ["--no_such_flag", "1"]))
    assert cli_main(_flags(data_root, tmp_path, "x", ["--load_pretrain"])) == 2
    assert "never downloads" in capsys.readouterr().err
    flags = _flags(data_root, tmp_path, "x")
    flags[flags.index("--modality") + 1] = "Retina"
    assert cli_main(flags) == 2
    assert "unknown modality 'Retina'" in capsys.readouterr().err
