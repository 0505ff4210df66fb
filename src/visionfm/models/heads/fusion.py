"""Per-subject fusion of several modalities' features, in front of a decoder head.

The original pooled images of all modalities into one sample set (reference §3.4). When images share
a subject id, visionfm can instead build one sample per subject holding one feature vector per
modality *slot* and a presence flag. Inputs reach the model packed as one tensor
``[B, M, F + 1]``: ``x[..., :F]`` are the features of modality slot ``m`` (zeros when absent) and
``x[..., F]`` is 1.0 when the subject has that modality, else 0.0 (see :func:`pack_modalities`).

* :class:`ConcatFusion` — ``[B, M·F + M]``: every slot's features (zeros when absent) followed by
  the ``M`` presence flags, so the head can tell "missing" from "all-zero features".
* :class:`AttentionFusion` — ``[B, F]``: gated attention pooling (Ilse et al., 2018) over the
  available slots: ``a_m = softmax_m(wᵀ tanh(V x_m + b_m) ⊙ σ(U x_m))`` with a learned per-slot
  bias ``b_m`` and absent slots masked out, output ``Σ a_m x_m``.
* :class:`FusedModel` — fusion then head; ``forward`` takes the packed tensor.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConcatFusion", "AttentionFusion", "FusedModel", "pack_modalities", "unpack_modalities", "FUSIONS"]

FUSIONS = ("pooled", "concat", "attention")


def pack_modalities(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[N, M, F]`` features + ``[N, M]`` presence → packed ``[N, M, F + 1]`` (absent slots zeroed)."""
    if features.ndim != 3 or present.shape != features.shape[:2]:
        raise ValueError(f"features must be [N, M, F] and present [N, M]; got {tuple(features.shape)} and "
                         f"{tuple(present.shape)}")
    mask = present.to(features.dtype)
    return torch.cat([features * mask[..., None], mask[..., None]], dim=2)


def unpack_modalities(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``[B, M, F + 1]`` → ``(features [B, M, F], present bool [B, M])``."""
    if packed.ndim != 3:
        raise ValueError(f"fused inputs must be [B, modalities, features + 1], got {tuple(packed.shape)}")
    return packed[..., :-1], packed[..., -1] > 0.5


class ConcatFusion(nn.Module):
    """Concatenate the slots' features and presence flags: ``[B, M, F+1]`` → ``[B, M·F + M]``."""

    def __init__(self, num_modalities: int, feat_dim: int) -> None:
        super().__init__()
        self.num_modalities = int(num_modalities)
        self.feat_dim = int(feat_dim)
        self.out_dim = self.num_modalities * self.feat_dim + self.num_modalities

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        x, present = unpack_modalities(packed)
        x = x * present[..., None].to(x.dtype)
        return torch.cat([x.flatten(1), present.to(x.dtype)], dim=1)


class AttentionFusion(nn.Module):
    """Gated attention pooling over the available modality slots: ``[B, M, F+1]`` → ``[B, F]``."""

    def __init__(self, num_modalities: int, feat_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.num_modalities = int(num_modalities)
        self.feat_dim = int(feat_dim)
        self.out_dim = self.feat_dim
        self.norm = nn.LayerNorm(self.feat_dim)  # scores only: slots from different encoders differ in scale
        self.attn_v = nn.Linear(self.feat_dim, hidden)
        self.attn_u = nn.Linear(self.feat_dim, hidden)
        self.attn_w = nn.Linear(hidden, 1)
        self.slot_bias = nn.Parameter(torch.zeros(self.num_modalities, hidden))

    def weights(self, packed: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, M]`` (0 for absent slots, each row sums to 1)."""
        x, present = unpack_modalities(packed)
        if not bool(present.any(dim=1).all()):
            raise ValueError("every sample needs at least one modality present")
        z = self.norm(x)
        h = torch.tanh(self.attn_v(z) + self.slot_bias) * torch.sigmoid(self.attn_u(z))
        scores = self.attn_w(h).squeeze(-1).masked_fill(~present, float("-inf"))
        return torch.softmax(scores, dim=1)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        a = self.weights(packed)
        x, _ = unpack_modalities(packed)
        return torch.einsum("bm,bmf->bf", a, x)


class FusedModel(nn.Module):
    """``head(fusion(packed))``; ``head`` must accept ``[B, fusion.out_dim]``."""

    def __init__(self, fusion: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.fusion = fusion
        self.head = head

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.head(self.fusion(packed))
