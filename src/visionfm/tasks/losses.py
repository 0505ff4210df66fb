"""Losses of the dense decoders.

* :class:`DiceFocalLoss` — ``monai.losses.DiceFocalLoss`` as the original used it (reference §5.4):
  ``include_background=True``, ``lambda_dice = lambda_focal = 1``, ``gamma = 2``,
  ``smooth_nr = smooth_dr = 1e-5``, ``batch=False``, mean reduction. One output channel means
  binary (sigmoid, target ``{0, 1}``); several mean softmax with one-hot targets. The focal term
  is always the **sigmoid** focal loss on the logits (also with softmax), as in MONAI.
* :func:`spatial_softmax_ce` — landmark heatmaps: ``log_softmax`` over the ``H·W`` pixels of each
  channel and the cross-entropy with a soft target distribution (reference §5.5). The original
  exponentiated without subtracting the maximum (item 15) and could overflow; ``log_softmax`` is
  stable.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss as MonaiDiceFocalLoss
from torch import nn

__all__ = ["DiceFocalLoss", "spatial_softmax_ce"]


class DiceFocalLoss(nn.Module):
    """Dice + focal loss on segmentation logits ``[B, C, H, W]`` and class ids ``[B, H, W]``.

    ``monai.losses.DiceFocalLoss`` configured as the original's ``train_seg_decoder`` (reference
    §5.4): ``sigmoid=True`` for one output channel, ``softmax=True, to_onehot_y=True`` for several;
    MONAI's focal term is the sigmoid focal loss on the logits in both cases.

    Args:
        include_background: keep channel 0 in both terms (MONAI default, the original).
        lambda_dice / lambda_focal: term weights (1 and 1).
        gamma: focal exponent (2).
        smooth_nr / smooth_dr: Dice smoothing (1e-5 each).
    """

    def __init__(self, include_background: bool = True, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 gamma: float = 2.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        common: dict[str, Any] = {"include_background": include_background, "lambda_dice": lambda_dice,
                  "lambda_focal": lambda_focal, "gamma": gamma, "smooth_nr": smooth_nr, "smooth_dr": smooth_dr}
        # The activation is a constructor argument in MONAI; the channel count picks one per call.
        self.binary = MonaiDiceFocalLoss(sigmoid=True, **common)
        self.multiclass = MonaiDiceFocalLoss(softmax=True, to_onehot_y=True, **common)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != 3:
            raise ValueError(f"target must be [B, H, W] class ids, got shape {tuple(target.shape)}")
        logits = logits.float()
        labels = target[:, None]
        if logits.shape[1] == 1:
            return self.binary(logits, labels.float())
        return self.multiclass(logits, labels.long())


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
