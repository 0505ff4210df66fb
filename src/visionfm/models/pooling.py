"""The one token pooling: how the classification-style heads' input is built from encoder tokens.

Used identically at training time (cached features, fine-tuning), in model folders and at
prediction time, so a head always sees the input it was trained on.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["pool_tokens", "pooled_features"]


def pool_tokens(cls: torch.Tensor, patch_mean: torch.Tensor | None, n_last_blocks: int, avgpool: int) -> torch.Tensor:
    """Head input from CLS tokens ``[N, L, D]`` (L blocks, shallowest first) and the last block's mean
    patch token ``[N, D]``.

    ``avgpool=0``: the CLS tokens of the last ``n_last_blocks`` blocks concatenated, ``[N, n·D]``;
    ``1``: the mean patch token, ``[N, D]`` (the original's meaning); ``2``: both, ``[N, (n+1)·D]``.
    """
    from visionfm.errors import ConfigError  # a ValueError that the command line prints as one line

    if avgpool not in (0, 1, 2):
        raise ConfigError(f"--avgpool_patchtokens: expected one of 0, 1, 2, got {avgpool!r}")
    if avgpool and patch_mean is None:
        raise ConfigError(f"--avgpool_patchtokens {avgpool} needs mean patch tokens, which these features lack")
    if avgpool == 1:
        return patch_mean.float()  # type: ignore[union-attr]
    levels = cls.shape[1]
    if not 1 <= n_last_blocks <= levels:
        raise ConfigError(f"--n_last_blocks: expected an integer in [1, {levels}] (the features hold the CLS tokens "
                          f"of {levels} blocks), got {n_last_blocks!r}")
    out = cls[:, levels - n_last_blocks:].reshape(cls.shape[0], -1).float()
    return torch.cat([out, patch_mean.float()], dim=1) if avgpool == 2 else out  # type: ignore[union-attr]


def pooled_features(encoder: Any, images: torch.Tensor, n_last_blocks: int, avgpool: int,
                    block_ids: Sequence[int] | None = None) -> torch.Tensor:
    """:func:`pool_tokens` of a live encoder (final norm applied to every block, as in extraction).

    ``block_ids`` (explicit blocks, shallowest first) replaces "the last ``n_last_blocks``".
    """
    which: Any = list(block_ids) if block_ids else (1 if avgpool == 1 else int(n_last_blocks))
    outs = encoder.forward_intermediates_tokens(images, which, norm=True)
    cls = torch.stack([o[:, 0] for o in outs], dim=1)
    patch_mean = outs[-1][:, 1:].mean(dim=1) if avgpool else None
    return pool_tokens(cls, patch_mean, cls.shape[1] if avgpool != 1 else 1, avgpool)
