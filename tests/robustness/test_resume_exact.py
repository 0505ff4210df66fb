"""Exact resume (issue 13): a run killed at any point and resumed with ``--resume`` ends bit for bit
where the uninterrupted run ends, with the same ``log.txt`` (one line per epoch, the same averages);
a run folder holding a run is refused without ``--resume``/``--overwrite``; temporaries of
interrupted writes are removed at start.

Kills are simulated in-process: an exception that is not an ``Exception`` (so nothing catches it)
raised from the trainers' fault hooks, or from the log writer right after a checkpoint was written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import tensors_in
from visionfm.cli.main import main as cli_main
from visionfm.data.synth import generate
from visionfm.engine.logging import RunLogger
from visionfm.pretrain.trainer import IBOTTrainer

# timing and memory differ between any two runs; every other logged value must be identical
_TIMING = {"train_images_per_s", "train_gpu_mem_gib", "epoch_time_s"}


class Kill(BaseException):
    """Stands for SIGKILL: nothing in the code under test catches a BaseException."""


def _log_lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in _TIMING}
            for x in (run / "log.txt").read_text().splitlines()]




def _max_abs_diff(a: dict, b: dict) -> float:
    ta, tb = dict(tensors_in(a)), dict(tensors_in(b))
    assert ta.keys() == tb.keys()
    worst = 0.0
    for k in ta:
        assert ta[k].shape == tb[k].shape, k
        if not torch.equal(ta[k], tb[k]):
            worst = max(worst, float((ta[k].double() - tb[k].double()).abs().max()))
    return worst


# -- pretraining ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pre_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_pretrain")
    generate("pretrain", root / "data", num=6, img_size=32, seed=0)
    return root


def _pre_flags(root: Path, name: str, *extra: str) -> list[str]:
    # 6 images, batch 2: 3 iterations per epoch, 2 epochs; a checkpoint after every iteration; a learning
    # rate that moves the weights (drop path on: the global generator is used by every step)
    return ["pretrain", "--data_path", str(root / "data"), "--modality", "Fundus", "--arch", "vit_tiny",
            "--input_size", "32", "--batch_size_per_gpu", "2", "--epochs", "2", "--warmup_epochs", "1",
            "--warmup_teacher_temp_epochs", "1", "--out_dim", "32", "--patch_out_dim", "32", "--lr", "0.05",
            "--name", name, "--output_dir", str(root), "--num_workers", "0", "--no_progress", "--seed", "3",
            "--device", "cpu", "--saveckp_iters", "1", "--saveckp_freq", "1000", *extra]


@pytest.fixture(scope="module")
def pre_full(pre_root):
    assert cli_main(_pre_flags(pre_root, "full")) == 0
    return pre_root / "full"


def _kill_after_iteration(k: int):
    def hook(self, it):
        if it == k:
            raise Kill(f"after iteration {k}")
    return hook


def _kill_after_checkpoint_before_log(epoch: int, monkeypatch):
    """The kill falls between an epoch's (0-based index) checkpoint and its log.txt line (numbered from 1)."""
    original = RunLogger.log

    def log(self, stats, step=None, prefix_for_tb=""):
        if stats.get("epoch") == epoch + 1 and "train_loss" in stats:
            monkeypatch.setattr(RunLogger, "log", original)  # one shot
            raise Kill(f"between checkpoint and log line of epoch {epoch}")
        return original(self, stats, step, prefix_for_tb)

    monkeypatch.setattr(RunLogger, "log", log)


# Each case is a sequence of kills of one run (iterations are global: 0-2 epoch 0, 3-5 epoch 1; a
# checkpoint follows every iteration but the last of an epoch, whose checkpoint is the epoch's; a kill
# after iteration 2 falls before epoch 0's checkpoint); ("log", e) kills between epoch e's checkpoint
# and its log line. Together: iterations 0-4 and both epoch ends.
PRETRAIN_KILLS = {
    "mid-epoch-then-log-then-mid": [("it", 1), ("log", 0), ("it", 4)],
    "first-last-of-epoch-next-then-final-log": [("it", 0), ("it", 2), ("it", 3), ("log", 1)],
}


@pytest.mark.parametrize("case", list(PRETRAIN_KILLS))
def test_pretrain_resume_is_bit_exact_at_any_kill_point(pre_root, pre_full, case, monkeypatch):
    name = f"killed-{case}"
    flags = _pre_flags(pre_root, name, "--resume", "auto")
    for kind, at in PRETRAIN_KILLS[case]:
        if kind == "it":
            monkeypatch.setattr(IBOTTrainer, "after_iteration", _kill_after_iteration(at))
        else:
            _kill_after_checkpoint_before_log(at, monkeypatch)
        with pytest.raises(Kill):
            cli_main(flags)
        monkeypatch.setattr(IBOTTrainer, "after_iteration", None)
    run = pre_root / name
    stale = run / ".checkpoint.pth.abcd1234.tmp"  # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    assert cli_main(flags) == 0
    assert not stale.exists()
    a = torch.load(pre_full / "checkpoint.pth", weights_only=False)
    b = torch.load(run / "checkpoint.pth", weights_only=False)
    for key in ("student", "teacher", "optimizer", "ibot_loss"):
        assert _max_abs_diff(a[key], b[key]) == 0.0, key
    full_log, resumed_log = _log_lines(pre_full), _log_lines(run)
    assert [x["epoch"] for x in resumed_log] == [1, 2]  # numbered from 1
    assert resumed_log == full_log


def test_pretrain_refuses_an_existing_run_without_resume_or_overwrite(pre_root, pre_full, capsys):
    target = pre_root / "again"
    shutil.copytree(pre_full, target)
    before = (target / "checkpoint.pth").read_bytes(), (target / "log.txt").read_text()
    capsys.readouterr()
    assert cli_main(_pre_flags(pre_root, "again", "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert str(target) in err[0] and "--resume auto" in err[0] and "--overwrite" in err[0]
    assert ((target / "checkpoint.pth").read_bytes(), (target / "log.txt").read_text()) == before
    # contradictory flags: one line too
    assert cli_main(_pre_flags(pre_root, "again", "--resume", "auto", "--overwrite")) == 2
    assert "contradict" in capsys.readouterr().err
    # --overwrite replaces the earlier run completely (no leftover numbered checkpoint, one log line)
    (target / "checkpoint0007.pth").write_bytes(b"old")
    assert cli_main(_pre_flags(pre_root, "again", "--epochs", "1", "--overwrite")) == 0
    assert [x["epoch"] for x in _log_lines(target)] == [1]
    assert not (target / "checkpoint0007.pth").exists()
    assert torch.load(target / "checkpoint.pth", weights_only=False)["epoch"] == 1
    assert not list(pre_root.glob(".again.visionfm-overwritten-*"))


# -- a decoder (engine fit: train-cls on a feature store) and fine-tuning ---------------------------------


def _kill_before_optimizer_step(k: int, monkeypatch):
    """The kill falls inside an epoch: before the k-th optimizer step (0-based) of this invocation."""
    original = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        if calls["n"] == k:
            raise Kill(f"before optimizer step {k}")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return original


def _decoder_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for stem in ("checkpoint_last", "checkpoint_best"):
        out |= {f"{stem}.{k}": v for k, v in load_file(str(run / f"{stem}.safetensors")).items()
                if not k.startswith("rng.")}
    return out


def _run_killed(flags: list[str], kills: list[tuple[str, int]], monkeypatch) -> None:
    for kind, at in kills:
        if kind == "step":
            original = _kill_before_optimizer_step(at, monkeypatch)
        else:
            _kill_after_checkpoint_before_log(at, monkeypatch)
        with pytest.raises(Kill):
            cli_main(flags)
        if kind == "step":
            monkeypatch.setattr(torch.optim.AdamW, "step", original)
    assert cli_main(flags) == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.tasks.test_features import EXTRACT, write_vfm

    root = tmp_path_factory.mktemp("resume_decoder")
    data = write_vfm(root / "data", n_train=30, n_test=9, n_val=6, n_classes=3)
    assert cli_main(["extract", "--pretrained_weights", "random", "--data_path", str(data),
                     "--dst_root", str(root / "feats"), *EXTRACT]) == 0
    return root


def _cls_flags(root: Path, name: str, *extra: str) -> list[str]:
    # 30 training images × 2 extracted passes = 60 rows, batch 16: 4 optimizer steps per epoch, 3 epochs
    return ["train-cls", "--name", name, "--features", str(root / "feats"), "--num_labels", "3",
            "--output_dir", str(root / "out"), "--arch", "vit_tiny", "--input_size", "32", "--patch_size", "16",
            "--modality", "Fundus", "--batch_size_per_gpu", "16", "--num_workers", "0", "--epochs", "3",
            "--lr", "0.05", "--device", "cpu", "--report_n_boot", "0", *extra]


# ("step", k): before the k-th optimizer step of that start; ("log", e): between epoch e's checkpoint_last
# and its log line. A kill in the first epoch leaves nothing to resume (--overwrite starts it again).
DECODER_KILLS = {"mid-epoch-then-log": [("step", 5), ("log", 1)], "log-of-last-epoch": [("log", 2)]}


@pytest.mark.parametrize("case", list(DECODER_KILLS))
def test_decoder_resume_is_bit_exact(store, case, monkeypatch):
    full = store / "out" / "full"
    if not full.exists():
        assert cli_main(_cls_flags(store, "full")) == 0
    name = f"killed-{case}"
    # the first start cannot use --resume (no checkpoint yet): start it, kill it in epoch 1, then resume
    first, *rest = DECODER_KILLS[case]
    original = _kill_before_optimizer_step(first[1], monkeypatch) if first[0] == "step" else None
    if first[0] == "log":
        _kill_after_checkpoint_before_log(first[1], monkeypatch)
    with pytest.raises(Kill):
        cli_main(_cls_flags(store, name))
    if original is not None:
        monkeypatch.setattr(torch.optim.AdamW, "step", original)
    _run_killed(_cls_flags(store, name, "--resume"), rest, monkeypatch)
    run = store / "out" / name
    a, b = _decoder_tensors(full), _decoder_tensors(run)
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) == 0.0
    assert _log_lines(run) == _log_lines(full)
    assert sum("val_selection" in x for x in _log_lines(run)) == 3


def test_decoder_refuses_an_existing_run_and_overwrite_replaces_it(store, capsys):
    name = "twice"
    assert cli_main(_cls_flags(store, name, "--epochs", "1")) == 0
    run = store / "out" / name
    before = (run / "checkpoint_last.safetensors").read_bytes()
    capsys.readouterr()
    assert cli_main(_cls_flags(store, name, "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert (run / "checkpoint_last.safetensors").read_bytes() == before
    assert cli_main(_cls_flags(store, name, "--epochs", "2", "--overwrite")) == 0
    assert [x["epoch"] for x in _log_lines(run) if "epoch" in x] == [1, 2]


def _ft_flags(root: Path, name: str, *extra: str) -> list[str]:
    # 30 training images, batch 8: 4 optimizer steps per epoch, 2 epochs; drop path and random crops use
    # the global generators
    return ["finetune", "--name", name, "--data_path", str(root / "data"), "--output_dir", str(root / "out"),
            "--epochs", "2", "--lr", "0.05", "--warmup_epochs", "1", "--drop_path", "0.1", "--arch", "vit_tiny",
            "--input_size", "32", "--patch_size", "16", "--pretrained_weights", "random", "--batch_size_per_gpu",
            "8", "--num_workers", "0", "--device", "cpu", "--report_n_boot", "0", *extra]


def test_finetune_resume_is_bit_exact(tmp_path, monkeypatch):
    from tests.tasks.test_finetune import make_imagefolder

    make_imagefolder(tmp_path / "data")
    assert cli_main(_ft_flags(tmp_path, "full")) == 0
    # killed inside epoch 1 (after epoch 0's checkpoint), then between epoch 1's checkpoint and log line
    original = _kill_before_optimizer_step(6, monkeypatch)
    with pytest.raises(Kill):
        cli_main(_ft_flags(tmp_path, "killed"))
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    _run_killed(_ft_flags(tmp_path, "killed", "--resume"), [("log", 1)], monkeypatch)
    full, run = tmp_path / "out" / "full", tmp_path / "out" / "killed"
    a, b = _decoder_tensors(full), _decoder_tensors(run)
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) == 0.0
    assert _log_lines(run) == _log_lines(full)
