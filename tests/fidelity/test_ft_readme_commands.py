"""The Fine-tuning README's commands run as written — only the launcher and script name replaced by
``visionfm finetune`` / ``visionfm evaluate``, size flags appended (later flags win) — and write the
original's files under its names (reference §5.8, §5.9); the two recipes build what they document;
an original-format fine-tuned checkpoint loads."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.tasks.test_finetune import make_imagefolder
from visionfm.cli.main import main

pytestmark = pytest.mark.xdist_group("ft_readme")

# Fine-tuning/README.md, from the script name on (launcher and shell redirection dropped)
FT_PAPILA = ("finetune --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth --arch vit_base "
             "--avgpool_patchtokens 0 --input_size 224 --output_dir ./results/PAPILA_FT_VisionFM_Val "
             "--data_path ./data/PAPILA --task PAPILA_FT_VisionFM_Val --modality Fundus --num_workers 4 "
             "--batch_size_per_gpu 128 --num_labels 3 --extra 10")
EV_PAPILA = ("evaluate --pretrained_weights ./results/PAPILA_FT_VisionFM_Val/checkpoint_best_finetune.pth "
             "--arch vit_base --avgpool_patchtokens 0 --input_size 224 --output_dir ./results/PAPILA_FT_VisionFM_test "
             "--data_path ./data/PAPILA --task PAPILA_FT_VisionFM_test --modality Fundus --num_workers 4 "
             "--batch_size_per_gpu 128 --num_labels 3 --extra 10")
FT_IDRID = ("finetune --pretrained_weights ./pretrain_weights/VFM_Fundus_weights.pth --arch vit_base "
            "--avgpool_patchtokens 0 --input_size 224 --output_dir ./results/IDRiD_data_FT_VisionFM_Val "
            "--data_path ./data/IDRiD_data --task IDRiD_data_FT_VisionFM_Val --modality Fundus --num_workers 4 "
            "--batch_size_per_gpu 128 --num_labels 5 --epoch 5 --extra 10")
SIZE = ["--arch", "vit_tiny", "--input_size", "32", "--batch_size_per_gpu", "8", "--num_workers", "0",
        "--device", "cpu", "--report_n_boot", "0"]
PAPILA = ("anormal", "bsuspectglaucoma", "cglaucoma")
IDRID = ("anoDR", "bmildDR", "cmoderateDR", "dsevereDR", "eproDR")
SPEC = json.loads((Path(__file__).parents[1] / "data" / "official_heads.json").read_text())["heads"]["cls"]


def run(command: str, *extra: str) -> int:
    return main(shlex.split(command) + list(extra))


def original_auc_aupr(best: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """The original's formulas (reference §5.8): sklearn macro OvR AUROC, macro AP on one-hot targets."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    onehot = np.eye(best.shape[1])[target[:, 0]]
    return (roc_auc_score(target, best, average="macro", multi_class="ovr"),
            average_precision_score(onehot, best, average="macro"))


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """The README's working folder: ./pretrain_weights/VFM_Fundus_weights.pth (a random ViT-tiny teacher in
    the official layout) and ./data/<benchmark>/{train,val,test}/<class>/ images."""
    from visionfm.models import build_encoder

    root = tmp_path_factory.mktemp("ft_readme")
    (root / "pretrain_weights").mkdir()
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=16, img_size=224)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in enc.state_dict().items()}},
               root / "pretrain_weights" / "VFM_Fundus_weights.pth")
    papila = make_imagefolder(root / "data" / "PAPILA", classes=PAPILA, n=(6, 3, 3))
    for i, (src, dst) in enumerate([(PAPILA[0], PAPILA[2]), (PAPILA[2], PAPILA[1])]):  # imperfect test labels:
        (papila / "test" / src / "0.png").rename(papila / "test" / dst / f"swapped{i}.png")  # AUC != AUPR != 1
    make_imagefolder(root / "data" / "IDRiD_data", classes=IDRID, n=(2, 1, 2), seed=1)
    return root


def test_papila_finetune_then_evaluate_as_written(place, monkeypatch, capsys):
    monkeypatch.chdir(place)
    assert run(FT_PAPILA, *SIZE, "--epochs", "2") == 0
    out = capsys.readouterr().out
    run_dir = place / "results" / "PAPILA_FT_VisionFM_Val"  # no --name: straight into --output_dir
    best_json = json.loads((run_dir / "checkpoint_best.json").read_text())
    assert best_json["class_names"] == list(PAPILA) and best_json["recipe"] == "visionfm"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())  # resolved values of the default recipe
    assert (cfg["recipe"], cfg["layer_decay"], cfg["scheduler"], cfg["smoothing"], cfg["drop_path"],
            cfg["crop_interpolation"], cfg["amp"], cfg["extra"]) == \
        ("visionfm", 1.0, "cosine", 0.0, 0.0, "bilinear", False, "10")

    ckpt = torch.load(run_dir / "checkpoint_best_finetune.pth", map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"epoch", "classifier_state_dict", "visionfm_state_dict", "optimizer", "scheduler",
                         "best_auc"}
    assert ckpt["epoch"] == best_json["epoch"]  # the original saved epoch + 1: our 1-based number
    # head: the original's ClsHead names (tests/data/official_heads.json) under DDP's module.
    names = {f"module.{k}" for k in SPEC["tensors"]}
    assert set(ckpt["classifier_state_dict"]) == names
    assert tuple(ckpt["classifier_state_dict"]["module.channel_bn.weight"].shape) == (4 * 192,)
    assert tuple(ckpt["classifier_state_dict"]["module.classifier.6.weight"].shape) == (3, 192)
    from visionfm.models import build_encoder

    vit_keys = set(build_encoder("vit_tiny", img_size=32).state_dict()) - {"masked_embed"}
    assert set(ckpt["visionfm_state_dict"]) == vit_keys
    assert [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]] == [len(vit_keys), len(SPEC["tensors"]) - 3]
    assert ckpt["scheduler"]["T_max"] == 2 and ckpt["scheduler"]["eta_min"] == 0
    assert ckpt["best_auc"] == pytest.approx(best_json["val_metrics"]["auroc"])

    best, target = np.load(run_dir / "best.npy"), np.load(run_dir / "target.npy")
    assert best.shape == (9, 3) and best.dtype == np.float32 and np.allclose(best.sum(1), 1, atol=1e-5)
    assert target.shape == (9, 1) and target.dtype == np.int64 and target[:, 0].tolist() == [0] * 3 + [1] * 3 + [2] * 3
    auc, aupr = original_auc_aupr(best, target)
    assert auc == pytest.approx(ckpt["best_auc"], abs=1e-9)
    lines = [json.loads(x) for x in (run_dir / "log.txt").read_text().splitlines()]
    epochs = [x for x in lines if "epoch" in x]
    assert len(epochs) == 2 and all({"train_loss", "train_lr", "epoch", "val_loss", "val_auc", "val_aupr"} <= set(x)
                                    for x in epochs)
    picked = next(x for x in epochs if x["epoch"] == best_json["epoch"])
    assert picked["val_aupr"] == pytest.approx(aupr, abs=1e-9)
    assert re.search(r"Best val auc: (\S+); accompanying aupr: (\S+)", out).groups() == (
        f"{auc:.4f}", f"{aupr:.4f}")

    assert run(EV_PAPILA, *SIZE) == 0
    out = capsys.readouterr().out
    ev_dir = place / "results" / "PAPILA_FT_VisionFM_test"
    best, target = np.load(ev_dir / "best.npy"), np.load(ev_dir / "target.npy")
    assert best.shape == (9, 3) and target.shape == (9, 1)
    auc, aupr = original_auc_aupr(best, target)
    printed = re.search(r"AUC: (\S+), AUPR: (\S+)", out).groups()
    assert 0.5 < auc < 1 and abs(auc - aupr) > 1e-3  # the labels make the two differ
    assert float(printed[0]) == pytest.approx(auc, abs=1e-9) and float(printed[1]) == pytest.approx(aupr, abs=1e-9)
    ours = json.loads((ev_dir / "evaluate.json").read_text())["metrics"]
    assert ours["auroc_macro"] == pytest.approx(auc, abs=1e-9)
    # the same test metrics as finetune's own evaluation of the selected epoch
    assert ours["auroc_macro"] == pytest.approx(best_json["test_metrics"]["auroc_macro"], abs=1e-6)


def test_idrid_command_with_the_epoch_prefix(place, monkeypatch):
    monkeypatch.chdir(place)
    # --epoch 5 is --epochs 5; 10 images in batches of 9 leave one sample, which is dropped (BatchNorm)
    assert run(FT_IDRID, *SIZE, "--batch_size_per_gpu", "9") == 0
    run_dir = place / "results" / "IDRiD_data_FT_VisionFM_Val"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"] == 5
    lines = [json.loads(x) for x in (run_dir / "log.txt").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2, 3, 4, 5]
    assert json.loads((run_dir / "checkpoint_best.json").read_text())["class_names"] == list(IDRID)
    assert np.load(run_dir / "best.npy").shape == (5, 5)


def _reference_checkpoint(path: Path, classifier: bool = True) -> tuple[dict, dict]:
    """A checkpoint_best_finetune.pth as the original wrote it, from the reference module shapes: a ViT-tiny
    (bare keys, no masked_embed) and ClsHead(4·192 = 768, 5) with DDP's module. prefix."""
    from visionfm.models import build_encoder

    g = torch.Generator().manual_seed(3)
    vit = {k: v for k, v in build_encoder("vit_tiny", img_size=224).state_dict().items() if k != "masked_embed"}
    vit = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in vit.items()}
    head = {}
    for k, shape in SPEC["tensors"].items():
        if k.endswith("num_batches_tracked"):
            head[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            head[k] = torch.rand(shape, generator=g) + 0.5
        else:
            head[k] = 0.1 * torch.randn(shape, generator=g)
    obj = {"epoch": 4, "visionfm_state_dict": vit, "optimizer": {}, "scheduler": {}, "best_auc": 0.9}
    if classifier:
        obj["classifier_state_dict"] = {f"module.{k}": v for k, v in head.items()}
    torch.save(obj, path)
    return vit, head


def test_original_format_finetuned_checkpoint_loads(place, tmp_path, monkeypatch, capsys):
    import torch.nn.functional as F

    from tests.models.reference_vit import reference_forward
    from visionfm.config import EvaluateConfig
    from visionfm.errors import CheckpointError, ConfigError
    from visionfm.tasks.finetune import load_finetuned

    path = tmp_path / "checkpoint_idrid.pth"
    vit, head = _reference_checkpoint(path)
    opts = EvaluateConfig(data_path=".", input_size=224)  # no --arch / --patch_size / --num_labels: from the file
    model, info = load_finetuned(path, torch.device("cpu"), opts)
    assert (info["arch"], info["patch_size"], info["num_outputs"], info["epoch"]) == ("vit_tiny", 16, 5, 4)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    feats = torch.cat([t[:, 0] for t in reference_forward(vit, x, num_heads=3, return_layers=4)], dim=-1)
    h = {k: v.double() for k, v in head.items()}
    z = (feats - h["channel_bn.running_mean"]) / torch.sqrt(h["channel_bn.running_var"] + 1e-6)
    z = z * h["channel_bn.weight"] + h["channel_bn.bias"]
    for i in (0, 3):
        z = F.gelu(F.linear(z, h[f"classifier.{i}.weight"], h[f"classifier.{i}.bias"]))
    ref = F.linear(z, h["classifier.6.weight"], h["classifier.6.bias"])
    with torch.no_grad():
        ours = model.eval()(x).double()
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    # given flags are checks
    with pytest.raises(CheckpointError, match="vit_small"):
        load_finetuned(path, torch.device("cpu"), EvaluateConfig(data_path=".", arch="vit_small"))
    with pytest.raises(ConfigError, match="--num_labels 3.*5 outputs"):
        load_finetuned(path, torch.device("cpu"), EvaluateConfig(data_path=".", num_labels=3))
    with pytest.raises(CheckpointError, match="n_last_blocks 3"):
        load_finetuned(path, torch.device("cpu"), EvaluateConfig(data_path=".", n_last_blocks=3))
    # the README's evaluate on it: class order of IDRiD from the data folder's name (the file has none)
    monkeypatch.chdir(place)
    cmd = EV_PAPILA.replace("./results/PAPILA_FT_VisionFM_Val/checkpoint_best_finetune.pth", str(path)).replace(
        "PAPILA", "IDRiD_data").replace("--num_labels 3", "--num_labels 5")
    capsys.readouterr()
    assert run(cmd, *SIZE) == 0
    assert "AUC: " in capsys.readouterr().out
    assert np.load(place / "results" / "IDRiD_data_FT_VisionFM_test" / "best.npy").shape == (10, 5)
    # a head that is not the original's ClsHead is refused by name
    lin = tmp_path / "linear_head.pth"
    torch.save({"visionfm_state_dict": vit, "classifier_state_dict": {"module.linear.weight": torch.zeros(5, 768),
                                                                      "module.linear.bias": torch.zeros(5)}}, lin)
    with pytest.raises(CheckpointError, match="not a 3-layer ClsHead"):
        load_finetuned(lin, torch.device("cpu"), opts)
    # a missing classifier is an error (the original evaluated a random head)
    bad = tmp_path / "no_head.pth"
    _reference_checkpoint(bad, classifier=False)
    with pytest.raises(CheckpointError, match="classifier_state_dict"):
        load_finetuned(bad, torch.device("cpu"), opts)
    assert run(cmd.replace(str(path), str(bad)), *SIZE) == 2


def test_recipes_build_their_optimizer_schedule_transforms_and_loss(tmp_path):
    from timm.loss import LabelSmoothingCrossEntropy
    from torchvision import transforms as T

    from visionfm.config import FINETUNE_RECIPES, FinetuneConfig
    from visionfm.data.modalities import get_stats
    from visionfm.engine.trainer import FitConfig, build_scheduler
    from visionfm.models import build_encoder
    from visionfm.tasks.finetune import FinetuneModel, _loss, build_train_transform, param_groups_lrd

    v = FinetuneConfig(data_path=str(tmp_path)).resolved()
    assert (v.recipe, v.layer_decay, v.weight_decay_all, v.scheduler, v.warmup_epochs, v.drop_path, v.smoothing,
            v.mixup, v.cutmix, v.randaug, v.reprob, v.amp, v.clip_grad, v.drop_last, v.class_order_preset) == \
        ("visionfm", 1.0, True, "cosine", 0, 0.0, 0.0, 0.0, 0.0, "", 0.0, False, 0.0, False, "auto")
    model = FinetuneModel(build_encoder("vit_tiny", img_size=32), 3)
    groups = param_groups_lrd(model, v.weight_decay, v.layer_decay, v.encoder_lr_scale, v.weight_decay_all)
    # the original: AdamW([{encoder.parameters(), lr·0.1·B/256}, {head.parameters()}], lr·B/256, wd 0.05)
    enc_params = [p for n, p in model.encoder.named_parameters() if n != "masked_embed"]
    assert [g["name"] for g in groups] == ["encoder", "head"]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in enc_params]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in model.head.parameters()]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.05] and [g["lr_scale"] for g in groups] == [0.1, 1.0]
    b = v.batch_size_per_gpu
    opt = torch.optim.AdamW([{**g, "lr": v.lr * b / 256 * g["lr_scale"]} for g in groups], lr=v.lr * b / 256,
                            weight_decay=v.weight_decay)
    sched = build_scheduler(opt, FitConfig(epochs=4, scheduler=v.scheduler))
    seen = []
    for _ in range(4):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for e, lrs in enumerate(seen):  # CosineAnnealingLR(T_max=epochs, eta_min=0), per epoch, no warm-up
        want = 0.5 * (1 + np.cos(np.pi * e / 4))
        assert lrs == pytest.approx([0.1 * v.lr * b / 256 * want, v.lr * b / 256 * want])
    mean, std = get_stats("Fundus")
    steps = build_train_transform(v.replace(input_size=32)).transforms
    assert [type(t) for t in steps] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomVerticalFlip,
                                        T.ToTensor, T.Normalize]
    assert (steps[0].size, steps[0].scale, steps[0].interpolation) == ((32, 32), (0.08, 1.0),
                                                                       T.InterpolationMode.BILINEAR)
    assert list(steps[4].mean) == list(mean) and list(steps[4].std) == list(std)
    assert type(_loss(v, 3, False, False)) is torch.nn.CrossEntropyLoss
    logit, y = torch.tensor([[0.3], [-1.2]]), torch.tensor([1, 0])
    assert _loss(v, 2, True, False)(logit, y) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logit[:, 0], y.float())))

    r = FinetuneConfig(data_path=str(tmp_path), recipe="retfound").resolved()
    assert {k: getattr(r, k) for k in FINETUNE_RECIPES["retfound"]} == FINETUNE_RECIPES["retfound"]
    rg = param_groups_lrd(model, r.weight_decay, r.layer_decay, r.encoder_lr_scale, r.weight_decay_all)
    by = {g["name"]: g for g in rg}
    depth = 12
    assert by["encoder_0_no_decay"]["lr_scale"] == pytest.approx(0.1 * 0.75 ** (depth + 1))
    assert by["encoder_12_decay"]["lr_scale"] == pytest.approx(0.1 * 0.75)
    assert by["head_decay"]["lr_scale"] == 1.0 and by["head_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for g in rg if g["name"].endswith("_decay") and not g["name"].endswith("no_decay")
               for p in g["params"])
    rsteps = build_train_transform(r.replace(input_size=32)).transforms
    assert rsteps[0].interpolation == T.InterpolationMode.BICUBIC
    assert any("RandAugment" in type(t).__name__ for t in rsteps) and "RandomErasing" in type(rsteps[-1]).__name__
    assert isinstance(_loss(r, 3, False, False), LabelSmoothingCrossEntropy)
    # an explicit flag beats the recipe; the CLI leaves recipe fields unset (None) for the config layer
    assert FinetuneConfig(data_path=".", smoothing=0.2).resolved().smoothing == 0.2
    assert FinetuneConfig(data_path=".", recipe="retfound", layer_decay=1.0).resolved().layer_decay == 1.0
    from visionfm.cli.finetune import add_arguments
    from visionfm.cli.options import VFMArgumentParser, to_config

    p = VFMArgumentParser()
    add_arguments(p)
    cli = to_config(FinetuneConfig, p.parse_args(["--data_path", ".", "--recipe", "retfound", "--amp", "false"]))
    assert cli.amp is False and cli.layer_decay is None and cli.resolved().layer_decay == 0.75
    # docs/forecasting-and-finetuning.md lists every recipe value in one table
    doc = (Path(__file__).parents[2] / "docs" / "forecasting-and-finetuning.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `--(\w+)` \|.*$", doc, re.M)}
    for key in FINETUNE_RECIPES["visionfm"]:
        cells = [c.strip() for c in rows[key].split("|")[2:4]]
        assert cells == [f"`{FINETUNE_RECIPES[n][key]!s}`" if FINETUNE_RECIPES[n][key] != "" else "`''`"
                         for n in ("visionfm", "retfound")], key


def test_original_class_order_from_the_data_folder_or_task(tmp_path, caplog):
    from visionfm.data.layouts import RETFOUND_CLASS_ORDERS
    from visionfm.tasks.finetune import benchmark_of, resolve_classes

    jsiec = list(RETFOUND_CLASS_ORDERS["JSIEC"])
    for c in jsiec:
        (tmp_path / "JSIEC" / "train" / c).mkdir(parents=True)
    assert resolve_classes(tmp_path / "JSIEC", None, "auto") == jsiec  # interleaved, not sorted
    assert resolve_classes(tmp_path / "JSIEC", None, "alphabetical") == sorted(jsiec)
    (tmp_path / "JSIEC").rename(tmp_path / "mine")
    assert resolve_classes(tmp_path / "mine", None, "auto", task="JSIEC_FT_VisionFM_Val") == jsiec
    assert resolve_classes(tmp_path / "mine", None, "auto") == sorted(jsiec)
    (tmp_path / "mine" / "train" / "extra").mkdir()
    assert resolve_classes(tmp_path / "mine", None, "auto", task="JSIEC") == sorted(jsiec + ["extra"])
    assert "not that benchmark's" in caplog.text
    # only the folder's own name counts (the original took any path containing "Retina" for Retina)
    assert benchmark_of(tmp_path / "Retina_project" / "MESSIDOR2") == "MESSIDOR2"
    assert benchmark_of(tmp_path / "APTOS2019_FT") == "APTOS2019" and benchmark_of(tmp_path / "x") is None
