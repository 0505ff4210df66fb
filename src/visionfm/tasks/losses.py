"""Losses of the dense decoders, written without MONAI.

* :class:`DiceFocalLoss` — the semantics of MONAI 1.2 ``DiceFocalLoss`` as the original used it
  (reference §5.4): ``include_background=True``, ``lambda_dice = lambda_focal = 1``, ``gamma = 2``,
  ``smooth_nr = smooth_dr = 1e-5``, ``batch=False``, mean reduction. One output channel means
  binary (sigmoid, target ``{0, 1}``); several mean softmax with one-hot targets. The focal term
  is always the **sigmoid** focal loss on the logits (also with softmax), as in MONAI.
* :func:`spatial_softmax_ce` — landmark heatmaps: ``log_softmax`` over the ``H·W`` pixels of each
  channel and the cross-entropy with a soft target distribution (reference §5.5). The original
  exponentiated without subtracting the maximum (item 15) and could overflow; ``log_softmax`` is
  stable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceFocalLoss", "dice_loss", "sigmoid_focal_loss", "spatial_softmax_ce", "one_hot_target"]


def one_hot_target(target: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Labels ``[B, H, W]`` → float ``[B, C, H, W]``; with ``C == 1`` the labels themselves (binary)."""
    if target.ndim != 3:
        raise ValueError(f"target must be [B, H, W] class ids, got shape {tuple(target.shape)}")
    if num_channels == 1:
        return target[:, None].float()
    return F.one_hot(target.long(), num_channels).permute(0, 3, 1, 2).float()


def dice_loss(probs: torch.Tensor, onehot: torch.Tensor, include_background: bool = True,
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> torch.Tensor:
    """MONAI ``DiceLoss`` (``batch=False``, mean): ``1 - (2|P∩G| + nr) / (|P| + |G| + dr)`` per image and channel."""
    if not include_background and probs.shape[1] > 1:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = tuple(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * inter + smooth_nr) / (denom + smooth_dr)).mean()


def sigmoid_focal_loss(logits: torch.Tensor, onehot: torch.Tensor, gamma: float = 2.0,
                       include_background: bool = True) -> torch.Tensor:
    """MONAI ``FocalLoss`` (sigmoid, no alpha, mean over every element): ``BCE · (1 − p_t)^γ``."""
    if not include_background and logits.shape[1] > 1:
        logits, onehot = logits[:, 1:], onehot[:, 1:]
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    # (1 - p_t)^γ = exp(γ · logsigmoid(-z·(2t-1))), computed in log space as MONAI does.
    weight = torch.exp(gamma * F.logsigmoid(-logits * (2.0 * onehot - 1.0)))
    return (weight * bce).mean()


class DiceFocalLoss(nn.Module):
    """Dice + focal loss on segmentation logits ``[B, C, H, W]`` and class ids ``[B, H, W]``.

    Args:
        include_background: keep channel 0 in both terms (MONAI default, the original).
        lambda_dice / lambda_focal: term weights (1 and 1).
        gamma: focal exponent (2).
        smooth_nr / smooth_dr: Dice smoothing (1e-5 each).
    """

    def __init__(self, include_background: bool = True, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 gamma: float = 2.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        self.include_background = include_background
        self.lambda_dice = lambda_dice
        self.lambda_focal = lambda_focal
        self.gamma = gamma
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        c = logits.shape[1]
        onehot = one_hot_target(target, c)
        probs = torch.sigmoid(logits) if c == 1 else torch.softmax(logits, 1)
        d = dice_loss(probs, onehot, self.include_background, self.smooth_nr, self.smooth_dr)
        f = sigmoid_focal_loss(logits, onehot, self.gamma, self.include_background)
        return self.lambda_dice * d + self.lambda_focal * f


def spatial_softmax_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy of a per-channel spatial softmax.

    Args:
        logits: ``[B, K, H, W]`` heatmap logits.
        target: ``[B, K, H, W]`` distributions (each channel sums to 1), or all-zero channels for
            missing landmarks, which are left out of the mean.

    Returns:
        ``mean over present (b, k) of −Σ_HW target · log_softmax(logits)``; 0 (with gradient) when no
        landmark is present.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    b, k = logits.shape[:2]
    logp = F.log_softmax(logits.float().reshape(b, k, -1), dim=-1)
    t = target.float().reshape(b, k, -1)
    per = -(t * logp).sum(-1)
    present = t.sum(-1) > 0
    if not present.any():
        return logits.sum() * 0.0
    return per[present].mean()
