"""The original's linear segmentation decoder (``linSeg``, reference §3.3).

The patch tokens of four blocks are laid out as ``[B, D, g, g]`` maps, concatenated (``4D``
channels), mapped to ``C`` logits by a 1×1 convolution and up-sampled ×patch bilinearly.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionfm.models.heads.unetr import tokens_to_maps

__all__ = ["LinearSegHead"]


class LinearSegHead(nn.Module):
    """1×1 convolution over four concatenated token maps, then bilinear up-sampling.

    Args:
        embed_dim: encoder width ``D``.
        num_classes: output channels ``C``.
        patch_size: up-sampling factor (the encoder patch size, 16 in the original).
        num_levels: number of feature levels concatenated (4).
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int = 16, num_levels: int = 4) -> None:
        super().__init__()
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.patch_size, self.num_levels = patch_size, num_levels
        self.conv = nn.Conv2d(num_levels * embed_dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, C, gh·p, gw·p]``; ``image`` (unused) only fixes the grid and the output size."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(features)}")
        if image is not None:
            grid = (image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
        else:
            n = features[0].shape[1]
            side = int(round(n**0.5))
            grid = (side, side) if side * side == n else (int(round((n - 1) ** 0.5)),) * 2
        maps = tokens_to_maps(features, grid)
        x = self.conv(torch.cat([m.to(self.conv.weight.dtype) for m in maps], 1))
        return F.interpolate(x, scale_factor=self.patch_size, mode="bilinear", align_corners=False)
