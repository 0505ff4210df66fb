"""An encoder export folder is a timm model: ``local-dir:`` and ``pretrained_cfg_overlay`` build it bit for bit.

A vit_tiny/16 at 32 px (an OCT encoder) keeps it small; the comparison is exact (max abs diff 0.0).
"""

import json

import pytest
import timm
import torch

from visionfm.data.modalities import get_stats
from visionfm.models import build_encoder
from visionfm.models.export import export_encoder
from visionfm.models.loading import load_encoder

SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(3)
    enc = build_encoder("vit_tiny", img_size=SIZE, patch_size=16)
    d = tmp_path_factory.mktemp("timm")
    src = d / "ckpt.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in enc.state_dict().items()}}, src)
    out = d / "export"
    cfg = export_encoder(src, out, modality="oct")
    return enc.eval(), out, cfg


def _same(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_folder_layout_and_config(exported):
    _, out, cfg = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    on_disk = json.loads((out / "config.json").read_text())
    assert on_disk == cfg
    assert on_disk["architecture"] == "vit_tiny_patch16_224" and on_disk["num_classes"] == 0
    pre = on_disk["pretrained_cfg"]
    mean, std = get_stats("OCT")
    assert pre["mean"] == list(mean) and pre["std"] == list(std) and pre["input_size"] == [3, SIZE, SIZE]
    assert (pre["interpolation"], pre["crop_pct"], pre["num_classes"]) == ("bicubic", 1.0, 0)


def test_local_dir_builds_the_same_encoder(exported):
    enc, out, _ = exported
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert _same(model.forward_features(x), enc(x)) == 0.0
        assert _same(model(x), enc(x)[:, 0]) == 0.0  # num_classes 0, token pooling: the normed CLS token
    cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = get_stats("OCT")
    assert cfg["input_size"] == (3, SIZE, SIZE) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 1.0
    assert tuple(cfg["mean"]) == tuple(mean) and tuple(cfg["std"]) == tuple(std)


def test_pretrained_cfg_overlay_builds_the_same_encoder(exported):
    enc, out, cfg = exported
    pre = cfg["pretrained_cfg"]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=SIZE,
                              pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), mean=pre["mean"],
                                                          std=pre["std"], input_size=(3, SIZE, SIZE),
                                                          crop_pct=1.0)).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert _same(model.forward_features(x), enc(x)) == 0.0
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert tuple(data_cfg["mean"]) == tuple(pre["mean"]) and data_cfg["input_size"] == (3, SIZE, SIZE)


def test_visionfm_reads_the_folder_back(exported):
    enc, out, _ = exported
    back = load_encoder(out, arch=None, patch_size=None, img_size=SIZE)
    assert back.load_report.arch == "vit_tiny" and back.load_report.modality == "OCT"
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert _same(back(x), enc(x)) == 0.0


def test_export_card_is_hub_metadata(exported):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported[1] / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "cc-by-nc-4.0"
    assert {"visionfm", "ophthalmology", "oct"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "image-feature-extraction"
