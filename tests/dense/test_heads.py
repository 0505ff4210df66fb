"""UNETR and linear segmentation heads: shapes, gradients, the original's layer recipe."""

import pytest
import torch
from torch import nn

from visionfm.models.heads.linear_seg import LinearSegHead
from visionfm.models.heads.unetr import UnetrHead, tokens_to_maps


def _feats(b, h, w, d, cls=False):
    p = (h // 16) * (w // 16) + (1 if cls else 0)
    return [torch.randn(b, p, d) for _ in range(4)]


@pytest.mark.parametrize("hw", [(64, 64), (32, 80)])
def test_unetr_shapes_and_every_parameter_gets_gradient(hw):
    h, w = hw
    head = UnetrHead(24, 3)
    out = head(_feats(2, h, w, 24), torch.randn(2, 3, h, w))
    assert out.shape == (2, 3, h, w) and torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_unetr_recipe_matches_reference():
    head = UnetrHead(768, 4)
    # Base channels 32: the image branch is CB(3->16), output Conv2d(16 -> C, 1x1) after Dropout2d(0.3).
    assert isinstance(head.out[0], nn.Dropout2d) and head.out[0].p == 0.3
    assert head.out[1].in_channels == 16 and head.out[1].kernel_size == (1, 1)
    assert head.skip4[0][0].in_channels == 3 and head.skip4[0][0].out_channels == 16
    assert head.up1.in_channels == 768 and head.up1.out_channels == 128
    # z9 / z6 / z3 branches up-sample 1 / 2 / 3 times.
    count = lambda seq: sum(isinstance(m, nn.ConvTranspose2d) for m in seq.modules())  # noqa: E731
    assert (count(head.skip1), count(head.skip2), count(head.skip3)) == (1, 2, 3)


def test_unetr_accepts_class_token_and_rejects_bad_inputs():
    head = UnetrHead(8, 1)
    out = head(_feats(1, 32, 32, 8, cls=True), torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        head(_feats(1, 32, 32, 8), torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="patch size 16"):
        UnetrHead(8, 1, patch_size=8)
    with pytest.raises(ValueError, match="4 feature levels"):
        head(_feats(1, 32, 32, 8)[:3], torch.randn(1, 3, 32, 32))


def test_tokens_to_maps_layout():
    tok = torch.arange(6 * 2, dtype=torch.float32).reshape(1, 6, 2)  # P=6 (2x3 grid), D=2
    m = tokens_to_maps([tok], (2, 3))[0]
    assert m.shape == (1, 2, 2, 3)
    assert m[0, 0, 1, 2] == tok[0, 5, 0]  # row-major patches


def test_linear_seg_head():
    head = LinearSegHead(10, 2)
    assert head.conv.in_channels == 40 and head.conv.kernel_size == (1, 1)
    out = head(_feats(2, 48, 32, 10), torch.randn(2, 3, 48, 32))
    assert out.shape == (2, 2, 48, 32)
    assert head(_feats(2, 32, 32, 10)).shape == (2, 2, 32, 32)  # square grid inferred without the image
