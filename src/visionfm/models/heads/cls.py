"""Classification heads for frozen-encoder features (reference §3.3).

:class:`ClsHead` keeps the original's parameter names (``channel_bn``, ``classifier.N``) so its
state dict lines up with ``checkpoint_<key>_linear.pth`` files once the DDP ``module.`` prefix is
removed. One deliberate change: BatchNorm momentum defaults to 0.1 (PyTorch's usual value). The
original passed 0.99, and since PyTorch's momentum is the weight of the *new* batch, its running
statistics were essentially those of the last training batch; pass ``bn_momentum=0.99`` to reproduce.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClsHead", "LinearHead"]


def _init_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.zeros_(m.bias)


class ClsHead(nn.Module):
    """``BatchNorm(E)`` → MLP to ``num_classes`` logits.

    ``layers=3``: E→E/2→E/4→C; ``layers=2``: E→E/4→C; ``layers=1``: E→C. GELU and Dropout(0.1)
    between linear layers; BatchNorm eps 1e-6; linear weights N(0, 0.01), zero bias.
    """

    def __init__(self, embed_dim: int, num_classes: int, layers: int = 3, bn_momentum: float = 0.1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if layers not in (1, 2, 3):
            raise ValueError(f"layers must be 1, 2 or 3, got {layers}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        e = int(embed_dim)
        self.embed_dim = e
        self.num_classes = int(num_classes)
        self.channel_bn = nn.BatchNorm2d(e, eps=1e-6, momentum=bn_momentum)
        widths = {1: [e], 2: [e, e // 4], 3: [e, e // 2, e // 4]}[layers]
        mods: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            mods += [nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)]
        mods.append(nn.Linear(widths[-1], self.num_classes))
        self.classifier = nn.Sequential(*mods)
        _init_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self.channel_bn(x.reshape(b, self.embed_dim, 1, 1)).flatten(1)
        return self.classifier(x)


class LinearHead(nn.Module):
    """A plain linear probe (no BatchNorm, no hidden layers): ``Linear(E, C)``, N(0, 0.01) init."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.num_classes = int(num_classes)
        self.linear = nn.Linear(self.embed_dim, self.num_classes)
        _init_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))
