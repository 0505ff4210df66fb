"""Never save broken weights (issue 13): NaN/inf in pretraining, decoders and fine-tuning never reach a
checkpoint or a model folder, a run that diverges stops with one line and a non-zero exit code, an
epoch without an applied step is an error, and ``log.txt`` stays strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tensors_in
from visionfm.cli.main import main as cli_main
from visionfm.errors import NonFiniteLossError

NAN, INF = float("nan"), float("inf")


# -- helpers ------------------------------------------------------------------------------------------------




def nonfinite_in_files(root: Path) -> dict[str, int]:
    """``{file: non-finite count}`` over every weights file below ``root`` (only the bad ones)."""
    from safetensors.torch import load_file

    from visionfm.io import load_checkpoint_file

    bad = {}
    for p in sorted(root.rglob("*")):
        if p.suffix in (".pth", ".pt"):
            obj, _ = load_checkpoint_file(p)
        elif p.suffix == ".safetensors":
            obj = load_file(str(p))
        else:
            continue
        n = sum(int((~torch.isfinite(t)).sum()) for _, t in tensors_in(obj) if t.is_floating_point())
        if n:
            bad[str(p.relative_to(root))] = n
    return bad


def weight_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".pth", ".safetensors"))


def cli(argv, capsys):
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # an argparse refusal
        rc = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def strict_json_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"{path}: bare {name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


# -- pretraining --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8 small Fundus images: 1 iteration per epoch at batch 8."""
    root = tmp_path_factory.mktemp("nonfinite_pretrain")
    rng = np.random.default_rng(0)
    d = root / "Fundus"
    d.mkdir()
    for i in range(8):
        arr = np.clip(rng.normal(120, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


def pretrain_flags(images, out, name, extra=()):
    return ["pretrain", "--data_path", str(images), "--modality", "Fundus", "--arch", "vit_tiny", "--input_size", "32",
            "--batch_size_per_gpu", "8", "--epochs", "2", "--warmup_epochs", "0", "--warmup_teacher_temp_epochs", "1",
            "--out_dim", "32", "--patch_out_dim", "32", "--local_crops_number", "1", "--name", name,
            "--output_dir", str(out), "--num_workers", "0", "--no_progress", "--seed", "3", "--device", "cpu", *extra]


def trainer(images, out, name, extra=()):
    from visionfm.cli.pretrain import config_from_argv
    from visionfm.pretrain.trainer import IBOTTrainer

    return IBOTTrainer(config_from_argv(pretrain_flags(images, out, name, extra)[1:]))


def test_cli_lr_nan_exits_2_and_saves_nothing(images, tmp_path, capsys):
    rc, _, err = cli(pretrain_flags(images, tmp_path, "nan", ["--lr", "nan"]), capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "--lr" in err
    assert weight_files(tmp_path) == []


@pytest.mark.parametrize("optimizer", ["adamw", "lars"])  # the device-flag path and the host-read path
def test_nan_learning_rate_mid_run_stops_and_keeps_the_last_good_checkpoint(images, tmp_path, optimizer):
    tr = trainer(images, tmp_path, "lr", ["--optimizer", optimizer])
    tr.lr_schedule[1] = NAN  # the step of epoch 1: loss and gradients finite, the update is not
    with pytest.raises(NonFiniteLossError, match="weights became non-finite"):
        tr.fit()
    run = tmp_path / "lr"
    assert weight_files(run) == ["checkpoint.pth"] and nonfinite_in_files(run) == {}
    from visionfm.io import load_checkpoint_file

    assert load_checkpoint_file(run / "checkpoint.pth")[0]["epoch"] == 1  # epoch 0's, untouched
    assert [x["epoch"] for x in strict_json_lines(run / "log.txt")] == [1]  # numbered from 1


def test_cli_divergence_huge_lr_without_clipping_exits_3_with_finite_files(images, tmp_path, capsys):
    rc, out, err = cli(pretrain_flags(images, tmp_path, "div", ["--lr", "1e4", "--clip_grad", "0"]), capsys)
    assert rc == 3, out + err
    assert "stopped:" in err and "The last good checkpoint" in err  # on stderr, as every error
    assert nonfinite_in_files(tmp_path) == {}
    for line in strict_json_lines(tmp_path / "div" / "log.txt"):
        assert line["train_loss"] != 0.0  # a bogus 0.0 of an all-skipped epoch is never logged


@pytest.mark.parametrize("optimizer,bad", [("adamw", NAN), ("lars", INF)])
def test_nonfinite_gradient_step_is_skipped_before_touching_anything(images, tmp_path, optimizer, bad):
    from visionfm.pretrain.trainer import EpochMeters

    tr = trainer(images, tmp_path, "grad", ["--optimizer", optimizer, "--freeze_last_layer", "0"])
    crops, masks = tr.prepare_batch(next(iter(tr._loader(0, 0))))
    param = tr.student.backbone.patch_embed.proj.weight

    def snapshot():
        opt = [v.clone() for st in tr.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        return ([p.detach().clone() for p in tr.student.parameters()],
                [p.detach().clone() for p in tr.teacher.parameters()], opt)

    meters = EpochMeters.zeros(tr.device)
    initial = snapshot()
    tr.train_step(crops, masks, 0, 0, meters)  # a healthy step first: the optimizer has moments
    tr._check_nonfinite(0)
    assert tr.skipped_steps == 0 and float(meters.steps) == 1
    assert not torch.equal(initial[0][0], tr.student.backbone.patch_embed.proj.weight.detach())
    handle = param.register_hook(lambda g: g * bad)  # the loss stays finite, one gradient does not
    before = snapshot()
    tr.train_step(crops, masks, 0, 1, meters)
    after = snapshot()
    assert len(before[2]) > 0
    for a, b in zip(before, after):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))  # weights, teacher, moments
    tr._check_nonfinite(1)
    assert tr.skipped_steps == 1 and float(meters.steps) == 1
    handle.remove()


def test_epoch_with_every_step_skipped_is_an_error_not_a_zero_loss(images, tmp_path, capsys, monkeypatch):
    from visionfm.pretrain.loss import IBOTLoss

    real = IBOTLoss.forward_selected

    def poisoned(self, *a, **k):
        return {key: v * NAN for key, v in real(self, *a, **k).items()}

    monkeypatch.setattr(IBOTLoss, "forward_selected", poisoned)
    rc, _, err = cli(pretrain_flags(images, tmp_path, "skip", ["--max_nonfinite_steps", "100"]), capsys)
    assert rc == 3
    assert "epoch 0: none of its 1 step(s) was applied" in err
    assert weight_files(tmp_path) == []
    log = tmp_path / "skip" / "log.txt"
    assert not log.exists() or all("train_loss" not in x for x in strict_json_lines(log))


# -- the writers --------------------------------------------------------------------------------------------


def _nan_linear():
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.weight[0, 1] = NAN
    return m


def _write_torch(p):
    from visionfm.io import save_torch_atomic

    save_torch_atomic({"student": {"w": torch.ones(2)}, "optimizer": {"state": {0: {"exp_avg": torch.tensor([INF])}}}},
                      p / "checkpoint.pth")
    return p / "checkpoint.pth"


def _write_safetensors(p):
    from visionfm.io import save_safetensors_atomic

    save_safetensors_atomic({"a": torch.ones(3), "b": torch.tensor([1.0, NAN])}, p / "w.safetensors")
    return p / "w.safetensors"


def _write_pretrain_checkpoint(p):
    from visionfm.engine.checkpoint import save_checkpoint

    save_checkpoint({"teacher": _nan_linear().state_dict(), "epoch": 3}, p / "checkpoint0002.pth")
    return p / "checkpoint0002.pth"


def _write_decoder(p):
    from visionfm.engine.trainer import save_decoder_checkpoint

    save_decoder_checkpoint(p / "checkpoint_best", _nan_linear(), {"epoch": 1})
    return p / "checkpoint_best.safetensors"


def _write_original_linear(p):
    from visionfm.engine.trainer import write_original_checkpoint

    write_original_checkpoint(p / "checkpoint_teacher_linear.pth", {"fc.weight": torch.tensor([[NAN]])}, "linear",
                              1, {"best_acc": 0.5})
    return p / "checkpoint_teacher_linear.pth"


def _tiny_model():
    from visionfm.models import build_encoder
    from visionfm.models.heads import ClsHead
    from visionfm.packaging.model_folder import VisionFMModel

    cfg = {"format_version": 1, "task": "classification", "task_kind": "binary", "class_names": ["no", "yes"],
           "modality": "Fundus", "encoder": {"arch": "vit_tiny", "patch_size": 16},
           "preprocess": {"input_size": 32, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.25] * 3},
           "features": {"type": "pooled", "n_last_blocks": 1, "avgpool": 0},
           "head": {"type": "cls", "args": {"embed_dim": 192, "num_classes": 1}}}
    return VisionFMModel(build_encoder("vit_tiny", patch_size=16, img_size=32), ClsHead(192, 1), cfg)


def test_model_folder_with_a_nan_weight_is_never_written(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path / "model")  # a good folder first
    old = (tmp_path / "model" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.head.classifier[-1].bias.fill_(NAN)
    with pytest.raises(NonFiniteLossError, match=r"model folder .*model: not written: 1 non-finite value"):
        model.save_pretrained(tmp_path / "model")
    with pytest.raises(NonFiniteLossError):
        model.save_pretrained(tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left, no "other"
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == old


WRITERS = [_write_torch, _write_safetensors, _write_pretrain_checkpoint, _write_decoder, _write_original_linear]


@pytest.mark.parametrize("write", WRITERS, ids=lambda f: f.__name__[len("_write_"):])
def test_writers_refuse_nonfinite_tensors_and_keep_the_old_file(tmp_path, write):
    target = write.__name__
    with pytest.raises(NonFiniteLossError, match="not written: 1 non-finite value"):
        write(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary, no half of a pair
    # an existing good file at that path stays byte for byte
    from visionfm.io import save_torch_atomic

    paths = {"_write_torch": "checkpoint.pth", "_write_safetensors": "w.safetensors",
             "_write_pretrain_checkpoint": "checkpoint0002.pth", "_write_decoder": "checkpoint_best.safetensors",
             "_write_original_linear": "checkpoint_teacher_linear.pth"}
    good = tmp_path / paths[target]
    save_torch_atomic({"ok": torch.ones(1)}, good)
    old = good.read_bytes()
    with pytest.raises(NonFiniteLossError):
        write(tmp_path)
    assert good.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == [good.name]


def test_finite_states_are_written(tmp_path):
    from visionfm.io import save_safetensors_atomic, save_torch_atomic

    save_torch_atomic({"a": torch.ones(2), "i": torch.tensor([7]), "big": torch.tensor([3e38]), "n": [1.5]},
                      tmp_path / "a.pth")
    save_safetensors_atomic({"h": torch.tensor([6e4], dtype=torch.float16)}, tmp_path / "b.safetensors")
    assert weight_files(tmp_path) == ["a.pth", "b.safetensors"] and nonfinite_in_files(tmp_path) == {}


# -- log.txt ------------------------------------------------------------------------------------------------


def test_log_txt_stays_strict_json_with_nonfinite_keys_listed(tmp_path):
    from visionfm.engine.logging import RunLogger

    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log({"epoch": 0, "train_loss": NAN, "val_loss": torch.tensor(INF), "val_auc": np.float64(-INF),
                "ok": 0.5, "final": {"test": {"auroc": NAN}, "curve": [1.0, NAN]}})
    logger.log({"epoch": 1, "train_loss": 0.25})
    first, second = strict_json_lines(tmp_path / "log.txt")
    assert first["train_loss"] is None and first["val_loss"] is None and first["val_auc"] is None
    assert first["ok"] == 0.5 and first["final"] == {"test": {"auroc": None}, "curve": [1.0, None]}
    assert first["nonfinite"] == ["final.curve[1]", "final.test.auroc", "train_loss", "val_auc", "val_loss"]
    assert second == {"epoch": 1, "train_loss": 0.25}  # no flag when all is finite


# -- decoders and fine-tuning --------------------------------------------------------------------------------


def imagefolder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c, colour in (("a_red", (200, 40, 40)), ("b_green", (40, 200, 40))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.fixture()
def poison_from_step(monkeypatch):
    """``poison_from_step(k, value)``: from the k-th backward pass of engine fit on, the gradient of the
    first trainable parameter is multiplied by ``value`` (the loss itself stays finite)."""
    import visionfm.engine.trainer as engine

    real = engine._build_optimizer

    def install(k: int, value: float) -> None:
        def build(params, cfg):
            flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
            calls = [0]

            def hook(grad):
                calls[0] += 1
                return grad * value if calls[0] > k else grad

            flat[0].register_hook(hook)
            return real(params, cfg)

        monkeypatch.setattr(engine, "_build_optimizer", build)

    return install


COMMON = ["--arch", "vit_tiny", "--input_size", "32", "--patch_size", "16", "--pretrained_weights", "random",
          "--batch_size_per_gpu", "16", "--num_workers", "0", "--device", "cpu", "--report_n_boot", "0"]


@pytest.mark.parametrize("command,bad", [("train-cls", NAN), ("train-cls", INF), ("finetune", NAN)])
def test_decoder_and_finetune_stop_on_nonfinite_gradients_and_keep_epoch_0(tmp_path, capsys, poison_from_step,
                                                                          command, bad):
    data = imagefolder(tmp_path / "data", per_class=4)  # 8 training images: one batch per epoch
    poison_from_step(1, bad)  # epoch 0 is healthy, epoch 1's gradients are not
    extra = (["--dataset_format", "ImageNet", "--head", "linear", "--num_labels", "2"] if command == "train-cls"
             else ["--warmup_epochs", "0"])
    out = tmp_path / "out"
    rc, _, err = cli([command, "--name", "r", "--data_path", str(data), "--output_dir", str(out), "--epochs", "3",
                      "--lr", "0.01", *extra, *COMMON], capsys)
    assert rc == 2
    lines = [x for x in err.splitlines() if "error" in x.lower()]  # (stderr also has progress bars)
    assert len(lines) == 1 and f"visionfm {command}: error: epoch 2: 1 optimizer step(s) had non-finite gradients" \
        in lines[0]
    run = out / "r"
    assert nonfinite_in_files(run) == {}
    assert "checkpoint_last.safetensors" in weight_files(run)
    assert json.loads((run / "checkpoint_last.json").read_text())["epoch"] == 1  # the first epoch, 1-based
    assert [x["epoch"] for x in strict_json_lines(run / "log.txt") if "epoch" in x] == [1]
    assert not any(p.name == "model.safetensors" for p in run.rglob("*"))  # no model folder of the run


def test_decoder_weights_overflow_is_caught_before_evaluation(tmp_path):
    """A finite loss and finite gradients, but an update that makes the weights non-finite."""
    from types import SimpleNamespace

    from visionfm.engine.trainer import FitConfig, TensorBatches, fit, loss_step

    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    model = torch.nn.Linear(4, 2)
    evaluated = []
    env = SimpleNamespace(device=torch.device("cpu"), world_size=1, is_main=True, rank=0)
    with pytest.raises(NonFiniteLossError, match="epoch 1: the weights became non-finite"):
        fit(model, TensorBatches(x, y, 16, 0), loss_step(torch.nn.functional.cross_entropy),
            lambda m: evaluated.append(1) or {"acc": 0.0}, selection_key="acc", higher_is_better=True,
            run_dir=tmp_path, cfg=FitConfig(epochs=1, lr=INF, batch_size=16, optimizer="sgd", weight_decay=0.0,
                                            scheduler="constant"), env=env)
    assert evaluated == [] and weight_files(tmp_path) == []


def test_epoch_without_batches_is_an_error(tmp_path):
    from types import SimpleNamespace

    from visionfm.engine.trainer import FitConfig, fit, loss_step
    from visionfm.errors import ConfigError

    env = SimpleNamespace(device=torch.device("cpu"), world_size=1, is_main=True, rank=0)
    with pytest.raises(ConfigError, match="epoch 1: no training batch"):
        fit(torch.nn.Linear(2, 2), lambda e: [], loss_step(torch.nn.functional.cross_entropy), lambda m: {"a": 1.0},
            selection_key="a", higher_is_better=True, run_dir=tmp_path, cfg=FitConfig(epochs=1), env=env)
    assert weight_files(tmp_path) == []
    assert math.isnan(NAN)
