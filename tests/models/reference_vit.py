"""An independent fp32 ViT written from the behavioural reference (§3.1), for parity tests only.

Plain tensors and explicit softmax attention; no timm. It reads the official parameter names
from a state dict, so any encoder's weights can be pushed through it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x, sd, prefix, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _pos(sd, h0, w0):
    pos = sd["pos_embed"]
    n = pos.shape[1] - 1
    if n == h0 * w0 and h0 == w0:
        return pos
    side = math.sqrt(n)
    dim = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode="bicubic", align_corners=False)
    assert grid.shape[-2:] == (h0, w0)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def reference_forward(sd, x, num_heads, patch_size=16, mask=None, return_layers=None):
    """Tokens after the final norm; with ``return_layers=n`` the last n blocks, each normed."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    b, _, h, w = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch_size)
    h0, w0 = t.shape[-2:]
    if mask is not None:
        me = sd["masked_embed"].reshape(1, -1, 1, 1)
        t = torch.where(mask.unsqueeze(1), me.expand_as(t), t)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1) + _pos(sd, h0, w0)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    outs = []
    for i in range(depth):
        p = f"blocks.{i}"
        y = _ln(t, sd, p + ".norm1")
        n, d = y.shape[1], y.shape[2]
        qkv = y @ sd[p + ".attn.qkv.weight"].T + sd[p + ".attn.qkv.bias"]
        qkv = qkv.reshape(b, n, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (d // num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, d)
        t = t + (y @ sd[p + ".attn.proj.weight"].T + sd[p + ".attn.proj.bias"])
        y = _ln(t, sd, p + ".norm2")
        y = F.gelu(y @ sd[p + ".mlp.fc1.weight"].T + sd[p + ".mlp.fc1.bias"])
        t = t + (y @ sd[p + ".mlp.fc2.weight"].T + sd[p + ".mlp.fc2.bias"])
        outs.append(t)
    if return_layers:
        return [_ln(o, sd, "norm") for o in outs[-return_layers:]]
    return _ln(t, sd, "norm")
