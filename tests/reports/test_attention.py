"""Attention maps: smooth up-sampling, confined to the fundus field of view, viridis, a colour bar;
``last`` and ``rollout`` methods through the model folder and ``visionfm predict``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from visionfm.data.synth.fundus import render_fundus
from visionfm.errors import ConfigError
from visionfm.reports import attention as attention_mod
from visionfm.reports.attention import ATTENTION_CMAP, attention_weights, field_of_view, save_attention_figure
from visionfm.reports.colours import attention_overlay


@pytest.fixture(scope="module")
def fundus():
    r = render_fundus(np.random.default_rng(0), 64)
    return Image.fromarray(r.image), r.fov


def _corner_spike_grid() -> np.ndarray:
    """4 x 4 patch attention (a 64 px input, 16 px patches) peaking on the black corner patch."""
    grid = np.full((4, 4), 0.1)
    grid[0, 0] = 1.0  # outside the field of view: must never be the peak
    grid[2, 1] = 0.6  # inside: must be the peak
    return grid


def test_field_of_view_found_only_with_a_dark_border(fundus):
    image, fov = fundus
    mask = field_of_view(image)
    assert mask is not None and (mask == fov).mean() > 0.95
    noise = np.random.default_rng(1).integers(30, 255, (64, 64, 3), dtype=np.uint8)
    assert field_of_view(Image.fromarray(noise)) is None  # no dark border: the whole image counts


def test_peak_never_outside_the_field_of_view(fundus):
    image, fov = fundus
    weights, mask = attention_weights(_corner_spike_grid(), image.size, image)
    assert mask is not None
    peak = np.unravel_index(int(weights.argmax()), weights.shape)
    assert fov[peak] and weights[peak] == pytest.approx(1.0)
    assert weights[~mask].max() == 0.0
    assert abs(peak[0] - 40) <= 4 and abs(peak[1] - 24) <= 4  # the centre of patch (2, 1)
    # the overlay leaves the black border untouched (transparent there)
    out = np.asarray(attention_overlay(_corner_spike_grid(), image), dtype=np.int16)
    photo = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert np.abs(out - photo)[~mask].max() == 0 and np.abs(out - photo)[mask].max() > 40


def test_map_is_smooth_not_patch_blocks(fundus):
    image, _ = fundus
    weights, mask = attention_weights(_corner_spike_grid(), image.size, image)
    inner = ndimage.binary_erosion(mask, iterations=2)
    dy = np.abs(np.diff(weights, axis=0))[inner[1:] & inner[:-1]]
    dx = np.abs(np.diff(weights, axis=1))[inner[:, 1:] & inner[:, :-1]]
    # nearest-neighbour 16 px blocks would jump by up to 1.0 between two neighbouring pixels
    assert max(dx.max(), dy.max()) < 0.15
    plain, _ = attention_weights(_corner_spike_grid(), (64, 64), None)
    assert np.abs(np.diff(plain, axis=1)).max() < 0.15


def test_colour_map_is_perceptually_uniform_not_jet(fundus):
    import matplotlib

    image, _ = fundus
    assert ATTENTION_CMAP in {"viridis", "magma", "inferno", "cividis", "plasma"}
    layer = np.asarray(attention_overlay(np.linspace(0, 1, 16).reshape(4, 4), layer_side=64), dtype=np.float64)
    peak = np.unravel_index(int(np.argmax(layer[..., 3] + layer[..., :3].sum(-1) * 1e-3)), layer.shape[:2])
    top = layer[peak][:3] / 255
    assert np.allclose(top, matplotlib.colormaps[ATTENTION_CMAP](1.0)[:3], atol=0.08)
    assert not np.allclose(top, matplotlib.colormaps["jet"](1.0)[:3], atol=0.2)  # jet's dark red peak
    assert layer[..., 3].min() < 30  # low attention stays see-through


def test_figure_has_a_colour_bar_labelled_attention_relative(tmp_path, fundus, monkeypatch):
    from matplotlib.figure import Figure

    image, _ = fundus
    saved: list[Figure] = []
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    path = save_attention_figure(_corner_spike_grid(), image, tmp_path / "att" / "a.png", method="rollout",
                                 title="a.png")
    assert path.is_file() and Image.open(path).width >= 600
    labels = [ax.get_ylabel() for ax in saved[0].axes]
    assert "attention, relative" in labels  # the colour bar's axis
    bars = [ax for ax in saved[0].axes if ax.get_ylabel() == "attention, relative"]
    assert bars[0]._colorbar.cmap.name == ATTENTION_CMAP  # the bar shows the colour map of the overlay
    titles = " ".join(ax.get_title() for ax in saved[0].axes)
    assert attention_mod.ATTENTION_METHOD_LABELS["rollout"] in titles


def test_model_attention_last_and_rollout(encoder):
    import tempfile
    from pathlib import Path

    from visionfm.models.heads import ClsHead
    from visionfm.packaging import from_pretrained, model_folder_from_training

    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder_from_training(
            Path(tmp) / "m", encoder=encoder, head=ClsHead(192, 2).eval(), task="classification",
            task_kind="multiclass", modality="Fundus", input_size=32,
            features={"type": "pooled", "n_last_blocks": 1, "avgpool": 0}, head_type="cls",
            head_args={"embed_dim": 192, "num_classes": 2}, class_names=["a", "b"])
        model = from_pretrained(folder).eval()
    x = torch.randn(2, 3, 32, 32)
    last = model.attention(x)
    roll = model.attention(x, method="rollout")
    assert last.shape == roll.shape == (2, 2, 2)
    for a in (last, roll):
        assert float(a.min()) == pytest.approx(0.0) and float(a.max()) == pytest.approx(1.0)
    # rollout by hand: (0.5 A + 0.5 I) per block (rows renormalised), multiplied first to last
    maps = model.encoder.get_all_selfattentions(x)
    assert torch.allclose(maps[-1], model.encoder.get_last_selfattention(x), atol=1e-6)
    r = None
    for m in maps:
        a = m.mean(1) + torch.eye(m.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    cls = r[:, 0, 1:]
    cls = (cls - cls.min(1, keepdim=True).values) / (cls.max(1, keepdim=True).values - cls.min(1, keepdim=True).values)
    assert torch.allclose(roll.reshape(2, -1), cls, atol=1e-5)
    assert not torch.allclose(roll, last, atol=1e-3)
    with pytest.raises(ConfigError, match="attention method"):
        model.attention(x, method="jet")
