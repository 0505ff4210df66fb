"""DiceFocal (through MONAI) and the spatial soft-max cross-entropy, against hand computations."""

import math

import pytest
import torch

from tests.metrics import golden_inputs, golden_values
from visionfm.tasks.losses import DiceFocalLoss, spatial_softmax_ce


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_binary_dice_focal_by_hand():
    # One image, one channel, 2x2 pixels: logits and targets written out.
    z = [[2.0, -1.0], [0.5, -3.0]]
    t = [[1, 0], [1, 1]]
    logits = torch.tensor(z)[None, None]
    target = torch.tensor(t)[None]
    p = [_sig(v) for row in z for v in row]
    g = [v for row in t for v in row]
    inter = sum(a * b for a, b in zip(p, g))
    dice = 1 - (2 * inter + 1e-5) / (sum(p) + sum(g) + 1e-5)
    focal = 0.0
    for gi, pi in zip(g, p):
        bce = -(gi * math.log(pi) + (1 - gi) * math.log(1 - pi))
        pt = pi if gi == 1 else 1 - pi
        focal += bce * (1 - pt) ** 2
    focal /= 4
    got = DiceFocalLoss()(logits, target).item()
    assert abs(got - (dice + focal)) < 1e-6


def test_multiclass_uses_softmax_dice_and_sigmoid_focal_with_background():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    probs = logits.softmax(1)
    inter = (probs * onehot).sum((2, 3))
    den = probs.sum((2, 3)) + onehot.sum((2, 3))
    dice = (1 - (2 * inter + 1e-5) / (den + 1e-5)).mean()  # mean over images and ALL classes (batch=False)
    p = logits.sigmoid()
    pt = torch.where(onehot > 0, p, 1 - p)
    focal = (-(pt.log()) * (1 - pt) ** 2).mean()
    got = DiceFocalLoss()(logits, target)
    assert torch.allclose(got, dice + focal, atol=1e-6)
    no_focal = DiceFocalLoss(lambda_focal=0.0)(logits, target)
    assert torch.allclose(no_focal, dice, atol=1e-6)  # the two terms separately
    assert torch.allclose(DiceFocalLoss(lambda_dice=0.0)(logits, target), focal, atol=1e-6)


def test_dice_focal_near_zero_for_confident_correct_logits_and_has_gradient():
    target = torch.randint(0, 2, (2, 8, 8))
    logits = (target.float() * 2 - 1)[:, None] * 30
    assert DiceFocalLoss()(logits, target).item() < 1e-4
    x = torch.zeros(2, 1, 8, 8, requires_grad=True)
    DiceFocalLoss()(x, target).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_spatial_softmax_ce_by_hand_and_stable():
    logits = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    target = torch.tensor([[[[0.0, 0.25], [0.0, 0.75]]]])
    lse = math.log(sum(math.exp(v) for v in (0.0, 1.0, 2.0, 3.0)))
    expect = -(0.25 * (1.0 - lse) + 0.75 * (3.0 - lse))
    assert abs(spatial_softmax_ce(logits, target).item() - expect) < 1e-6
    huge = logits * 1e4  # the original's exp without max subtraction overflows here
    assert torch.isfinite(spatial_softmax_ce(huge, target))


def test_spatial_softmax_ce_skips_missing_landmarks():
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    target = torch.zeros(1, 2, 3, 3)
    target[0, 0, 1, 1] = 1.0
    only_first = spatial_softmax_ce(logits[:, :1], target[:, :1])
    assert torch.allclose(spatial_softmax_ce(logits, target), only_first)
    zero = spatial_softmax_ce(logits, torch.zeros_like(target))
    zero.backward()
    assert zero.item() == 0.0


@pytest.mark.parametrize("case", sorted(golden_values.GOLDEN["loss"]))
def test_dice_focal_same_as_recorded_before_monai(case):
    logits, target = golden_inputs.loss_cases()[case]
    assert DiceFocalLoss()(logits, target).item() == pytest.approx(golden_values.GOLDEN["loss"][case], abs=1e-6)


def test_dice_focal_rejects_one_hot_target():
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        DiceFocalLoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
