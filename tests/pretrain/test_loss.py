"""IBOTLoss against hand computations (reference §4.6)."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from visionfm.pretrain.loss import IBOTLoss

# ---------------------------------------------------------------------------------------------
# Independent reference: plain Python loops written from the text of reference §4.6.


def _softmax(xs, t):
    z = [x / t for x in xs]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _log_softmax(xs, t):
    z = [x / t for x in xs]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _ce(t, ls):
    return -sum(a * b for a, b in zip(t, ls))


def reference_loss(s_cls, s_patch, t_cls, t_patch, masks, G, C, B, tau, tau2, c1=None, c2=None, st=0.1):
    """s_cls [C*B][K], s_patch/t_patch [G*B][P][K2], t_cls [G*B][K], masks [G][B][P] (0/1)."""
    K, K2 = len(t_cls[0]), len(t_patch[0][0])
    c1 = c1 or [0.0] * K
    c2 = c2 or [0.0] * K2
    l1 = l2 = 0.0
    for q in range(G):
        for v in range(C):
            if v == q:
                term = 0.0
                for b in range(B):
                    tok = [
                        _ce(
                            _softmax([x - c for x, c in zip(t_patch[q * B + b][p], c2)], tau2),
                            _log_softmax(s_patch[v * B + b][p], st),
                        )
                        for p in range(len(masks[v][b]))
                    ]
                    term += sum(a * m for a, m in zip(tok, masks[v][b])) / max(sum(masks[v][b]), 1)
                l2 += term / B
            else:
                term = sum(
                    _ce(
                        _softmax([x - c for x, c in zip(t_cls[q * B + b], c1)], tau),
                        _log_softmax(s_cls[v * B + b], st),
                    )
                    for b in range(B)
                )
                l1 += term / B
    n1 = G * C - G
    return l1 / n1, l2 / G


# ---------------------------------------------------------------------------------------------
# The hand case: K = K2 = 3, P = 2 (a 1x2 grid), B = 1, G = 2, L = 0, epoch 0 (tau 0.07 / 0.04).
S_CLS = [[0.2, -0.1, 0.4], [0.0, 0.3, -0.2]]
T_CLS = [[0.1, 0.05, -0.1], [-0.2, 0.1, 0.0]]
S_PATCH = [[[0.1, 0.2, -0.3], [0.0, -0.1, 0.2]], [[0.3, -0.2, 0.1], [-0.1, 0.0, 0.05]]]
T_PATCH = [[[0.02, -0.01, 0.03], [0.1, 0.0, -0.05]], [[-0.03, 0.04, 0.0], [0.05, -0.02, 0.01]]]
MASKS = [[[True, False]], [[True, True]]]  # view 0 masks patch 0 only; view 1 masks both
# Computed once with the loops above (cls = (CE(t0, s1) + CE(t1, s0)) / 2; patch = mean over the two
# views of the masked-token mean) and pinned as literals.
HAND_CLS = 3.161896609892599
HAND_PATCH = 2.876783459758448


def _t(x):
    return torch.tensor(x, dtype=torch.float64).float()


def _masks(ms):
    return [torch.tensor(m).reshape(len(m), 1, -1) for m in ms]  # [B, H=1, W=P]


def test_hand_computed_case():
    loss = IBOTLoss(3, 3)
    out = loss(_t(S_CLS), _t(S_PATCH), _t(T_CLS), _t(T_PATCH), _masks(MASKS), epoch=0)
    ref_cls, ref_patch = reference_loss(
        S_CLS, S_PATCH, T_CLS, T_PATCH, [[[int(v) for v in r] for r in m] for m in MASKS], 2, 2, 1, 0.07, 0.04
    )
    assert ref_cls == pytest.approx(HAND_CLS, rel=1e-12)
    assert ref_patch == pytest.approx(HAND_PATCH, rel=1e-12)
    assert out["cls"].item() == pytest.approx(HAND_CLS, rel=1e-5)
    assert out["patch"].item() == pytest.approx(HAND_PATCH, rel=1e-5)
    assert out["loss"].item() == pytest.approx(HAND_CLS + HAND_PATCH, rel=1e-5)


def test_lambdas_scale_terms():
    loss = IBOTLoss(3, 3, lambda1=0.5, lambda2=2.0)
    out = loss(_t(S_CLS), _t(S_PATCH), _t(T_CLS), _t(T_PATCH), _masks(MASKS), epoch=0)
    assert out["cls"].item() == pytest.approx(0.5 * HAND_CLS, rel=1e-5)
    assert out["patch"].item() == pytest.approx(2.0 * HAND_PATCH, rel=1e-5)


def test_center_momentum_update():
    loss = IBOTLoss(3, 3)
    loss(_t(S_CLS), _t(S_PATCH), _t(T_CLS), _t(T_PATCH), _masks(MASKS), epoch=0)
    # centre = 0.9 * 0 + 0.1 * mean over rows of the raw teacher outputs
    mean_cls = [(a + b) / 2 for a, b in zip(*T_CLS)]
    mean_patch = [sum(T_PATCH[r][p][k] for r in range(2) for p in range(2)) / 4 for k in range(3)]
    assert loss.center.shape == (1, 3) and loss.center2.shape == (1, 1, 3)
    np.testing.assert_allclose(loss.center[0].numpy(), [0.1 * m for m in mean_cls], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loss.center2[0, 0].numpy(), [0.1 * m for m in mean_patch], rtol=1e-6, atol=1e-9)
    # a second step: c <- 0.9 c + 0.1 mean, and the loss of that step used the centre of the first
    c1 = loss.center[0].tolist()
    c2 = loss.center2[0, 0].tolist()
    out = loss(_t(S_CLS), _t(S_PATCH), _t(T_CLS), _t(T_PATCH), _masks(MASKS), epoch=0)
    ref_cls, ref_patch = reference_loss(
        S_CLS, S_PATCH, T_CLS, T_PATCH, [[[int(v) for v in r] for r in m] for m in MASKS], 2, 2, 1, 0.07, 0.04, c1, c2
    )
    assert out["cls"].item() == pytest.approx(ref_cls, rel=1e-5)
    assert out["patch"].item() == pytest.approx(ref_patch, rel=1e-5)
    np.testing.assert_allclose(loss.center[0].numpy(), [0.19 * m for m in mean_cls], rtol=1e-5, atol=1e-9)


def test_center_is_state_dict_compatible():
    loss = IBOTLoss(5, 7)
    assert set(loss.state_dict()) == {"center", "center2"}
    loss.load_state_dict({"center": torch.ones(1, 5), "center2": torch.ones(1, 1, 7)})
    assert loss.center.sum().item() == 5


def test_temperature_schedule_endpoints():
    loss = IBOTLoss(3, 3)  # defaults: cls 0.07 -> 0.04, patch 0.04 -> 0.07 over 30 of 100 epochs
    assert loss.teacher_temperature(0) == pytest.approx(0.07)
    assert loss.teacher_temperature(29) == pytest.approx(0.04)
    assert loss.teacher_temperature(99) == pytest.approx(0.04)
    assert loss.teacher_temperature(1) == pytest.approx(0.07 - 0.03 / 29)  # linspace step
    assert loss.teacher_patch_temperature(0) == pytest.approx(0.04)
    assert loss.teacher_patch_temperature(29) == pytest.approx(0.07)
    assert len(loss.teacher_temp_schedule) == 100 and len(loss.teacher_patch_temp_schedule) == 100
    held = IBOTLoss(3, 3, mim_start_epoch=10)
    assert all(held.teacher_patch_temperature(e) == pytest.approx(0.04) for e in range(11))
    assert held.teacher_patch_temperature(39) == pytest.approx(0.07)
    assert held.teacher_temperature(29) == pytest.approx(0.04)  # the CLS schedule is not held


def test_short_run_clips_schedule_instead_of_crashing():
    loss = IBOTLoss(3, 3, epochs=5, mim_start_epoch=2)  # original: numpy "negative dimensions"
    assert len(loss.teacher_temp_schedule) == 5
    assert loss.teacher_temperature(4) == pytest.approx(0.07 - 4 * 0.03 / 29)
    assert loss.teacher_patch_temperature(2) == pytest.approx(0.04)
    assert loss.teacher_temperature(50) == loss.teacher_temperature(4)  # past the end: last value


def test_empty_mask_contributes_zero():
    loss = IBOTLoss(3, 3)
    empty = [[[False, False]], [[False, False]]]
    out = loss(_t(S_CLS), _t(S_PATCH), _t(T_CLS), _t(T_PATCH), _masks(empty), epoch=0)
    assert out["patch"].item() == 0.0
    assert out["cls"].item() == pytest.approx(HAND_CLS, rel=1e-5)


def _random_case(G, L, B, P, K, K2, seed):
    g = torch.Generator().manual_seed(seed)
    C = G + L
    s_cls = torch.randn(C * B, K, generator=g)
    s_patch = torch.randn(G * B, P, K2, generator=g)
    t_cls = torch.randn(G * B, K, generator=g) * 0.1
    t_patch = torch.randn(G * B, P, K2, generator=g) * 0.1
    masks = [torch.rand(B, 1, P, generator=g) < 0.5 for _ in range(G)]
    masks[0][0] = False  # one image with an empty mask
    return s_cls, s_patch, t_cls, t_patch, masks


@pytest.mark.parametrize("G,L", [(2, 0), (2, 3), (3, 1), (1, 2)])
def test_matches_reference_with_local_crops(G, L):
    B, P, K, K2 = 2, 4, 5, 6
    s_cls, s_patch, t_cls, t_patch, masks = _random_case(G, L, B, P, K, K2, seed=G * 10 + L)
    loss = IBOTLoss(K, K2, global_crops=G, local_crops=L)
    # locals may also be passed separately; they are appended after the global rows
    out = loss(s_cls[: G * B], s_patch, t_cls, t_patch, masks, epoch=3, student_local_cls=s_cls[G * B :])
    ref_cls, ref_patch = reference_loss(
        s_cls.tolist(), s_patch.tolist(), t_cls.tolist(), t_patch.tolist(),
        [m.reshape(B, P).int().tolist() for m in masks],
        G, G + L, B, loss.teacher_temperature(3), loss.teacher_patch_temperature(3),
    )  # fmt: skip
    assert out["cls"].item() == pytest.approx(ref_cls, rel=1e-5)
    assert out["patch"].item() == pytest.approx(ref_patch, rel=1e-5)


def test_local_crops_counted_in_n1():
    # Identical student rows for every view make every pair loss equal, so the mean over the
    # n1 = G*C - G pairs must equal one pair's value only if n1 counts the local-crop pairs.
    G, L, K = 2, 2, 4
    row = torch.tensor([[0.3, -0.2, 0.1, 0.0]])
    t = torch.tensor([[0.2, 0.1, -0.1, 0.0]])
    loss = IBOTLoss(K, K, global_crops=G, local_crops=L)
    out = loss(row.repeat(G + L, 1), torch.zeros(G, 1, K), t.repeat(G, 1), torch.zeros(G, 1, K),
               [torch.zeros(1, 1, 1, dtype=torch.bool)] * G, epoch=0)  # fmt: skip
    one_pair = -(torch.softmax(t / 0.07, -1) * torch.log_softmax(row / 0.1, -1)).sum()
    assert out["cls"].item() == pytest.approx(one_pair.item(), rel=1e-5)  # n1 = 2*4 - 2 = 6 pairs


def test_extra_local_masks_and_tensor_masks_accepted():
    s_cls, s_patch, t_cls, t_patch, masks = _random_case(2, 1, 2, 4, 3, 3, seed=0)
    loss = IBOTLoss(3, 3, local_crops=1)
    a = loss(s_cls, s_patch, t_cls, t_patch, masks + [torch.ones(2, 6, 6, dtype=torch.bool)], epoch=0)
    loss2 = IBOTLoss(3, 3, local_crops=1)
    b = loss2(s_cls, s_patch, t_cls, t_patch, torch.stack(masks), epoch=0)
    assert torch.allclose(a["loss"], b["loss"])


def test_gradients_reach_student_only():
    s_cls, s_patch, t_cls, t_patch, masks = _random_case(2, 0, 2, 4, 3, 3, seed=1)
    s_cls.requires_grad_(True)
    s_patch.requires_grad_(True)
    t_cls.requires_grad_(True)
    out = IBOTLoss(3, 3)(s_cls, s_patch, t_cls, t_patch, masks, epoch=0)
    out["loss"].backward()
    assert s_cls.grad is not None and s_patch.grad is not None
    assert t_cls.grad is None


def test_shape_errors():
    loss = IBOTLoss(3, 4)
    s_cls, s_patch, t_cls, t_patch, masks = _random_case(2, 0, 1, 2, 3, 3, seed=0)
    with pytest.raises(ValueError, match="patch_out_dim=out_dim"):
        loss(s_cls, s_patch, t_cls, t_patch, masks, epoch=0)
    with pytest.raises(ValueError, match="no cross-view pair"):
        IBOTLoss(3, 3, global_crops=1, local_crops=0)


# ---------------------------------------------------------------------------------------------
# Two-process gloo run: the centre is the mean over both ranks' rows.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, result_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        loss = IBOTLoss(2, 2)
        t_cls = torch.full((2, 2), float(rank + 1))  # rank 0 rows = 1, rank 1 rows = 2
        t_patch = torch.full((2, 3, 2), float(10 * (rank + 1)))
        loss.update_center(t_cls, t_patch.mean(1))
        if rank == 0:
            torch.save({"c": loss.center.clone(), "c2": loss.center2.clone()}, result_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_center_all_reduced_over_ranks(tmp_path):
    path = str(tmp_path / "center.pt")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=2, join=True)
    res = torch.load(path)
    assert torch.allclose(res["c"], torch.full((1, 2), 0.1 * 1.5))
    assert torch.allclose(res["c2"], torch.full((1, 1, 2), 0.1 * 15.0))
    assert os.path.exists(path)


def test_autocast_keeps_float32():
    s_cls, s_patch, t_cls, t_patch, masks = _random_case(2, 1, 2, 4, 3, 3, seed=4)
    ref = IBOTLoss(3, 3, local_crops=1)(s_cls, s_patch, t_cls, t_patch, masks, epoch=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = IBOTLoss(3, 3, local_crops=1)(s_cls, s_patch, t_cls, t_patch, masks, epoch=0)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-6)
