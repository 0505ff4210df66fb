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
    assert [x["epoch"] for x in lines] == [1, 2]  # numbered from 1 (the original's log.txt: from 0)
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
    assert "DINO ImageNet weights exist only for vit_small and vit_base" in capsys.readouterr().err
    flags = _flags(data_root, tmp_path, "x")
    flags[flags.index("--modality") + 1] = "Retina"
    assert cli_main(flags) == 2
    assert "unknown modality 'Retina'" in capsys.readouterr().err


# -- one optimisation step, inspected: teacher EMA, last-layer freeze, masks reach the student ------------

def _trainer(data_root, out, extra=()):
    """An IBOTTrainer for 32 px vit_tiny with a learning rate that moves every weight on the first step
    (no warm-up: the warm-up starts at lr 0), a teacher momentum far enough from 1 to be seen, and
    trainable weight-norm magnitudes (--norm_last_layer false) so every last-layer tensor could move."""
    from visionfm.cli.pretrain import config_from_argv
    from visionfm.pretrain import trainer as trainer_mod

    flags = _flags(data_root, out, "step", ["--device", "cpu", "--warmup_epochs", "0", "--lr", "0.5",
                                             "--momentum_teacher", "0.9", "--pred_shape", "rand",
                                             "--pred_ratio", "0.5", "--drop_path", "0", "--norm_last_layer", "false",
                                             *extra])[1:]
    return trainer_mod.IBOTTrainer(config_from_argv(flags))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _one_step(tr):
    """train_step on the first batch of epoch 0, with a spy on the student backbone's ``mask`` argument."""
    from visionfm.pretrain.trainer import EpochMeters

    crops, masks = tr.prepare_batch(next(iter(tr._loader(0, 0))))
    assert any(bool(m.any()) for m in masks[: tr.args.global_crops_number]), "the batch should have masked patches"
    seen = []
    backbone = tr.student.backbone
    real_forward = backbone.forward

    def spy(x, mask=None):
        seen.append(None if mask is None else mask.clone())
        return real_forward(x, mask=mask)

    backbone.forward = spy
    s0, t0 = _snapshot(tr.student), _snapshot(tr.teacher)
    try:
        tr.train_step(crops, masks, epoch=0, it=0, meters=EpochMeters.zeros(tr.device))
    finally:
        del backbone.forward
    return {"tr": tr, "s0": s0, "t0": t0, "s1": _snapshot(tr.student), "t1": _snapshot(tr.teacher),
            "masks": masks, "seen": seen}


@pytest.fixture(scope="module")
def one_step(data_root, tmp_path_factory):
    """One step with --freeze_last_layer 1 (epoch 0 is frozen), shared by the checks below."""
    return _one_step(_trainer(data_root, tmp_path_factory.mktemp("step"), ["--freeze_last_layer", "1"]))


def test_step_updates_teacher_by_ema_of_the_new_student(one_step):
    s0, t0, s1, t1 = (one_step[k] for k in ("s0", "t0", "s1", "t1"))
    m = 0.9  # --momentum_teacher; the cosine schedule starts at its base value
    common = [k for k in t1 if k in s1]
    assert len(common) > 100 and "backbone.masked_embed" not in common
    moved = [k for k in common if not torch.equal(t1[k], t0[k])]
    student_moved = [k for k in common if not torch.equal(s1[k], s0[k])]
    assert len(student_moved) > 0.9 * len(common)
    # the teacher moved wherever the student did (and where it started apart from it: its shared
    # last layer is loaded from the student's last_layer2 but averaged with last_layer, as in the original)
    apart = {k for k in common if not torch.equal(t0[k], s0[k])}
    assert set(moved) == set(student_moved) | apart
    for k in common:
        expected = m * t0[k].double() + (1.0 - m) * s1[k].double()  # the EMA, with the student AFTER the step
        torch.testing.assert_close(t1[k].double(), expected, rtol=1e-5, atol=1e-7, msg=k)
    # and not with the student before the step (the teacher started as the student's copy)
    k = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.allclose(t1[k], m * t0[k] + (1 - m) * s0[k], rtol=0, atol=1e-6)
    for k in t1.keys() - s1.keys():  # teacher-only parameters are never averaged
        assert torch.equal(t1[k], t0[k]), k


def _check_last_layer(step, frozen):
    s0, s1, tr = step["s0"], step["s1"], step["tr"]
    params = dict(tr.student.named_parameters())
    last = [k for k in s1 if "last_layer" in k]
    assert len(last) == 4  # last_layer and last_layer2, weight-norm g and v each
    assert not torch.equal(s1["head.mlp.0.weight"], s0["head.mlp.0.weight"])
    for k in last:
        if frozen:
            assert torch.equal(s1[k], s0[k]), f"{k} moved during a frozen epoch"
            has_state = bool(tr.optimizer.state.get(params[k]))
            assert not has_state, f"{k} got AdamW moments during a frozen epoch"
        else:
            assert not torch.equal(s1[k], s0[k]), f"{k} did not train"


def test_last_layer_frozen_during_first_epochs(one_step):
    """--freeze_last_layer N: in epochs < N the head's last layers get no gradient and no optimizer
    state (the original drops the gradients); the other head weights move."""
    _check_last_layer(one_step, frozen=True)


def test_last_layer_trains_without_freeze(data_root, tmp_path):
    _check_last_layer(_one_step(_trainer(data_root, tmp_path, ["--freeze_last_layer", "0"])), frozen=False)


def test_student_backbone_receives_the_masks(one_step):
    s0, s1, masks, seen = (one_step[k] for k in ("s0", "s1", "masks", "seen"))
    g = one_step["tr"].args.global_crops_number
    assert len(seen) == 1 and seen[0] is not None  # the global crops share one backbone pass
    torch.testing.assert_close(seen[0].reshape(-1), torch.cat(masks[:g]).reshape(-1))
    # the mask token only gets a gradient through masked patches: it moved from its zero init
    assert torch.count_nonzero(s0["backbone.masked_embed"]) == 0
    assert torch.count_nonzero(s1["backbone.masked_embed"]) > 0
