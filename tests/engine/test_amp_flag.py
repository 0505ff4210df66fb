"""``--amp false`` runs the frozen encoder in fp32, as the original: the flag reaches every autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch

from visionfm.models import build_encoder


class _Recorder:
    """Stands in for ``engine.trainer.autocast`` and records the ``enabled`` argument of each call."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, device, enabled=True):
        self.calls.append(bool(enabled))
        return contextlib.nullcontext()


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(3, 32, 32), torch.zeros(1), {"rel_path": f"{i}.png"}


@pytest.mark.parametrize("amp", [True, False])
def test_extraction_passes_amp_to_autocast(monkeypatch, amp):
    import visionfm.engine.features as features

    rec = _Recorder()
    monkeypatch.setattr(features, "autocast", rec)
    enc = build_encoder("vit_tiny", patch_size=16, img_size=32)
    out = features.compute_features(enc, _Images(), torch.device("cpu"), 2, 0, amp=amp)
    assert out["cls"].dtype == torch.float32 and out["cls"].shape[0] == 3
    assert rec.calls == [amp, amp]  # one call per batch, always with the flag's value


@pytest.mark.parametrize("amp", [True, False])
def test_dense_features_pass_amp_to_autocast(monkeypatch, amp):
    import visionfm.tasks.dense_common as dense

    rec = _Recorder()
    monkeypatch.setattr(dense, "autocast", rec)
    enc = build_encoder("vit_tiny", patch_size=16, img_size=32)
    feats = dense.FrozenFeatures(enc, [0, 1, 2, 11], amp=amp)(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, 4, 4, 192)
    assert rec.calls == [amp]


@pytest.mark.parametrize("command,extra", [
    ("extract", ["--pretrained_weights", "random", "--dst_root", "x"]),
    ("train-cls", ["--name", "r"]),
    ("train-seg", ["--name", "r"]),
    ("train-landmark", ["--name", "r", "--data_path", "d"]),
    ("train-forecast", ["--data_path", "d"]),
])
def test_amp_flag_defaults_on_and_turns_off(command, extra):
    import importlib

    from visionfm.cli.main import COMMANDS, build_parser

    _, subs = build_parser()
    sp = subs[command]
    importlib.import_module(COMMANDS[command][0]).add_arguments(sp)
    assert sp.parse_args(extra).amp is True
    assert sp.parse_args(extra + ["--amp", "false"]).amp is False
