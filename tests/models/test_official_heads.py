"""The original's decoder checkpoints load into our heads: names mapped by models.heads.official, checked
against the tensor names and shapes of the original's modules (tests/data/official_heads.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visionfm.engine.trainer import load_decoder_weights, write_original_checkpoint
from visionfm.errors import CheckpointError
from visionfm.models.heads import get_head_constructor
from visionfm.models.heads.official import to_official
from visionfm.tasks.dense_common import DenseDecoder, build_head

SPEC = json.loads((Path(__file__).parents[1] / "data" / "official_heads.json").read_text())["heads"]


def _ours(kind: str) -> torch.nn.Module:
    a = SPEC[kind]["args"]
    if kind == "unetr":
        return DenseDecoder(build_head("unetr", a["embed_dim"], a["num_classes"], 16))
    if kind == "linear_seg":
        return DenseDecoder(build_head("linear", a["embed_dim"], a["num_classes"], 16))
    if kind == "reg":
        return get_head_constructor("reg")(embed_dim=a["embed_dim"], num_targets=a["num_classes"])
    return get_head_constructor("cls")(embed_dim=a["embed_dim"], num_classes=a["num_classes"], layers=a["layers"])


def _official_state(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randint(0, 9, shape, generator=g) if k.endswith("num_batches_tracked")
                else torch.randn(shape, generator=g)) for k, shape in SPEC[kind]["tensors"].items()}


@pytest.mark.parametrize("kind", ["unetr", "linear_seg", "reg", "cls"])
def test_original_checkpoint_loads_into_our_head(kind, tmp_path):
    official = _official_state(kind)
    path = tmp_path / "checkpoint_3_linear.pth"
    # as the original saved it: DDP's module. prefix, with optimizer state beside the weights
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in official.items()}, "optimizer": {}}, path)
    model = _ours(kind)
    info = load_decoder_weights(model, path)
    assert info["epoch"] == 3
    ours = model.state_dict()
    assert len(ours) == len(official)
    # every tensor of the file landed in the parameter of the same role: compare through the inverse map
    back = to_official(kind, {k.removeprefix("head."): v for k, v in ours.items()}, ddp_prefix=False)
    assert set(back) == set(official)
    for k, v in official.items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize("kind", ["unetr", "linear_seg", "reg", "cls"])
def test_our_heads_written_under_the_original_names(kind, tmp_path):
    model = _ours(kind)
    state = {k.removeprefix("head."): v for k, v in model.state_dict().items()}
    path = write_original_checkpoint(tmp_path / "checkpoint_7_linear.pth", state, kind, 7, {"best_x": 0.5})
    obj = torch.load(path, weights_only=True)
    assert obj["epoch"] == 7 and obj["best_x"] == 0.5
    names = {k.removeprefix("module."): list(v.shape) for k, v in obj["state_dict"].items()}
    assert names == SPEC[kind]["tensors"]
    assert all(k.startswith("module.") for k in obj["state_dict"])
    again = _ours(kind)
    load_decoder_weights(again, path)  # and it reads back into our head, tensor for tensor
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_a_checkpoint_of_another_head_is_refused_with_the_names(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"state_dict": _official_state("reg")}, path)
    with pytest.raises(CheckpointError, match=r"do not fit this decoder \(missing: .*unexpected: "):
        load_decoder_weights(_ours("unetr"), path)
