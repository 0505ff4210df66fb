"""Pretraining checkpoints across the two code bases (reference §1.5, §4.4, §4.8): an official
``checkpoint.pth`` (two AdamW groups) resumes here with every moment on its parameter, a checkpoint
written with ``--official_weight_decay true`` loads into the original's optimizer, and a BatchNorm
head keeps the teacher's own running statistics."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from torch import nn

from visionfm.cli.pretrain import config_from_argv
from visionfm.data.synth import generate
from visionfm.pretrain.model import build_student_teacher
from visionfm.pretrain.trainer import EpochMeters, IBOTTrainer

K = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("official_resume")
    generate("pretrain", root, num=8, img_size=32, seed=0)
    return root


def _cfg(data, out, *extra):
    return config_from_argv([
        "--data_path", str(data), "--modality", "Fundus", "--arch", "vit_tiny", "--input_size", "32",
        "--batch_size_per_gpu", "4", "--epochs", "2", "--warmup_epochs", "0", "--warmup_teacher_temp_epochs", "1",
        "--out_dim", str(K), "--patch_out_dim", str(K), "--name", "run", "--output_dir", str(out),
        "--num_workers", "0", "--device", "cpu", "--no_progress", *extra,
    ])


def original_groups(model: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """``utils.get_params_groups`` from its rule: trainable parameters, ``.bias`` or 1-D → not regularized."""
    reg, not_reg = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (not_reg if name.endswith(".bias") or p.ndim == 1 else reg).append((name, p))
    return [reg, not_reg]


def original_adamw(groups) -> torch.optim.AdamW:
    return torch.optim.AdamW([{"params": [p for _, p in groups[0]]},
                              {"params": [p for _, p in groups[1]], "weight_decay": 0.0}])


def test_official_checkpoint_resumes_with_its_moments(data, tmp_path):
    cfg = _cfg(data, tmp_path)
    student, teacher = build_student_teacher(cfg)
    teacher.load_state_dict(student.state_dict(), strict=False)
    groups = original_groups(student)
    opt = original_adamw(groups)
    torch.manual_seed(1)
    for _ in range(2):  # distinct moments on every parameter, step 2
        for _, p in groups[0] + groups[1]:
            p.grad = torch.randn_like(p)
        opt.step()
    center, center2 = torch.randn(1, K), torch.randn(1, 1, K)
    (tmp_path / "run").mkdir()
    torch.save({  # what main_pretrain.py writes (reference §4.8), fp16_scaler aside
        "student": {f"module.{k}": v for k, v in student.state_dict().items()},
        "teacher": teacher.state_dict(), "optimizer": opt.state_dict(), "epoch": 1,
        "args": argparse.Namespace(arch="vit_tiny", epochs=2, name="run"),
        "ibot_loss": {"center": center, "center2": center2},
    }, tmp_path / "run" / "checkpoint.pth")

    tr = IBOTTrainer(_cfg(data, tmp_path, "--load_from", "checkpoint.pth"))
    assert len(tr.optimizer.param_groups) > 2  # our default grouping: the state must be moved by name
    assert tr.maybe_resume() and tr.start_epoch == 1
    ours = dict(tr.student.named_parameters())
    for name, p in groups[0] + groups[1]:
        saved, got = opt.state[p], tr.optimizer.state[ours[name]]
        assert float(got["step"]) == 2.0, name
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got[moment], saved[moment]), (name, moment)
        assert torch.equal(ours[name], p), name
    assert torch.equal(tr.loss_fn.center, center) and torch.equal(tr.loss_fn.center2, center2)
    history = tr.fit()  # training continues: the second of 2 epochs (numbered from 1 in log.txt)
    assert [h["epoch"] for h in history] == [2] and torch.isfinite(torch.tensor(history[0]["train_loss"]))
    step = tr.optimizer.state[ours["backbone.blocks.0.attn.qkv.weight"]]["step"]
    assert float(step) == 2 + tr.iters_per_epoch


def test_official_weight_decay_checkpoint_resumes_in_the_original(data, tmp_path):
    tr = IBOTTrainer(_cfg(data, tmp_path, "--official_weight_decay", "true", "--epochs", "1"))
    # exactly the original's two groups, in its order
    fresh, fresh_teacher = build_student_teacher(tr.args)
    groups = original_groups(fresh)
    assert [g["param_names"] for g in tr.optimizer.param_groups] == [[n for n, _ in g] for g in groups]
    tr.fit()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)
    # the keys utils.restart_from_checkpoint reads, in the forms it loads
    assert {"student", "teacher", "optimizer", "epoch", "ibot_loss"} <= set(ckpt) and ckpt["epoch"] == 1
    assert all(k.startswith("module.") for k in ckpt["student"])
    assert set(ckpt["ibot_loss"]) == {"center", "center2"}
    wrapper = nn.Module()
    wrapper.module = fresh  # the DDP student of the original
    wrapper.load_state_dict(ckpt["student"])
    fresh_teacher.load_state_dict(ckpt["teacher"])
    opt = original_adamw(groups)
    opt.load_state_dict(ckpt["optimizer"])
    trained = dict(tr.student.named_parameters())
    n_state = 0
    for name, p in groups[0] + groups[1]:
        assert torch.equal(p, trained[name]), name
        if trained[name] in tr.optimizer.state:
            n_state += 1
            assert torch.equal(opt.state[p]["exp_avg_sq"], tr.optimizer.state[trained[name]]["exp_avg_sq"]), name
        else:  # the last layer, frozen in epoch 0: no gradient, no state (as in the original)
            assert "last_layer" in name and p not in opt.state
    assert n_state > 100
    for _, p in groups[0] + groups[1]:
        p.grad = torch.ones_like(p)
    opt.step()  # and it steps
    # fp16: the scaler is saved under the original's key
    tr.scaler = torch.amp.GradScaler("cpu")
    assert "fp16_scaler" in tr._checkpoint_state(1, 0)


def test_batchnorm_head_teacher_keeps_its_own_statistics(data, tmp_path):
    tr = IBOTTrainer(_cfg(data, tmp_path, "--norm_in_head", "bn", "--lr", "0.1"))
    for net in (tr.student, tr.teacher):
        assert net.head.mlp[1] is net.head.mlp[4] and isinstance(net.head.mlp[1], nn.BatchNorm1d)
    assert tr.teacher.training  # as the original's teacher, never put in eval mode
    crops, masks = tr.prepare_batch(next(iter(tr._loader(0, 0))))
    g = tr.args.global_crops_number
    before = copy.deepcopy(tr.teacher)
    with torch.no_grad():
        before(crops[:g])  # the teacher's own forward on this batch: the statistics it must end with
    t_bn, s_bn = tr.teacher.head.mlp[1], tr.student.head.mlp[1]
    mean0 = t_bn.running_mean.clone()
    tr.train_step(crops, masks, epoch=0, it=0, meters=EpochMeters.zeros(tr.device))
    assert not torch.equal(t_bn.running_mean, mean0)
    torch.testing.assert_close(t_bn.running_mean, before.head.mlp[1].running_mean)
    torch.testing.assert_close(t_bn.running_var, before.head.mlp[1].running_var)
    assert int(t_bn.num_batches_tracked) == 2  # updated at both positions of the one module
    # the EMA moved the parameters only: the teacher's buffers are not the student's
    assert not torch.allclose(t_bn.running_mean, s_bn.running_mean)
    assert not torch.equal(t_bn.weight, before.head.mlp[1].weight)
    # the original's DDP-wrapped teacher (BatchNorm) is saved with 'module.' keys
    state = tr._checkpoint_state(1, 0)
    assert "module.head.mlp.4.running_mean" in state["teacher"]
