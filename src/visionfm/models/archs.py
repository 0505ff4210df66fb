"""The four ViT variants of VisionFM (reference §3.1) as data, and the factory that builds them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArchSpec", "ARCHS", "get_arch", "arch_from_shapes", "dense_block_ids"]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


ARCHS: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        ArchSpec("vit_tiny", 192, 12, 3),
        ArchSpec("vit_small", 384, 12, 6),
        ArchSpec("vit_base", 768, 12, 12),
        ArchSpec("vit_large", 1024, 24, 16),
    )
}


def get_arch(name: str) -> ArchSpec:
    """Look up a variant; an unknown name lists the valid ones (the original advertised vit_huge etc.)."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(ARCHS)}") from None


def arch_from_shapes(embed_dim: int, depth: int) -> str | None:
    """Name of the variant whose width and depth match, or None."""
    for spec in ARCHS.values():
        if spec.embed_dim == embed_dim and spec.depth == depth:
            return spec.name
    return None


def dense_block_ids(depth: int) -> list[int]:
    """Block indices feeding the dense (UNETR) decoders: [3,5,7,11] for 12 blocks, [5,11,17,23] for 24.

    These are the original's choices (reference §3.3); other depths get four evenly spaced blocks
    ending at the last one instead of the original's NotImplementedError.
    """
    if depth == 12:
        return [3, 5, 7, 11]
    if depth == 24:
        return [5, 11, 17, 23]
    if depth < 4:
        raise ValueError(f"dense decoders need at least 4 blocks, encoder has {depth}")
    step = depth / 4
    return [round(step * (i + 1)) - 1 for i in range(4)]
