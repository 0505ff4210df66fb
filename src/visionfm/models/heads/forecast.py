"""Progression-forecasting head: image features + a time interval → one logit (reference §3.3, §5.7).

The original ``ForecastHead(D, max_len)`` added a fixed sinusoidal encoding of the interval (in days)
to the image feature and applied ``Linear(D, 1)``. It never imported ``math`` (so it could not be
built), returned ``[B, 1]`` against ``[B]`` targets, and was fed ``n·D``-wide CLS concatenations
while expecting ``D``. Here:

* ``pe`` is a fixed buffer ``[max_len, D]`` with ``pe[t, 2i] = sin(t·e^{-2i·ln(10000)/D})`` and
  ``pe[t, 2i+1] = cos(…)`` (not saved in checkpoints: it is rebuilt from ``D`` and ``max_len``);
* when the feature width ``F`` differs from ``D`` a learned ``Linear(F, D)`` projection comes first
  (``proj``), so any ``n_last_blocks`` / pooling choice fits;
* ``forward(x [B, F], days [B])`` returns a ``[B]`` logit for "progresses within the interval";
* a day outside ``[0, max_len)`` raises a ``ValueError`` naming the offending value.

:class:`StandardizedForecastHead` is what ``visionfm train-forecast`` trains and packages (head type
``forecast_std`` of a model folder): a fixed per-feature standardisation with the training split's
mean and std (saved buffers ``norm.mean`` / ``norm.std``) in front of a :class:`ForecastHead`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ForecastHead", "StandardizedForecastHead", "Standardize", "sinusoidal_table"]


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """The ``[max_len, dim]`` sinusoidal table (even columns sin, odd columns cos)."""
    if max_len < 1 or dim < 1:
        raise ValueError(f"max_len and dim must be positive, got {max_len} and {dim}")
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[: dim // 2])
    return pe.float()


class ForecastHead(nn.Module):
    """``Linear(D, 1)(proj(x) + pe[days])`` → a ``[B]`` logit.

    Args:
        embed_dim: ``D``, the width of the positional encoding (the encoder's embedding width).
        max_len: number of representable days; ``days`` must lie in ``[0, max_len)``.
        in_features: width ``F`` of the incoming features (default ``D``); when it differs a
            ``Linear(F, D)`` projection is learned.
        dropout: dropout on the summed representation before the final linear layer.

    ``forward(x, days=None)``: with ``days=None`` the last column of ``x`` holds the interval (the
    packed ``[B, F+1]`` form used when training on cached feature tensors).
    """

    pe: torch.Tensor  # buffer [max_len, D]

    def __init__(
        self, embed_dim: int, max_len: int = 6500, in_features: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.max_len = int(max_len)
        self.in_features = int(in_features) if in_features is not None else self.embed_dim
        self.register_buffer("pe", sinusoidal_table(self.max_len, self.embed_dim), persistent=False)
        self.proj: nn.Module = (nn.Identity() if self.in_features == self.embed_dim
                                else nn.Linear(self.in_features, self.embed_dim))
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(self.embed_dim, 1)

    def check_days(self, days: torch.Tensor) -> torch.Tensor:
        """Integer day indices ``[B]``; ValueError when any is not an integer in ``[0, max_len)``."""
        d = days.reshape(-1)
        if d.is_floating_point():
            r = torch.round(d)
            if d.numel() and bool((d - r).abs().max() > 1e-3):
                raise ValueError("days must be whole numbers of days")
            d = r
        d = d.long()
        if d.numel():
            lo, hi = int(d.min()), int(d.max())
            if lo < 0 or hi >= self.max_len:
                bad = lo if lo < 0 else hi
                raise ValueError(f"interval of {bad} days is outside the positional encoding range "
                                 f"[0, {self.max_len}); raise --max_len or drop that sample")
        return d

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        if days is None:
            x, days = x[:, :-1], x[:, -1]
        if x.shape[-1] != self.in_features:
            raise ValueError(f"features have width {x.shape[-1]}, the head expects {self.in_features}")
        d = self.check_days(days.to(x.device))
        if d.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} feature rows but {d.shape[0]} intervals")
        h = self.proj(x) + self.pe[d].to(x.dtype)
        return self.linear(self.dropout(h)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, embed_dim={self.embed_dim}, max_len={self.max_len}"


class Standardize(nn.Module):
    """Fixed per-feature standardisation ``(x - mean) / std`` (training-split statistics, saved buffers)."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clamp_min(1e-6).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class StandardizedForecastHead(nn.Module):
    """:class:`Standardize` (``norm``) + :class:`ForecastHead` (``head``); ``forward(x, days=None)`` as the
    head (packed ``[B, F+1]`` form when ``days`` is None). Built with identity statistics (mean 0, std 1)
    unless ``mean`` / ``std`` are given; a model folder loads the saved ones."""

    def __init__(self, embed_dim: int, max_len: int = 6500, in_features: int | None = None, dropout: float = 0.0,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        width = int(in_features) if in_features is not None else int(embed_dim)
        self.norm = Standardize(torch.zeros(width) if mean is None else mean,
                                torch.ones(width) if std is None else std)
        self.head = ForecastHead(embed_dim, max_len, in_features=width, dropout=dropout)

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        if days is None:
            x, days = x[:, :-1], x[:, -1]
        return self.head(self.norm(x), days)
