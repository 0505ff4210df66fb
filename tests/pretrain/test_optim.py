"""Parameter groups, clipping, last-layer freezing and EMA (reference §1.5, §4.4, §4.5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionfm.pretrain.head import IBOTHead
from visionfm.pretrain.optim import (
    cancel_last_layer_grads,
    clip_gradients_global,
    clip_gradients_per_param,
    common_params,
    ema_update_,
    param_groups,
    set_group_hparams,
)

D = 6


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, D))
        self.masked_embed = nn.Parameter(torch.zeros(1, D))
        self.proj = nn.Linear(D, D)
        self.norm = nn.LayerNorm(D)
        self.frozen = nn.Parameter(torch.zeros(D, D), requires_grad=False)


def student(norm_last_layer: bool = False, shared: bool = False) -> nn.Module:
    m = nn.Module()
    m.backbone = TinyBackbone()
    m.head = IBOTHead(
        D, 4, 3, nlayers=2, hidden_dim=5, bottleneck_dim=3, norm_last_layer=norm_last_layer, shared_head=shared
    )
    return m


G0, V0 = "head.last_layer.parametrizations.weight.original0", "head.last_layer.parametrizations.weight.original1"
G2, V2 = "head.last_layer2.parametrizations.weight.original0", "head.last_layer2.parametrizations.weight.original1"


def by_flags(groups):
    return {(g["is_last_layer"], g["apply_wd"]): g["param_names"] for g in groups}


def test_fixed_grouping():
    groups = param_groups(student(), weight_decay=0.04)
    flags = [(g["is_last_layer"], g["apply_wd"]) for g in groups]
    assert flags == [(False, True), (False, False), (True, True), (True, False)]
    named = by_flags(groups)
    assert named[(False, True)] == ["backbone.proj.weight", "head.mlp.0.weight", "head.mlp.2.weight"]
    assert named[(False, False)] == [
        "backbone.cls_token", "backbone.pos_embed", "backbone.masked_embed", "backbone.proj.bias",
        "backbone.norm.weight", "backbone.norm.bias", "head.mlp.0.bias", "head.mlp.2.bias",
    ]  # fmt: skip
    assert named[(True, True)] == [V0, V2]
    assert named[(True, False)] == [G0, G2]  # trainable weight-norm magnitude g: no decay
    assert [g["weight_decay"] for g in groups] == [0.04, 0.0, 0.04, 0.0]
    all_names = [n for g in groups for n in g["param_names"]]
    assert "backbone.frozen" not in all_names  # requires_grad=False is left out


def test_official_grouping_reproduces_original():
    groups = param_groups(student(), weight_decay=0.04, official_decay=True, split_last_layer=False)
    assert len(groups) == 2
    reg, not_reg = groups[0]["param_names"], groups[1]["param_names"]
    assert reg == [
        "backbone.cls_token", "backbone.pos_embed", "backbone.masked_embed", "backbone.proj.weight",
        "head.mlp.0.weight", "head.mlp.2.weight", G0, V0, G2, V2,
    ]  # fmt: skip
    assert not_reg == [
        "backbone.proj.bias", "backbone.norm.weight", "backbone.norm.bias", "head.mlp.0.bias", "head.mlp.2.bias",
    ]  # fmt: skip
    assert groups[0]["weight_decay"] == 0.04 and groups[1]["weight_decay"] == 0.0


def test_frozen_g_and_shared_head_groups():
    groups = param_groups(student(norm_last_layer=True, shared=True))
    named = by_flags(groups)
    assert named[(True, True)] == [V0]  # shared: listed once; frozen g: excluded
    assert (True, False) not in named


def test_groups_work_with_adamw_and_hparams():
    model = student()
    opt = torch.optim.AdamW(param_groups(model), lr=0.0)
    set_group_hparams(opt, lr=1e-3, weight_decay=0.2, freeze_last_layer=True)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 0.0, 0.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0, 0.2, 0.0]
    set_group_hparams(opt, lr=2e-3, weight_decay=0.3)
    assert [g["lr"] for g in opt.param_groups] == [2e-3] * 4
    # an optimizer restored from an official state dict has no flags: only group 0 is decayed
    plain = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(2, 2))]}, {"params": [], "weight_decay": 0.0}])
    set_group_hparams(plain, lr=1.0, weight_decay=0.5)
    assert [g["weight_decay"] for g in plain.param_groups] == [0.5, 0.0]


def _params_with_grads(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (2, 2, 2), (7,)]
    scales = [10.0, 0.01, 3.0, 1.0]
    params = []
    for shape, s in zip(shapes, scales):
        p = nn.Parameter(torch.randn(shape, generator=g))
        p.grad = torch.randn(shape, generator=g) * s
        params.append(p)
    params.append(nn.Parameter(torch.zeros(2)))  # no grad: skipped
    return params


def test_per_param_clip_matches_loop_reference():
    params = _params_with_grads()
    ref = [p.grad.clone() if p.grad is not None else None for p in params]
    ref_norms = []
    for gr in ref:  # the original's loop
        if gr is None:
            continue
        n = gr.norm(2)
        ref_norms.append(n.item())
        coef = 3.0 / (n + 1e-6)
        if coef < 1:
            gr.mul_(coef)
    norms = clip_gradients_per_param(params, 3.0)
    assert norms.shape == (4,) and norms.dtype == torch.float32
    assert norms.tolist() == pytest.approx(ref_norms, rel=1e-6)
    for p, r in zip(params, ref):
        if r is not None:
            assert torch.allclose(p.grad, r, rtol=1e-6, atol=0)
    assert params[1].grad.norm() < 3.0 and torch.equal(params[1].grad, ref[1])  # small grads untouched


def test_global_clip():
    params = _params_with_grads()
    grads = [p.grad.clone() for p in params if p.grad is not None]
    total = torch.sqrt(sum(g.square().sum() for g in grads))
    norm = clip_gradients_global(params, 3.0)
    assert norm.item() == pytest.approx(total.item(), rel=1e-6)
    after = torch.sqrt(sum(p.grad.square().sum() for p in params if p.grad is not None))
    assert after.item() == pytest.approx(3.0, rel=1e-4)
    ratio = params[0].grad / grads[0]
    assert torch.allclose(ratio, torch.full_like(ratio, 3.0 / total.item()), rtol=1e-4)  # one factor for all


def test_cancel_last_layer_grads():
    model = student()
    cls, patch = model.head(torch.randn(2, 3, D))
    (cls.sum() + patch.sum()).backward()
    assert cancel_last_layer_grads(model, epoch=1, freeze_last_layer=3)
    for name, p in model.named_parameters():
        if "last_layer" in name:
            assert p.grad is None
        elif name.startswith("head.mlp"):
            assert p.grad is not None
    model.head(torch.randn(2, D)).sum().backward()
    assert not cancel_last_layer_grads(model, epoch=3, freeze_last_layer=3)
    assert model.head.last_layer.parametrizations.weight.original1.grad is not None


def test_ema_matches_loop_reference():
    torch.manual_seed(0)
    teacher = [torch.randn(3, 4), torch.randn(5)]
    student_ = [torch.randn(3, 4), torch.randn(5)]
    ref = [0.996 * t + (1 - 0.996) * s for t, s in zip(teacher, student_)]
    ema_update_(teacher, student_, 0.996)
    for t, r in zip(teacher, ref):
        assert torch.allclose(t, r, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        ema_update_(teacher, student_[:1], 0.9)


def test_common_params_intersection():
    s = student(shared=False)
    t = student(shared=True)
    del t.backbone.masked_embed  # the teacher has no mask token
    t_params, s_params = common_params(t, s)
    s_names = {id(p): n for n, p in s.named_parameters()}
    names = [s_names[id(p)] for p in s_params]
    assert "backbone.masked_embed" not in names
    assert not any(n.startswith("head.last_layer2") for n in names)
    assert "head.last_layer.parametrizations.weight.original1" in names
    ema_update_(t_params, s_params, 0.0)  # m = 0 copies the student
    assert torch.equal(t.head.mlp[0].weight, s.head.mlp[0].weight)


def _stepped(model, groups):
    opt = torch.optim.AdamW(groups, lr=0.1)
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


@pytest.mark.parametrize("official_first", [False, True])
def test_optimizer_state_moves_between_groupings_by_name(official_first):
    """Ours (4 groups) → official layout (2 groups) and back: every moment lands on its parameter."""
    from visionfm.pretrain.optim import adapt_optimizer_state

    def grouping(m, official):
        return param_groups(m, official_decay=official, split_last_layer=not official)

    src = student()
    saved = _stepped(src, grouping(src, official_first)).state_dict()
    dst = student()
    opt = torch.optim.AdamW(grouping(dst, not official_first), lr=0.1)
    opt.load_state_dict(adapt_optimizer_state(saved, opt, dst, "ckpt"))
    src_opt_state = {n: st for n, st in zip(
        [n for g in grouping(src, official_first) for n in g["param_names"]], saved["state"].values())}
    params = dict(dst.named_parameters())
    assert len(src_opt_state) == len(params) - 1  # all trainable ones
    for name, st in src_opt_state.items():
        assert torch.equal(opt.state[params[name]]["exp_avg"], st["exp_avg"]), name
    # a file without names must fit the original's grouping of this model
    bad = {"state": {}, "param_groups": [{"params": [0, 1]}, {"params": [2]}]}
    from visionfm.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"groups of \[2, 1\] parameters"):
        adapt_optimizer_state(bad, opt, dst, "ckpt")
