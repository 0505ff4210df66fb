"""Model folders: save_pretrained → from_pretrained round trips, the training-time feature recipe, and
clear errors for corrupted or mismatched folders and for Hub ids offline."""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil

import pytest
import torch
from torch import nn

from visionfm.errors import CheckpointError, ConfigError
from visionfm.models import build_encoder, load_encoder
from visionfm.packaging import from_pretrained, model_folder_from_training, register_head

SIZE = 32


@functools.lru_cache(maxsize=1)
def _base_encoder():
    torch.manual_seed(0)
    return build_encoder("vit_tiny", img_size=SIZE, patch_size=16)


def _encoder():
    return copy.deepcopy(_base_encoder())


def _warm_bn(head: nn.Module, x) -> None:
    """One train-mode pass so BatchNorm running statistics are not the defaults."""
    head.train()
    with torch.no_grad():
        head(*x) if isinstance(x, tuple) else head(x)
    head.eval()


def _trained(head: nn.Module, seed: int = 5) -> nn.Module:
    """Weights no constructor would produce (a fresh head can never equal them by chance)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return head


def _keep(built, enc, head):
    if built is not None:
        built.update(encoder=enc, head=head)


def _cls_folder(tmp_path, kind="multiclass", n=3, built=None):
    from visionfm.models.heads import ClsHead

    enc = _encoder()
    head = _trained(ClsHead(192 * 4, n))
    _warm_bn(head, torch.randn(8, 192 * 4))
    _keep(built, enc, head)
    names = ["healthy", "mild", "severe"][:n] if kind == "multiclass" else [f"l{i}" for i in range(n)]
    return model_folder_from_training(
        tmp_path / "cls", encoder=enc, head=head, task="classification", task_kind=kind, modality="Fundus",
        input_size=SIZE, features={"type": "pooled", "n_last_blocks": 4, "avgpool": 0}, head_type="cls",
        head_args={"embed_dim": 192 * 4, "num_classes": n}, class_names=names,
        metrics={"accuracy": 0.75, "f1_macro": 0.5, "per_class": {"x": 1}}, data={"data_path": "synthetic"})


def _reg_folder(tmp_path, built=None):
    RegHead = pytest.importorskip("visionfm.models.heads.reg").RegHead
    enc = _encoder()
    head = _trained(RegHead(192, 2))
    _warm_bn(head, torch.randn(8, 192))
    _keep(built, enc, head)
    return model_folder_from_training(
        tmp_path / "reg", encoder=enc, head=head, task="regression", modality="OCT", input_size=SIZE,
        features={"type": "pooled", "n_last_blocks": 1, "avgpool": 1}, head_type="reg",
        head_args={"embed_dim": 192, "num_targets": 2}, target_names=["age", "hba1c"],
        target_mean=[60.0, 5.5], target_std=[10.0, 0.5], metrics={"mae_mean": 1.25})


def _seg_folder(tmp_path, head_type="unetr", built=None):
    from visionfm.models.heads.linear_seg import LinearSegHead
    from visionfm.models.heads.unetr import UnetrHead

    enc = _encoder()
    head = _trained(UnetrHead(192, 3) if head_type == "unetr" else LinearSegHead(192, 3))
    feats = [torch.randn(4, 4, 192) for _ in range(4)]
    _warm_bn(head, (feats, torch.randn(4, 3, SIZE, SIZE)))
    _keep(built, enc, head)
    return model_folder_from_training(
        tmp_path / "seg", encoder=enc, head=head, task="segmentation", modality="Fundus", input_size=SIZE,
        interpolation="bilinear", features={"type": "dense", "block_ids": [3, 5, 7, 11]},
        head_type=head_type if head_type == "unetr" else "linear_seg",
        head_args={"embed_dim": 192, "num_classes": 3, "patch_size": 16},
        class_names=["background", "vessel", "disc"])


MAKERS = {"classification": _cls_folder, "regression": _reg_folder, "segmentation": _seg_folder}


@pytest.mark.parametrize("task", list(MAKERS))
def test_round_trip_predicts_identically(tmp_path, task):
    folder = MAKERS[task](tmp_path)
    assert {"README.md", "config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    model = from_pretrained(folder)
    again = from_pretrained(str(folder))
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(x), again(x)
    assert torch.equal(a, b)
    pa, pb = model.predict(x), again.predict(x)
    assert pa.keys() == pb.keys()
    for k in pa:
        if isinstance(pa[k], list):
            assert len(pa[k]) == len(pb[k])
        else:
            assert (pa[k] == pb[k]).all(), k
    # the tensors: encoder.* (readable by load_encoder) and head.*
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert all(k.startswith(("encoder.", "head.")) for k in keys) and any(k.startswith("head.") for k in keys)
    enc = load_encoder(folder, arch="vit_tiny", img_size=SIZE)
    assert torch.equal(enc.state_dict()["blocks.0.attn.qkv.weight"],
                       model.encoder.state_dict()["blocks.0.attn.qkv.weight"])
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["task"] == task and "visionfm_version" in cfg
    card = (folder / "README.md").read_text()
    assert "CC BY-NC 4.0" in card and task in card and "Intended use" in card


@pytest.mark.parametrize("task", [*MAKERS, "segmentation-linear"])
def test_reloaded_model_equals_the_in_memory_model(tmp_path, task):
    """The folder holds exactly the trained weights: the reloaded model's outputs equal those of the
    encoder and head it was written from (not merely those of another reload)."""
    from visionfm.packaging import VisionFMModel

    built: dict = {}
    if task == "segmentation-linear":
        folder = _seg_folder(tmp_path, "linear", built=built)
    else:
        folder = MAKERS[task](tmp_path, built=built)
    enc, head = built["encoder"], built["head"]
    reloaded = from_pretrained(folder)
    in_memory = VisionFMModel(enc, head, json.loads((folder / "config.json").read_text()))
    for k, v in head.state_dict().items():
        assert torch.equal(reloaded.head.state_dict()[k], v), k
    for k, v in enc.state_dict().items():
        assert torch.equal(reloaded.encoder.state_dict()[k], v), k
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, got = in_memory(x), reloaded(x)
        # and the head on the encoder's features, without the VisionFMModel wrapper
        feats = in_memory.features(x)
        direct = head.eval()(feats, x) if task.startswith("segmentation") else head.eval()(feats)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
    assert torch.allclose(got, direct, rtol=1e-6, atol=1e-7)
    assert want.std() > 0


def test_regression_values_in_original_units(tmp_path):
    model = from_pretrained(_reg_folder(tmp_path))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        z = model(x)
    v = model.predict(x)["values"]
    expect = z.double().numpy() * [[10.0, 0.5]] + [[60.0, 5.5]]
    assert abs(v - expect).max() < 1e-9


def test_segmentation_masks_at_original_size(tmp_path):
    model = from_pretrained(_seg_folder(tmp_path, "linear"))
    from PIL import Image
    import numpy as np

    imgs = [Image.fromarray(np.full((50, 70, 3), 120, np.uint8)), Image.fromarray(np.zeros((40, 40, 3), np.uint8))]
    p = model.predict(imgs)
    assert p["masks_input"].shape == (2, SIZE, SIZE)
    assert p["masks"][0].shape == (50, 70) and p["masks"][1].shape == (40, 40)


@pytest.mark.parametrize("n_last, avgpool", [(4, 0), (2, 0), (1, 1)])
def test_features_match_training_time_pooling(n_last, avgpool):
    """``VisionFMModel.features`` = ``pool_tokens`` over what ``compute_features`` stores."""
    from visionfm.engine.features import CLS_LEVELS, pool_tokens
    from visionfm.models.heads import ClsHead
    from visionfm.packaging import VisionFMModel

    enc = _encoder().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        outs = enc.forward_intermediates_tokens(x, list(range(12 - CLS_LEVELS, 12)), norm=True)
        cls = torch.stack([o[:, 0] for o in outs], 1)
        patch_mean = outs[-1][:, 1:].mean(1)
        want = pool_tokens(cls, patch_mean, n_last, avgpool)
    dim = want.shape[1]
    cfg = {"format_version": 1, "task": "classification", "task_kind": "binary", "class_names": ["no", "yes"],
           "modality": "Fundus", "encoder": {"arch": "vit_tiny", "patch_size": 16},
           "preprocess": {"input_size": SIZE, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.25] * 3},
           "features": {"type": "pooled", "n_last_blocks": n_last, "avgpool": avgpool},
           "head": {"type": "cls", "args": {"embed_dim": dim, "num_classes": 1}}}
    model = VisionFMModel(enc, ClsHead(dim, 1), cfg)
    with torch.no_grad():
        got = model.features(x)
    assert torch.allclose(got, want, atol=1e-6)
    p = model.predict(x)
    assert p["probabilities"].shape == (2,) and set(p["labels"].tolist()) <= {0, 1}


def test_register_head_and_forecasting_days(tmp_path):
    class TinyForecast(nn.Module):
        def __init__(self, embed_dim: int, num_classes: int, max_len: int = 100):
            super().__init__()
            self.embed_dim, self.num_classes = embed_dim, num_classes
            self.fc = nn.Linear(embed_dim + 1, num_classes)

        def forward(self, x, days):
            return self.fc(torch.cat([x, days[:, None].float() / 100.0], 1))

    register_head("test_forecast", TinyForecast)
    enc = _encoder()
    folder = model_folder_from_training(
        tmp_path / "fc", encoder=enc, head=TinyForecast(192, 1), task="forecasting", task_kind="binary",
        modality="Fundus", input_size=SIZE, features={"type": "pooled", "n_last_blocks": 1, "avgpool": 0},
        head_type="test_forecast", head_args={"embed_dim": 192, "num_classes": 1}, class_names=["stable", "progress"],
        max_days=100)
    model = from_pretrained(folder)
    x = torch.randn(2, 3, SIZE, SIZE)
    p30, p90 = model.predict(x, days=30), model.predict(x, days=[90, 90])
    assert p30["probabilities"].shape == (2,) and not (p30["probabilities"] == p90["probabilities"]).all()
    with pytest.raises(ConfigError, match="days"):
        model.predict(x)
    with pytest.raises(ConfigError, match=r"\[0, 100\]"):
        model.predict(x, days=365)


def test_save_replaces_existing_folder_atomically(tmp_path):
    folder = _cls_folder(tmp_path)
    first = (folder / "model.safetensors").read_bytes()
    model = from_pretrained(folder)
    with torch.no_grad():
        model.head.classifier[-1].bias.add_(1.0)
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls"]
    assert torch.equal(from_pretrained(folder).head.classifier[-1].bias, model.head.classifier[-1].bias)
    umask = os.umask(0)
    os.umask(umask)
    # every file gets the usual mode (not the 0600 of a temporary file), so a shared model folder is readable
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        p.name: 0o666 & ~umask for p in folder.iterdir()}


@pytest.fixture(scope="module")
def cls_folder(tmp_path_factory):
    return _cls_folder(tmp_path_factory.mktemp("cls"))


def _corrupt(tmp_path, what, source):
    folder = shutil.copytree(source, tmp_path / "cls")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if what == "missing_config":
        cfg_path.unlink()
    elif what == "missing_weights":
        (folder / "model.safetensors").unlink()
    elif what == "bad_json":
        cfg_path.write_text("{not json")
    elif what == "truncated_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        if what == "format_version":
            cfg["format_version"] = 99
        elif what == "unknown_task":
            cfg["task"] = "captioning"
        elif what == "unknown_head":
            cfg["head"]["type"] = "transformer_decoder"
        elif what == "shape_mismatch":
            cfg["head"]["args"]["num_classes"] = 5
            cfg["class_names"] = list("abcde")
        elif what == "wrong_arch":
            cfg["encoder"]["arch"] = "vit_small"
        elif what == "bad_head_args":
            cfg["head"]["args"]["no_such_arg"] = 1
        cfg_path.write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("what, message", [
    ("missing_config", "config.json is missing"),
    ("missing_weights", "model.safetensors is missing"),
    ("bad_json", "not valid JSON"),
    ("truncated_weights", "not a readable safetensors"),
    ("format_version", "format_version 99"),
    ("unknown_task", "unknown task 'captioning'"),
    ("unknown_head", "unknown head type 'transformer_decoder'"),
    ("shape_mismatch", "does not match config.json"),
    ("wrong_arch", "does not match config.json"),
    ("bad_head_args", "cannot be built"),
])
def test_corrupted_or_mismatched_folders_fail_clearly(tmp_path, what, message, cls_folder):
    folder = _corrupt(tmp_path, what, cls_folder)
    with pytest.raises(CheckpointError, match=message) as err:
        from_pretrained(folder)
    assert str(folder) in str(err.value)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found"):
        from_pretrained(tmp_path / "nope" / "model")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="found a file"):
        from_pretrained(f)


def test_hub_id_offline_fails_clearly(monkeypatch, cls_folder):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"'someone/some-model'.*offline"):
        from_pretrained("someone/some-model")
    import visionfm

    with pytest.raises(CheckpointError, match="someone/some-model"):
        visionfm.from_pretrained("someone/some-model")
    model = from_pretrained(cls_folder)
    with pytest.raises(CheckpointError, match=r"'me/my-model'.*offline"):
        model.push_to_hub("me/my-model")


def test_folder_is_a_pretrained_weights_source_for_training_commands(tmp_path, cls_folder):
    """`--pretrained_weights <model folder>` (load_encoder) reads the packaged encoder."""
    shutil.copytree(cls_folder, tmp_path / "copy")
    enc = load_encoder(tmp_path / "copy", arch="vit_tiny", img_size=SIZE)
    assert enc.load_report.format == "visionfm-model-folder"
