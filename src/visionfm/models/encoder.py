"""VisionFM encoder: timm's VisionTransformer plus the iBOT mask token, with the official parameter names.

The module subclasses timm's ``VisionTransformer`` (fused SDPA attention, pre-norm blocks, LayerNorm
eps 1e-6) so that ``state_dict()`` keys are exactly the official ones (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``,
``masked_embed``). Only the token preparation is ours: the mask token must replace patch embeddings
*before* the position embedding (reference §3.1), and the position embedding is resampled with
the original's bicubic rule so outputs at non-native sizes match the official model.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Sequence, cast

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from visionfm.models.archs import get_arch

if TYPE_CHECKING:
    from visionfm.models.loading import LoadReport

__all__ = ["VisionFMEncoder", "build_encoder", "resample_pos_embed"]


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Resize a ``[1, prefix+g0*g0, D]`` position embedding to ``grid`` (bicubic, align_corners=False).

    This is the load-time rule of the original (``resize_pos_embed``, reference §1.4), used when a
    checkpoint trained at one size is loaded into an encoder built for another.
    """
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = int(round(math.sqrt(patch.shape[1])))
    if old * old != patch.shape[1]:
        raise ValueError(f"position embedding has {patch.shape[1]} patch tokens, not a square grid")
    if (old, old) == tuple(grid):
        return pos_embed
    dim = patch.shape[-1]
    patch = patch.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=tuple(grid), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patch], dim=1)


class VisionFMEncoder(VisionTransformer):
    """ViT backbone returning all tokens ``[B, 1+P, D]`` after the final norm.

    Args:
        arch: one of ``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``.
        img_size: native input side (position-embedding grid = img_size // patch_size).
        patch_size: patch side (default 16).
        drop_path_rate: maximum stochastic-depth rate (linearly increasing over blocks).
        masked_im_modeling: create the ``masked_embed`` token (zeros, shape ``[1, D]``). It is
            created by default so official student checkpoints load as they are; a mask is
            only applied when one is passed to :meth:`forward`.
    """

    # timm types these Optional (a ViT may be built without them); this encoder always has both.
    cls_token: nn.Parameter
    pos_embed: nn.Parameter
    masked_embed: nn.Parameter | None
    # Set by :func:`visionfm.models.load_encoder`; absent on an encoder built directly.
    load_report: LoadReport

    def __init__(
        self,
        arch: str = "vit_base",
        img_size: int = 224,
        patch_size: int = 16,
        drop_path_rate: float = 0.0,
        masked_im_modeling: bool = True,
    ) -> None:
        spec = get_arch(arch)
        if patch_size < 1 or img_size < 1 or img_size % patch_size:
            from visionfm.errors import ConfigError  # a ValueError: one line on the command line

            raise ConfigError(f"--input_size: expected a positive multiple of the patch size {patch_size}, "
                              f"got {img_size}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="token",
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=spec.mlp_ratio,
            qkv_bias=True,
            fc_norm=False,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        # Any input that is a multiple of the patch size is accepted; positions are resampled per call.
        self.patch_embed.strict_img_size = False
        self.arch = arch
        self.img_size = img_size
        self._patch_size = patch_size
        # The official init: trunc-normal .02 for the class token as well (timm uses N(0, 1e-6)).
        trunc_normal_(self.cls_token, std=0.02)
        if masked_im_modeling:
            self.masked_embed = nn.Parameter(torch.zeros(1, spec.embed_dim))
        else:
            self.register_parameter("masked_embed", None)

    # -- properties of the public API -------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self._patch_size

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def grid_size(self) -> tuple[int, int]:
        gh, gw = self.patch_embed.grid_size
        return int(gh), int(gw)

    # -- token path ----------------------------------------------------------------------------------
    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embedding for an ``height x width`` input (the original's DINO rule, reference §3.1).

        Unchanged when the grid matches; otherwise the patch part is resized bicubically with
        ``scale_factor=((h0+0.1)/sqrt(N), (w0+0.1)/sqrt(N))``, exactly as the official model does,
        so features at non-native sizes equal the official ones.
        """
        pos = self.pos_embed
        n_patch = pos.shape[1] - 1
        h0, w0 = height // self._patch_size, width // self._patch_size
        if h0 * w0 == n_patch and h0 == w0:
            return pos
        side = math.sqrt(n_patch)
        grid = int(side)
        dim = pos.shape[-1]
        patch = pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patch = F.interpolate(
            patch.float(),
            scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side),
            mode="bicubic",
            align_corners=False,
        ).to(pos.dtype)
        if patch.shape[-2:] != (h0, w0):
            raise RuntimeError(f"position-embedding resampling produced {tuple(patch.shape[-2:])}, expected {(h0, w0)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
        return torch.cat([pos[:, :1], patch], dim=1)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-embed, substitute ``masked_embed`` where ``mask`` is True, prepend CLS, add positions.

        Args:
            x: images ``[B, 3, H, W]`` with H and W multiples of the patch size.
            mask: optional boolean ``[B, H/p, W/p]`` (or ``[B, P]``); True = replace by the mask token.
        """
        b, _, h, w = x.shape
        if h % self._patch_size or w % self._patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self._patch_size}")
        tokens = self.patch_embed(x)  # [B, P, D]
        if mask is not None:
            if self.masked_embed is None:
                raise ValueError("this encoder was built without masked_embed; it cannot take a mask")
            mask = mask.reshape(b, -1)
            if mask.shape[1] != tokens.shape[1]:
                raise ValueError(f"mask has {mask.shape[1]} patches, input has {tokens.shape[1]}")
            tokens = torch.where(mask.unsqueeze(-1), self.masked_embed.to(tokens.dtype), tokens)
        cls = self.cls_token.expand(b, -1, -1).to(tokens.dtype)
        tokens = torch.cat([cls, tokens], dim=1)
        return self.pos_drop(tokens + self.interpolate_pos_encoding(h, w).to(tokens.dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """All tokens after the final norm, ``[B, 1+P, D]``."""
        x = self.prepare_tokens(x, mask)
        if self.grad_checkpointing and self.training:
            from torch.utils.checkpoint import checkpoint

            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_intermediates_tokens(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int],
        norm: bool = True,
        mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Outputs of selected blocks, ``[B, 1+P, D]`` each, oldest first.

        Args:
            indices: an int ``n`` means the last ``n`` blocks; a sequence means those block ids
                (negative ids count from the end).
            norm: pass every output through the shared final LayerNorm (the official behaviour).
        """
        depth = self.depth
        if isinstance(indices, int):
            if not 1 <= indices <= depth:
                raise ValueError(f"n must be in [1, {depth}], got {indices}")
            wanted = list(range(depth - indices, depth))
        else:
            wanted = sorted({i % depth for i in indices})
            if len(wanted) != len(list(indices)):
                raise ValueError(f"duplicate block ids in {list(indices)}")
        x = self.prepare_tokens(x, mask)
        outs = []
        last = wanted[-1]
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                outs.append(self.norm(x) if norm else x)
            if i == last:
                break
        return outs

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:  # type: ignore[override]
        """The last ``n`` blocks' outputs, each through the shared final norm (official semantics)."""
        return self.forward_intermediates_tokens(x, n, norm=True)

    @staticmethod
    def _block_attention(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The attention probabilities ``[B, heads, N, N]`` that ``block`` computes on tokens ``x``
        (the fused SDPA kernel does not return them, so they are recomputed from q and k)."""
        blk = cast(Block, block)  # the blocks timm builds by default
        attn = cast(Attention, blk.attn)
        y = blk.norm1(x)
        b, n, c = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    @torch.no_grad()
    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of the last block, ``[B, heads, 1+P, 1+P]`` (for attention maps)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self._block_attention(self.blocks[-1], x)

    @torch.no_grad()
    def get_all_selfattentions(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, first to last, each ``[B, heads, 1+P, 1+P]`` (for rollout)."""
        x = self.prepare_tokens(x)
        out = []
        for blk in self.blocks:
            out.append(self._block_attention(blk, x))
            x = blk(x)
        return out

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "masked_embed"}


def build_encoder(
    arch: str = "vit_base",
    img_size: int = 224,
    patch_size: int = 16,
    drop_path_rate: float = 0.0,
    masked_im_modeling: bool = True,
) -> VisionFMEncoder:
    """A randomly initialised encoder (use :func:`visionfm.models.load_encoder` for weights)."""
    return VisionFMEncoder(arch, img_size, patch_size, drop_path_rate, masked_im_modeling)
