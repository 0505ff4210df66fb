"""The one training loop: exact resume after an interruption, refusal of a different run, the
non-finite guard, accumulation and the per-step schedule."""

import json

import pytest
import torch
from torch import nn

from visionfm.engine.distributed import DistEnv
from visionfm.engine.trainer import (FitConfig, TensorBatches, fit, load_decoder_checkpoint, loss_step, start_point,
                                     warmup_cosine)
from visionfm.errors import ConfigError, NonFiniteLossError

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def _data(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def _run(run_dir, cfg, model, stop_after=None, resume=False, identity=None):
    x, y = _data()
    xv, yv = _data(32, seed=1)

    def evaluate(m):
        return {"acc": float((m(xv).argmax(1) == yv).float().mean()), "nested": {"a": 1}}

    def interrupt(epoch, stats):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt

    resume_from, _ = start_point(run_dir, None, resume)
    return fit(model, TensorBatches(x, y, 16, cfg.seed), loss_step(nn.functional.cross_entropy), evaluate,
               selection_key="acc", higher_is_better=True, run_dir=run_dir, cfg=cfg, env=ENV,
               identity=identity or {"task": "toy"}, resume_from=resume_from, on_epoch_end=interrupt)


@pytest.mark.parametrize("scheduler", ["cosine", "warmup_cosine"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, scheduler):
    cfg = FitConfig(epochs=6, lr=0.05, batch_size=16, scheduler=scheduler, warmup_epochs=2, min_lr=1e-4,
                    accum_iter=2 if scheduler == "warmup_cosine" else 1, clip_grad=1.0)
    full = _model()
    _run(tmp_path / "full", cfg, full)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", cfg, _model(), stop_after=2)
    assert json.loads((tmp_path / "cut" / "checkpoint_last.json").read_text())["epoch"] == 3  # 1-based, 3 done
    torch.manual_seed(123)  # a different global RNG state: the checkpoint's (dropout) state must win
    resumed = _model(seed=7)  # and different initial weights: the checkpoint's must win
    _run(tmp_path / "cut", cfg, resumed, resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    best_full = load_decoder_checkpoint(tmp_path / "full" / "checkpoint_best")[1]
    best_cut = load_decoder_checkpoint(tmp_path / "cut" / "checkpoint_best")[1]
    assert best_full["epoch"] == best_cut["epoch"] and best_full["best_value"] == best_cut["best_value"]


def test_resume_refuses_other_settings(tmp_path):
    cfg = FitConfig(epochs=2, lr=0.05, batch_size=16)
    _run(tmp_path / "r", cfg, _model())
    with pytest.raises(ConfigError, match=r"other settings.*lr: saved 0.05, now 0.1"):
        _run(tmp_path / "r", FitConfig(epochs=2, lr=0.1, batch_size=16), _model(), resume=True)
    with pytest.raises(ConfigError, match=r"identity|task: saved 'toy', now 'other'"):
        _run(tmp_path / "r", cfg, _model(), resume=True, identity={"task": "other"})
    with pytest.raises(ConfigError, match="no checkpoint_last"):
        start_point(tmp_path / "empty", None, True)


def test_nonfinite_epoch_stops_before_saving(tmp_path):
    x, y = _data()
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def nan_loss(out, target):
        return nn.functional.cross_entropy(out, target) * float("nan")

    with pytest.raises(NonFiniteLossError, match="epoch 1: training loss is nan"):
        fit(model, TensorBatches(x, y, 16, 0), loss_step(nan_loss), lambda m: {"acc": 0.0}, selection_key="acc",
            higher_is_better=True, run_dir=tmp_path, cfg=FitConfig(epochs=2, lr=0.05, batch_size=16), env=ENV)
    assert not (tmp_path / "checkpoint_last.safetensors").exists() and not (tmp_path / "checkpoint_best.json").exists()
    assert isinstance(NonFiniteLossError("x"), FloatingPointError)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # nan reached the weights...
    # ...which is exactly why nothing was saved


def test_warmup_cosine_schedule_is_applied_per_group(tmp_path, monkeypatch):
    import visionfm.engine.trainer as tr

    x, y = _data()
    model = _model()
    groups = [{"params": list(model[0].parameters()), "lr_scale": 0.1},
              {"params": [p for m in list(model)[1:] for p in m.parameters()]}]
    made = []
    real = tr._build_optimizer
    monkeypatch.setattr(tr, "_build_optimizer", lambda params, cfg: made.append(real(params, cfg)) or made[-1])
    seen = []

    def step(net, batch):
        seen.append([g["lr"] for g in made[0].param_groups])
        return loss_step(nn.functional.cross_entropy)(net, batch)

    cfg = FitConfig(epochs=3, lr=0.1, batch_size=16, scheduler="warmup_cosine", warmup_epochs=1, min_lr=0.0)
    fit(model, TensorBatches(x, y, 16, 0), step, lambda m: {"acc": 1.0}, selection_key="acc", higher_is_better=True,
        run_dir=tmp_path, cfg=cfg, env=ENV, param_groups=groups)
    assert len(seen) == 12  # 64 rows / 16 per batch, 3 epochs
    for i, (lr0, lr1) in enumerate(seen):
        want = warmup_cosine(i, 12, 4, 0.1, 0.0)
        assert lr1 == pytest.approx(want) and lr0 == pytest.approx(0.1 * want)
