"""Checkpoint I/O: every supported format, safety, loud failures, export round trip, info."""

import argparse
import os
import pickle

import numpy as np
import pytest
import torch

from visionfm import load_encoder
from visionfm.errors import CheckpointError, UnsafeCheckpointError
from visionfm.models import build_encoder, export_encoder, inspect_weights


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(3)
    enc = build_encoder("vit_tiny", img_size=224)
    with torch.no_grad():
        enc.masked_embed.normal_()
    return {k: v.clone() for k, v in enc.state_dict().items()}


def _same_encoder(enc, sd, keys=None):
    own = enc.state_dict()
    for k in keys or [k for k in sd if k != "masked_embed"]:
        torch.testing.assert_close(own[k], sd[k], rtol=0, atol=0)


def _head(prefix=""):
    return {
        f"{prefix}head.mlp.0.weight": torch.randn(16, 192),
        f"{prefix}head.last_layer.weight_g": torch.ones(32, 1),
        f"{prefix}head.last_layer.weight_v": torch.randn(32, 16),
    }


def _official_training_file(tmp_path, sd):
    teacher = {f"backbone.{k}": v for k, v in sd.items() if k != "masked_embed"} | _head()
    student = {f"module.backbone.{k}": v + 1 for k, v in sd.items()} | _head("module.")
    ckpt = {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "epoch": 40,
        "args": argparse.Namespace(arch="vit_tiny", modality="Fundus", patch_size=16),
        "ibot_loss": {"center": torch.zeros(1, 32), "center2": torch.zeros(1, 1, 32)},
        "best_f1": np.float64(0.5),
    }
    path = tmp_path / "VFM_Fundus_weights.pth"
    torch.save(ckpt, path)
    return path


def test_official_training_checkpoint_with_args_loads_weights_only(tmp_path, tiny_sd):
    path = _official_training_file(tmp_path, tiny_sd)
    enc = load_encoder(path, arch="vit_tiny", checkpoint_key="teacher")
    _same_encoder(enc, tiny_sd)
    rep = enc.load_report
    assert rep.format == "ibot-training" and rep.checkpoint_key == "teacher"
    assert rep.missing == ["masked_embed"] and rep.unexpected == [] and rep.dropped == 3
    assert len(rep.sha256) == 64
    student = load_encoder(path, arch="vit_tiny", checkpoint_key="student")
    torch.testing.assert_close(student.state_dict()["cls_token"], tiny_sd["cls_token"] + 1)
    torch.testing.assert_close(student.masked_embed, tiny_sd["masked_embed"] + 1)


def test_missing_checkpoint_key_lists_present_keys(tmp_path, tiny_sd):
    path = _official_training_file(tmp_path, tiny_sd)
    with pytest.raises(CheckpointError, match=r"'model' not found; keys present: args, best_f1, epoch, ibot_loss"):
        load_encoder(path, arch="vit_tiny", checkpoint_key="model")


def test_bare_dino_state_dict_ignores_default_key(tmp_path, tiny_sd):
    path = tmp_path / "dino_vittiny16.pth"
    torch.save({k: v for k, v in tiny_sd.items() if k != "masked_embed"}, path)
    enc = load_encoder(path, arch="vit_tiny")  # default key 'teacher' simply does not apply
    _same_encoder(enc, tiny_sd)
    assert enc.load_report.format == "bare-vit"


def test_retfound_layout(tmp_path, tiny_sd):
    model = dict(tiny_sd)
    model.pop("masked_embed")
    model |= {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.randn(16, 192),
              "decoder_pos_embed": torch.zeros(1, 197, 16), "decoder_blocks.0.norm1.weight": torch.ones(16)}
    path = tmp_path / "RETFound_cfp_weights.pth"
    torch.save({"model": model, "optimizer": {}, "epoch": 799, "args": argparse.Namespace(model="mae")}, path)
    with pytest.raises(CheckpointError, match="try checkpoint_key model"):
        load_encoder(path, arch="vit_tiny", checkpoint_key="teacher")
    enc = load_encoder(path, arch="vit_tiny", checkpoint_key="model")
    _same_encoder(enc, tiny_sd)
    assert enc.load_report.format == "retfound-mae" and enc.load_report.dropped == 4


def test_original_finetuned_checkpoint(tmp_path, tiny_sd):
    path = tmp_path / "checkpoint_best_finetune.pth"
    enc_sd = {k: v for k, v in tiny_sd.items() if k != "masked_embed"}
    torch.save({"visionfm_state_dict": enc_sd, "classifier_state_dict": {"module.classifier.0.weight": torch.zeros(2, 2)},
                "epoch": 3, "best_auc": np.float64(0.9)}, path)
    enc = load_encoder(path, arch="vit_tiny", checkpoint_key="visionfm_state_dict")
    _same_encoder(enc, tiny_sd)


def test_booby_trapped_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        torch.save({"teacher": {"x": torch.zeros(1)}, "evil": Payload()}, fh)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*posix.system"):
        load_encoder(path, arch="vit_tiny")
    assert not marker.exists()
    # a raw pickle (not a torch zip) with the same payload is refused as well
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_encoder(raw, arch="vit_tiny")
    assert not marker.exists()


def test_wrong_architecture_names_what_the_file_is(tmp_path, tiny_sd):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sd, path)
    with pytest.raises(CheckpointError, match=r"holds a vit_tiny/16 at 224 px backbone.*arch vit_base.*use arch vit_tiny") as e:
        load_encoder(path, arch="vit_base")
    assert "--" not in str(e.value)  # the Python API names arguments, not flags
    # the command line names its flags (the same message, worded for it)
    from visionfm.errors import cli_wording

    with cli_wording(), pytest.raises(CheckpointError, match="does not fit --arch vit_base.*use --arch vit_tiny"):
        load_encoder(path, arch="vit_base")
    # its own file needs no arch: inferred
    assert load_encoder(path).load_report.arch == "vit_tiny"
    with pytest.raises(CheckpointError, match="patch size is 16"):
        load_encoder(path, arch="vit_tiny", patch_size=8)


def test_missing_backbone_tensors_fail(tmp_path, tiny_sd):
    partial = {k: v for k, v in tiny_sd.items() if not k.startswith("blocks.11.")}
    partial["blocks.11.norm1.weight"] = tiny_sd["blocks.11.norm1.weight"]
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(CheckpointError, match=r"backbone tensors are missing \(e\.g\. blocks\.11\.norm1\.bias"):
        load_encoder(path, arch="vit_tiny")
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "nope.pth", arch="vit_tiny")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_encoder(tmp_path / "garbage.pth", arch="vit_tiny")


def test_pos_embed_resampled_for_other_input_size(tmp_path, tiny_sd):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sd, path)
    enc = load_encoder(path, arch="vit_tiny", img_size=512)
    assert enc.pos_embed.shape == (1, 1 + 32 * 32, 192) and enc.load_report.pos_embed_resized
    torch.testing.assert_close(enc.pos_embed[:, 0], tiny_sd["pos_embed"][:, 0])
    assert enc(torch.randn(1, 3, 512, 512)).shape == (1, 1025, 192)


def test_export_round_trip_is_identical(tmp_path, tiny_sd):
    src = _official_training_file(tmp_path, tiny_sd)
    out = tmp_path / "fundus_tiny.safetensors"
    cfg = export_encoder(src, out, arch="vit_tiny", checkpoint_key="teacher", modality="fundus")
    assert cfg["modality"] == "Fundus" and cfg["arch"] == "vit_tiny" and out.with_suffix(".json").is_file()
    a = load_encoder(src, arch="vit_tiny")
    b = load_encoder(out, arch=None, patch_size=None)
    assert b.load_report.format == "visionfm-safetensors" and b.load_report.modality == "Fundus"
    _same_encoder(b, a.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporaries


def test_info_describes_file(tmp_path, tiny_sd):
    info = inspect_weights(_official_training_file(tmp_path, tiny_sd))
    assert info["format"] == "ibot-training" and info["has_optimizer"] and info["has_args"]
    assert info["epoch"] == 40
    t = info["backbones"]["teacher"]
    assert t["inferred_arch"] == "vit_tiny" and t["patch_size"] == 16 and t["native_img_size"] == 224
    assert t["head_tensors"] == 3 and t["weight_norm_keys"] == ["weight_g", "weight_v"]
    assert abs(t["backbone_params"] - 5.5e6) / 5.5e6 < 0.02
    assert info["backbones"]["student"]["has_masked_embed"]
