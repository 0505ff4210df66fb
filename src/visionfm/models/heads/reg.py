"""Regression head for frozen-encoder features (reference §3.3, ``RegHead``).

``BatchNorm(E)`` (eps 1e-6) → ``Linear(E, E/4)`` → GELU → Dropout(0.1) → ``Linear(E/4, C)``, linear
weights N(0, 0.01) with zero bias. For ViT-B with 4 CLS levels: 3072 → 768 → 38. Parameter names
follow :class:`~visionfm.models.heads.cls.ClsHead` (``channel_bn``, ``regressor.N``). As for the
classification head, BatchNorm momentum defaults to PyTorch's 0.1 instead of the original's 0.99
(which made the running statistics those of the last training batch); pass ``bn_momentum=0.99``
to reproduce the original.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RegHead"]


class RegHead(nn.Module):
    """Biomarker regression head: ``[B, E]`` features → ``[B, C]`` values (no output activation)."""

    def __init__(self, embed_dim: int, num_targets: int, bn_momentum: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        e = int(embed_dim)
        if e < 4:
            raise ValueError(f"embed_dim must be >= 4 (the hidden layer has embed_dim // 4 units), got {e}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        self.embed_dim = e
        self.num_targets = int(num_targets)
        self.channel_bn = nn.BatchNorm2d(e, eps=1e-6, momentum=bn_momentum)
        self.regressor = nn.Sequential(
            nn.Linear(e, e // 4), nn.GELU(), nn.Dropout(dropout), nn.Linear(e // 4, self.num_targets)
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self.channel_bn(x.reshape(b, self.embed_dim, 1, 1)).flatten(1)
        return self.regressor(x)
