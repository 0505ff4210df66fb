"""Encoder: shapes, mask semantics and fp32 parity with an independent reference implementation."""

import pytest
import torch

from tests.models.reference_vit import reference_forward
from visionfm import load_encoder
from visionfm.models import ARCHS, build_encoder, dense_block_ids, get_arch


def _randomised(enc):
    # Non-trivial weights everywhere (zero biases / unit norms would hide mistakes).
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.05 * noise)
        enc.masked_embed.normal_(0, 0.5, generator=g)
    return enc.eval()


@pytest.mark.parametrize("arch", ["vit_tiny", "vit_small"])
def test_arch_table_and_shapes(arch):
    spec = get_arch(arch)
    enc = build_encoder(arch, img_size=64)
    x = torch.randn(2, 3, 64, 64)
    out = enc(x)
    assert out.shape == (2, 1 + 16, spec.embed_dim)
    assert (enc.embed_dim, enc.patch_size, enc.depth) == (spec.embed_dim, 16, spec.depth)
    layers = enc.get_intermediate_layers(x, 4)
    assert len(layers) == 4 and all(t.shape == out.shape for t in layers)
    # the last intermediate layer, normed, is exactly the forward output
    torch.testing.assert_close(layers[-1], out)


def test_unknown_arch_lists_valid():
    with pytest.raises(ValueError, match="vit_tiny"):
        get_arch("vit_huge")


def test_param_counts_match_reference_table():
    counts = {"vit_tiny": 5.5e6, "vit_small": 21.7e6}
    for name, expected in counts.items():
        n = sum(p.numel() for p in build_encoder(name).parameters())
        assert abs(n - expected) / expected < 0.02, (name, n)
    assert set(ARCHS) == {"vit_tiny", "vit_small", "vit_base", "vit_large"}


def test_official_parameter_names():
    keys = set(build_encoder("vit_tiny").state_dict())
    for k in ["cls_token", "pos_embed", "masked_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight",
              "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight",
              "blocks.11.mlp.fc1.weight", "blocks.11.mlp.fc2.bias", "norm.weight", "norm.bias"]:
        assert k in keys
    assert not any(k.startswith(("head", "fc_norm")) for k in keys)
    enc = build_encoder("vit_tiny")
    assert enc.masked_embed.shape == (1, 192) and torch.count_nonzero(enc.masked_embed) == 0
    assert enc.norm.eps == 1e-6 and enc.blocks[0].norm1.eps == 1e-6


@pytest.mark.parametrize("size,use_mask", [(224, False), (224, True), (160, False), (96, True)])
def test_parity_with_reference_fp32(size, use_mask):
    enc = _randomised(build_encoder("vit_tiny", img_size=224))
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, size, size, generator=g)
    mask = None
    if use_mask:
        mask = torch.rand(2, size // 16, size // 16, generator=g) < 0.4
    with torch.no_grad():
        ours = enc(x, mask=mask)
    ref = reference_forward(sd, x, num_heads=3, mask=mask)
    assert (ours.double() - ref).abs().max().item() < 1e-4


def test_intermediate_layers_parity_non_square():
    enc = _randomised(build_encoder("vit_tiny", img_size=224))
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = enc.get_intermediate_layers(x, 4)
    ref = reference_forward(sd, x, num_heads=3, return_layers=4)
    for a, b in zip(ours, ref):
        assert (a.double() - b).abs().max().item() < 1e-4
    # non-square inputs work too (positions resampled per axis)
    assert enc(torch.randn(1, 3, 96, 160)).shape == (1, 1 + 6 * 10, 192)


def test_mask_replaces_patch_before_position_embedding():
    enc = _randomised(build_encoder("vit_tiny", img_size=64))
    x = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    tokens = enc.prepare_tokens(x, mask)
    # masked token = masked_embed + its own position embedding
    expected = enc.masked_embed[0] + enc.pos_embed[0, 1 + 1 * 4 + 2]
    torch.testing.assert_close(tokens[0, 1 + 6], expected)
    unmasked = enc.prepare_tokens(x)
    torch.testing.assert_close(tokens[0, 1 + 5], unmasked[0, 1 + 5])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        enc(torch.randn(1, 3, 70, 64))
    with pytest.raises(ValueError, match="mask has"):
        enc(x, mask=torch.zeros(1, 3, 3, dtype=torch.bool))


def test_dense_block_ids():
    assert dense_block_ids(12) == [3, 5, 7, 11]
    assert dense_block_ids(24) == [5, 11, 17, 23]
    assert dense_block_ids(8)[-1] == 7


def test_random_encoder_only_when_asked():
    enc = load_encoder(None, arch="vit_tiny")
    assert enc.load_report.format == "random-init"
    with pytest.raises(Exception, match="no weights given"):
        load_encoder("", arch="vit_tiny")


def test_gradients_reach_every_parameter():
    enc = build_encoder("vit_tiny", img_size=32, drop_path_rate=0.1).train()
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True
    enc(torch.randn(2, 3, 32, 32), mask=mask).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


@pytest.mark.parametrize("native,hw", [(32, (32, 48)), (32, (48, 32)), (64, (32, 96)), (224, (96, 160))])
def test_parity_with_reference_non_square(native, hw):
    """Rectangular inputs: the position grid is resampled to (H/16, W/16), rows first, as in the reference."""
    enc = _randomised(build_encoder("vit_tiny", img_size=native))
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, *hw, generator=g)
    mask = torch.rand(2, hw[0] // 16, hw[1] // 16, generator=g) < 0.4
    with torch.no_grad():
        ours = enc(x, mask=mask)
    ref = reference_forward(sd, x, num_heads=3, mask=mask)
    assert ours.shape == (2, 1 + (hw[0] // 16) * (hw[1] // 16), 192)
    assert (ours.double() - ref).abs().max().item() < 1e-4


def _axis_coded_pos_embed(side: int, dim: int = 192) -> torch.Tensor:
    """``[1, 1+side², dim]``: channel 0 = the row of the patch, channel 1 = its column, the rest noise."""
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                                indexing="ij")
    pos = torch.randn(1, 1 + side * side, dim, generator=torch.Generator().manual_seed(0))
    pos[0, 1:, 0] = rows.flatten()
    pos[0, 1:, 1] = cols.flatten()
    return pos


def _check_axes(pos: torch.Tensor, gh: int, gw: int) -> None:
    grid = pos[0, 1:, :2].reshape(gh, gw, 2)
    row, col = grid[..., 0], grid[..., 1]
    # a row-only pattern stays row-only (constant along each row), a column-only one column-only
    torch.testing.assert_close(row, row[:, :1].expand(gh, gw))
    torch.testing.assert_close(col, col[:1, :].expand(gh, gw))
    assert (row[1:, 0] > row[:-1, 0]).all() and (col[0, 1:] > col[0, :-1]).all()


@pytest.mark.parametrize("hw", [(32, 96), (96, 32)])
def test_position_embedding_axes_follow_the_input_shape(hw):
    enc = build_encoder("vit_tiny", img_size=64)  # native grid 4x4
    with torch.no_grad():
        enc.pos_embed.copy_(_axis_coded_pos_embed(4))
    gh, gw = hw[0] // 16, hw[1] // 16
    with torch.no_grad():
        pos = enc.interpolate_pos_encoding(*hw)
    assert pos.shape == (1, 1 + gh * gw, 192)
    _check_axes(pos, gh, gw)
    torch.testing.assert_close(pos[:, 0], enc.pos_embed[:, 0].detach())  # the class token's entry is kept


@pytest.mark.parametrize("grid", [(2, 6), (6, 2), (3, 5)])
def test_resample_pos_embed_matches_timm_on_rectangular_grids(grid):
    """The load-time resampling equals timm's own size-based bicubic resampling (antialias off)."""
    from timm.layers import resample_abs_pos_embed

    from visionfm.models import resample_pos_embed

    pos = _axis_coded_pos_embed(4)
    ours = resample_pos_embed(pos, grid)
    ref = resample_abs_pos_embed(pos, list(grid), old_size=[4, 4], num_prefix_tokens=1, interpolation="bicubic",
                                 antialias=False)
    assert ours.shape == (1, 1 + grid[0] * grid[1], 192)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    _check_axes(ours, *grid)
