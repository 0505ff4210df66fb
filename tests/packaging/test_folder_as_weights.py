"""A model folder is an encoder weights source: ``--pretrained_weights <run>/model`` for extract and finetune."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tasks.test_features import run_cli

SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A classification model folder around a random vit_tiny (its ``encoder.*`` tensors are the weights)."""
    from visionfm import load_encoder
    from visionfm.models.heads.cls import LinearHead
    from visionfm.packaging import model_folder_from_training

    torch.manual_seed(3)
    enc = load_encoder("random", "vit_tiny", None, 16, SIZE)
    path = tmp_path_factory.mktemp("mf") / "model"
    model_folder_from_training(path, encoder=enc, head=LinearHead(192, 3), task="classification",
                               task_kind="multiclass", modality="Fundus", input_size=SIZE, head_type="linear",
                               head_args={"embed_dim": 192, "num_classes": 3},
                               features={"type": "pooled", "n_last_blocks": 1, "avgpool": 0},
                               class_names=["a", "b", "c"], weights_source="random")
    return path


def _encoder_tensors(folder):
    from visionfm.packaging import from_pretrained

    return {k: v.clone() for k, v in from_pretrained(folder).encoder.state_dict().items()}


@pytest.mark.parametrize("command", ["extract", "finetune"])
def test_model_folder_as_pretrained_weights(command, folder, tmp_path):
    from visionfm import load_encoder
    from visionfm.engine.features import weights_fingerprint

    want = _encoder_tensors(folder)
    loaded = load_encoder(str(folder), "vit_tiny", "teacher", 16, SIZE)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in want.items() if k in loaded.state_dict())
    if command == "extract":
        from visionfm.data.features import FeatureStore
        from visionfm.data.synth import generate

        generate("single_cls", tmp_path / "data", num=6, img_size=SIZE, seed=0)
        assert run_cli("extract", "--pretrained_weights", str(folder), "--arch", "vit_tiny", "--input_size", str(SIZE),
                       "--data_path", str(tmp_path / "data" / "FundusClassification"), "--dst_root",
                       str(tmp_path / "feats"), "--epochs", "1", "--num_workers", "0", "--device", "cpu",
                       "--batch_size_per_gpu", "8") == 0
        metas = [FeatureStore.read_meta(p.parent) for p in (tmp_path / "feats").rglob("pass_0/meta.json")]
        assert metas and all(m["weights_fingerprint"] == weights_fingerprint(loaded) for m in metas)
    else:
        from tests.tasks.test_finetune import COMMON, make_imagefolder

        data = make_imagefolder(tmp_path / "data", n=(4, 2, 2))
        common = [a if a != "random" else str(folder) for a in COMMON]
        # lr 0: the fine-tuned encoder must still be exactly the folder's encoder
        assert run_cli("finetune", "--name", "ft", "--data_path", str(data), "--output_dir", str(tmp_path / "out"),
                       "--epochs", "1", "--lr", "0", "--drop_path", "0", *common) == 0
        best = json.loads((tmp_path / "out" / "ft" / "checkpoint_best.json").read_text())
        assert best["pretrained_weights"] == str(folder)
        got = _encoder_tensors(tmp_path / "out" / "ft" / "model")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
