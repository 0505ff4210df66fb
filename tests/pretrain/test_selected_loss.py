"""The training path computes the head's patch projection and the patch loss on the masked tokens
only; it must equal the full-token loss (the original's computation) to 1e-5 relative in fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionfm.pretrain.head import IBOTHead
from visionfm.pretrain.loss import IBOTLoss
from visionfm.pretrain.masking import PretrainMasker
from visionfm.pretrain.trainer import select_masked_tokens

G, B, GRID, D = 2, 6, 6, 32
P = GRID * GRID


def _masks(ratio=(0.0, 0.3), var=(0.0, 0.2), seed=0) -> tuple[torch.Tensor, PretrainMasker]:
    masker = PretrainMasker(list(ratio), list(var), patch_size=16)
    rng = np.random.default_rng(seed)
    m = [masker.make_masks([GRID * 16] * G, 0, rng) for _ in range(B)]
    stacked = torch.from_numpy(np.stack([np.stack(x) for x in m]))  # [B, G, H, W]
    return stacked.permute(1, 0, 2, 3).reshape(G * B, P), masker


def _heads(seed: int, norm=None, shared=False):
    torch.manual_seed(seed)
    student = IBOTHead(D, 64, 48, norm=norm, shared_head=shared, hidden_dim=40, bottleneck_dim=16)
    teacher = IBOTHead(D, 64, 48, norm=norm, shared_head=shared, hidden_dim=40, bottleneck_dim=16)
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad():  # a teacher that is not a copy of the student
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, teacher


def _case(norm=None, shared=False, local=True, ratio=(0.0, 0.3), var=(0.0, 0.2)):
    masks, masker = _masks(ratio, var)
    student, teacher = _heads(1, norm, shared)
    torch.manual_seed(2)
    tokens_s = torch.randn(G * B, 1 + P, D, requires_grad=True)
    tokens_t = torch.randn(G * B, 1 + P, D)
    local_cls = torch.randn(2 * B, 64) if local else None
    k_out = 64 if shared else 48
    return masks, masker, student, teacher, tokens_s, tokens_t, local_cls, k_out


def _loss(k_out, local):
    return IBOTLoss(64, k_out, global_crops=G, local_crops=2 if local else 0, warmup_teacher_temp_epochs=2, epochs=4)


@pytest.mark.parametrize("shared, local, ratio, var", [
    (False, True, (0.0, 0.3), (0.0, 0.2)),   # the README's mixed ratios: half the crops unmasked
    (True, False, (0.3,), (0.0,)),           # the defaults, a shared head
    (False, False, (0.5,), (0.4,)),          # wide ratio range
])
def test_selected_equals_full_loss_and_gradients(shared, local, ratio, var):
    masks, masker, student, teacher, tokens_s, tokens_t, local_cls, k_out = _case(shared=shared, local=local,
                                                                                   ratio=ratio, var=var)
    k = masker.max_masked(GRID * 16)
    assert int(masks.sum(1).max()) <= k < P

    # reference: the full-token computation
    ref_loss = _loss(k_out, local)
    s_cls, s_patch = student(tokens_s)
    with torch.no_grad():
        t_cls, t_patch = teacher(tokens_t)
    ref = ref_loss(s_cls, s_patch, t_cls, t_patch, masks.view(G, B, GRID, GRID), 1, student_local_cls=local_cls)
    ref["loss"].backward()
    ref_grads = [p.grad.clone() for p in student.parameters() if p.grad is not None] + [tokens_s.grad.clone()]
    student.zero_grad()
    tokens_s.grad = None

    # the training path
    new_loss = _loss(k_out, local)
    select, valid = select_masked_tokens(masks, k)
    assert select.shape == (G * B, k)
    assert torch.equal(valid.sum(1), masks.sum(1))  # every masked token was selected
    s_cls2, s_patch2, _ = student.forward_selected(tokens_s, select)
    with torch.no_grad():
        t_cls2, t_patch2, t_mean = teacher.forward_selected(tokens_t, select, patch_mean=True)
    assert s_patch2.shape == (G * B, k, k_out)
    out = new_loss.forward_selected(s_cls2, s_patch2, t_cls2, t_patch2, t_mean, valid, 1, student_local_cls=local_cls)
    out["loss"].backward()
    new_grads = [p.grad.clone() for p in student.parameters() if p.grad is not None] + [tokens_s.grad.clone()]

    for key in ("loss", "cls", "patch"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=0.0)
    torch.testing.assert_close(new_loss.center, ref_loss.center, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(new_loss.center2, ref_loss.center2, rtol=1e-5, atol=1e-7)
    assert len(new_grads) == len(ref_grads)
    for a, b in zip(new_grads, ref_grads):  # 1e-5 of each gradient's scale (sums in another order)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    assert ref["patch"] > 0


def test_batchnorm_head_selects_every_token_and_matches():
    """A BatchNorm head's statistics depend on the tokens it sees: with all P tokens selected
    (what the trainer does for such heads) the result equals the full forward."""
    masks, _, student, teacher, tokens_s, tokens_t, _, k_out = _case(norm="bn", local=False)
    assert student.has_batchnorm
    select, valid = select_masked_tokens(masks, P)
    assert torch.equal(valid, masks)
    ref = _loss(k_out, False)
    s_cls, s_patch = student(tokens_s)
    with torch.no_grad():
        t_cls, t_patch = teacher.eval()(tokens_t)
    r = ref(s_cls, s_patch, t_cls, t_patch, masks.view(G, B, GRID, GRID), 0)
    new = _loss(k_out, False)
    a, b, _ = student.forward_selected(tokens_s, select)
    with torch.no_grad():
        c, d, mean = teacher.forward_selected(tokens_t, select, patch_mean=True)
    o = new.forward_selected(a, b, c, d, mean, valid, 0)
    torch.testing.assert_close(o["loss"], r["loss"], rtol=1e-5, atol=0.0)


def test_bf16_autocast_keeps_the_loss_float32_and_close():
    masks, masker, student, teacher, tokens_s, tokens_t, local_cls, k_out = _case()
    select, valid = select_masked_tokens(masks, masker.max_masked(GRID * 16))
    fp32 = _loss(k_out, True)
    a, b, _ = student.forward_selected(tokens_s, select)
    c, d, mean = teacher.forward_selected(tokens_t, select, patch_mean=True)
    ref = fp32.forward_selected(a, b, c, d, mean, valid, 0, student_local_cls=local_cls)
    low = _loss(k_out, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b, _ = student.forward_selected(tokens_s, select)
        c, d, mean = teacher.forward_selected(tokens_t, select, patch_mean=True)
        assert b.dtype == torch.bfloat16  # the projection itself ran in bf16
        out = low.forward_selected(a, b, c, d, mean, valid, 0, student_local_cls=local_cls)
    assert out["loss"].dtype == torch.float32
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=2e-2, atol=0.0)


def test_selection_shapes_are_fixed_and_masked_first():
    masks = torch.zeros(3, 10, dtype=torch.bool)
    masks[0, [1, 7]] = True
    masks[2, [0, 2, 9]] = True
    select, valid = select_masked_tokens(masks, 4)
    assert select.shape == valid.shape == (3, 4)
    assert set(select[0, :2].tolist()) == {1, 7} and valid[0].tolist() == [True, True, False, False]
    assert not valid[1].any()
    assert set(select[2, :3].tolist()) == {0, 2, 9}


def test_crops_of_one_resolution_share_one_backbone_pass():
    """2 global + 3 local crops: two backbone calls (one per resolution), outputs equal to
    encoding each crop on its own."""
    from visionfm.models.encoder import VisionFMEncoder
    from visionfm.pretrain.model import MultiCropNetwork

    torch.manual_seed(0)
    net = MultiCropNetwork(VisionFMEncoder("vit_tiny", 32, 16), IBOTHead(192, 64, 48, hidden_dim=40, bottleneck_dim=16)).eval()
    calls = []
    net.backbone.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    g = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    loc = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    masks = [torch.zeros(2, 2, 2, dtype=torch.bool) for _ in range(2)]
    select = torch.zeros(4, 1, dtype=torch.long)
    with torch.no_grad():
        cls, patch, local_cls, _ = net(g, masks, loc, select=select)
    assert calls == [(4, 3, 32, 32), (6, 3, 16, 16)]
    with torch.no_grad():
        one = net.head(net.backbone(loc[1])[:, 0])
    torch.testing.assert_close(local_cls[2:4], one, rtol=1e-5, atol=1e-6)
    assert cls.shape == (4, 64) and patch.shape == (4, 1, 48) and local_cls.shape == (6, 64)
