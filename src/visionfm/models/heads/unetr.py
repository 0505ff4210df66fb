"""The 2-D UNETR decoder of the original (``Unetr_Head``, reference §3.3).

It turns the patch tokens of four encoder blocks (``[B, P, D]`` each, grid ``g = S/16``) and the
normalised input image (``[B, 3, S, S]``) into per-pixel logits ``[B, C, S, S]``:

* stage 1 (2g): ``z12`` up-sampled once, ``z9`` up-sampled once; concatenated and convolved (4b);
* stage 2 (4g): previous up-sampled, ``z6`` up-sampled twice; concatenated and convolved (2b);
* stage 3 (8g): previous up-sampled, ``z3`` up-sampled three times; concatenated and convolved (b);
* stage 4 (16g = S): previous up-sampled, the image through two conv blocks; concatenated (b/2);
* output: ``Dropout2d(0.3)`` → ``Conv2d(b/2, C, 1)``.

Base channels ``b = 32``. ``ConvBlock`` = Conv3×3 → BatchNorm2d → ReLU; ``Deconv`` =
``ConvTranspose2d(k=2, s=2)``. Only patch size 16 is supported (four ×2 up-samplings); rectangular
inputs work when both sides are multiples of 16.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["UnetrHead", "tokens_to_maps"]


def tokens_to_maps(features: Sequence[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
    """``[B, P, D]`` (or ``[B, 1+P, D]``: the class token is dropped) → ``[B, D, gh, gw]`` each."""
    gh, gw = grid
    out = []
    for f in features:
        if f.ndim == 4:
            out.append(f)
            continue
        if f.shape[1] == gh * gw + 1:
            f = f[:, 1:]
        if f.shape[1] != gh * gw:
            raise ValueError(f"tokens have {f.shape[1]} patches but the image grid is {gh}x{gw}={gh * gw}")
        out.append(f.transpose(1, 2).reshape(f.shape[0], f.shape[2], gh, gw))
    return out


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)


def _up_path(cin: int, cout: int, times: int) -> nn.Sequential:
    """``times`` × (Deconv → ConvBlock), the first going ``cin → cout`` (the skip branches)."""
    layers: list[nn.Module] = []
    for i in range(times):
        layers += [_deconv(cin if i == 0 else cout, cout), _conv_block(cout, cout)]
    return nn.Sequential(*layers)


class UnetrHead(nn.Module):
    """UNETR decoder over four encoder levels plus the input image.

    Args:
        embed_dim: encoder width ``D``.
        num_classes: output channels ``C`` (1 for binary segmentation, K for K landmarks).
        base_channels: ``b`` (32 in the original).
        dropout: ``Dropout2d`` rate before the output convolution (0.3).
        patch_size: encoder patch size; must be 16.
    """

    def __init__(self, embed_dim: int, num_classes: int, base_channels: int = 32, dropout: float = 0.3,
                 patch_size: int = 16) -> None:
        super().__init__()
        if patch_size != 16:
            raise ValueError(f"the UNETR head up-samples ×16 and needs patch size 16, got {patch_size}")
        b, d = base_channels, embed_dim
        self.embed_dim, self.num_classes, self.patch_size = d, num_classes, patch_size
        # stage 1 (deepest feature z12 with z9)
        self.up1 = _deconv(d, 4 * b)
        self.skip1 = _up_path(d, 4 * b, 1)
        self.fuse1 = nn.Sequential(_conv_block(8 * b, 4 * b), _conv_block(4 * b, 4 * b))
        # stage 2 (z6)
        self.up2 = _deconv(4 * b, 2 * b)
        self.skip2 = _up_path(d, 2 * b, 2)
        self.fuse2 = nn.Sequential(_conv_block(4 * b, 2 * b), _conv_block(2 * b, 2 * b))
        # stage 3 (z3)
        self.up3 = _deconv(2 * b, b)
        self.skip3 = _up_path(d, b, 3)
        self.fuse3 = nn.Sequential(_conv_block(2 * b, b), _conv_block(b, b))
        # stage 4 (the image)
        self.up4 = _deconv(b, b // 2)
        self.skip4 = nn.Sequential(_conv_block(3, b // 2), _conv_block(b // 2, b // 2))
        self.fuse4 = nn.Sequential(_conv_block(b, b // 2), _conv_block(b // 2, b // 2))
        self.out = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(b // 2, num_classes, 1))

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, H, W]``.

        Args:
            features: four block outputs, shallowest first: ``[B, P, D]``, ``[B, 1+P, D]`` or
                ``[B, D, gh, gw]``.
            image: the normalised input ``[B, 3, H, W]`` with ``H, W`` multiples of 16.
        """
        if len(features) != 4:
            raise ValueError(f"the UNETR head takes 4 feature levels, got {len(features)}")
        h, w = image.shape[-2:]
        if h % 16 or w % 16:
            raise ValueError(f"input side must be a multiple of 16, got {h}x{w}")
        z3, z6, z9, z12 = (m.to(image.dtype) for m in tokens_to_maps(features, (h // 16, w // 16)))
        x = self.fuse1(torch.cat([self.up1(z12), self.skip1(z9)], 1))
        x = self.fuse2(torch.cat([self.up2(x), self.skip2(z6)], 1))
        x = self.fuse3(torch.cat([self.up3(x), self.skip3(z3)], 1))
        x = self.fuse4(torch.cat([self.up4(x), self.skip4(image)], 1))
        return self.out(x)
