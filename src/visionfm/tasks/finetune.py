"""End-to-end fine-tuning on the RETFound benchmark layout (``visionfm finetune`` / ``evaluate``;
reference §2.8, §5.8, §5.9).

Encoder and :class:`~visionfm.models.heads.ClsHead` are trained together, wrapped in ONE DDP module
(the original trained the encoder outside DDP, §8 item 27). What RETFound users expect is here:
layer-wise lr decay, per-iteration warm-up + cosine, drop path, timm RandAugment / mixup / cutmix /
label smoothing / random erasing, bf16 autocast on CUDA, gradient accumulation. The best epoch is
chosen on validation AUROC (macro one-vs-rest over the classes present, binary AUROC for two
classes) computed by :func:`visionfm.metrics.classification_metrics`, so binary tasks and classes
absent from a split work (the original crashed, §8 item 10).

Class order: alphabetical, ``--class_order a,b,c``, or ``--class_order_preset NAME`` (the original's
hard-coded orders, :data:`~visionfm.data.layouts.RETFOUND_CLASS_ORDERS`); the order is fixed once for
all splits, so a class missing from ``val`` keeps its index.

Checkpoint ``<run>/checkpoint_best.safetensors`` (``model.encoder.*``, ``model.head.*``) +
``checkpoint_best.json`` (architecture, pooling, classes, epoch, val and test metrics); the same
selected model as a model folder ``<run>/model/`` (fine-tuned encoder + head, see docs/inference.md),
which ``evaluate --model``, ``finetune --load_from`` and ``visionfm predict`` read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from visionfm.engine.trainer import FitConfig, fit, selection_split, start_point
from visionfm.errors import CheckpointError, ConfigError, DataFormatError

if TYPE_CHECKING:
    from visionfm.config import EvaluateConfig, FinetuneConfig

__all__ = [
    "FinetuneModel",
    "resolve_classes",
    "param_groups_lrd",
    "build_train_transform",
    "predict_probs",
    "metrics_for",
    "load_finetuned",
    "run_finetune",
    "run_evaluate",
]

log = logging.getLogger("visionfm.finetune")


class FinetuneModel(nn.Module):
    """Encoder → pooled tokens (last-``n`` CLS concat, mean patch token, or both) → head logits."""

    def __init__(self, encoder: nn.Module, num_outputs: int, n_last_blocks: int = 4, avgpool: int = 0,
                 head: str = "cls", bn_momentum: float = 0.1) -> None:
        super().__init__()
        from visionfm.models.heads import build_cls_head

        if avgpool not in (0, 1, 2):
            raise ConfigError("--avgpool_patchtokens must be 0, 1 or 2")
        depth, d = int(encoder.depth), int(encoder.embed_dim)  # type: ignore[arg-type]
        if not 1 <= n_last_blocks <= depth:
            raise ConfigError(f"--n_last_blocks must be in [1, {depth}], got {n_last_blocks}")
        self.encoder = encoder
        self.n_last_blocks = int(n_last_blocks)
        self.avgpool = int(avgpool)
        self.in_dim = {0: n_last_blocks * d, 1: d, 2: (n_last_blocks + 1) * d}[avgpool]
        self.head = build_cls_head(head, self.in_dim, num_outputs, layers=3, bn_momentum=bn_momentum)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        from visionfm.models.pooling import pooled_features

        return pooled_features(self.encoder, x, self.n_last_blocks, self.avgpool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).float())


# -- classes, transforms, optimisation ----------------------------------------------------------------


def resolve_classes(root: str | Path, class_order: str | None, preset: str | None) -> list[str]:
    """The label order: preset, explicit list, or alphabetical over the class folders of every split."""
    from visionfm.data.layouts import retfound_class_order
    from visionfm.data.layouts.imagefolder import available_splits

    if class_order and preset:
        raise ConfigError("give --class_order or --class_order_preset, not both")
    if preset:
        return retfound_class_order(preset)
    if class_order:
        return [c.strip() for c in class_order.split(",") if c.strip()]
    root = Path(root)
    names: set[str] = set()
    for split in available_splits(root):
        names.update(d.name for d in (root / split).iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataFormatError("no class folders found; expected <split>/<class>/<images>", root)
    return sorted(names)


def build_train_transform(opts: FinetuneConfig):
    """RandomResizedCrop → H/V flips → [RandAugment] → ToTensor → Normalize → [RandomErasing]."""
    from torchvision import transforms as T

    from visionfm.data.modalities import get_stats

    mean, std = get_stats(opts.modality)
    steps: list[Any] = [
        T.RandomResizedCrop(opts.input_size, scale=(opts.min_crop_scale, 1.0),
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
    ]
    if opts.randaug:
        from timm.data.auto_augment import rand_augment_transform

        hp = {"translate_const": int(opts.input_size * 0.45), "img_mean": tuple(int(round(255 * m)) for m in mean)}
        steps.append(rand_augment_transform(opts.randaug, hp))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if opts.reprob > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(opts.reprob, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(steps)


def _layer_id(name: str, depth: int) -> int:
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "masked_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups_lrd(model: FinetuneModel, weight_decay: float, layer_decay: float,
                     encoder_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: encoder layer ``i`` gets ``encoder_lr_scale · layer_decay^(depth+1-i)``; the head
    gets 1. No weight decay on biases, norms (1-d tensors), position embedding and tokens."""
    depth = int(model.encoder.depth)  # type: ignore[arg-type]
    no_decay_names = set(getattr(model.encoder, "no_weight_decay", lambda: set())())
    groups: dict[str, dict[str, Any]] = {}
    for prefix, module in (("encoder", model.encoder), ("head", model.head)):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim <= 1 or name in no_decay_names or name.endswith(".bias")
            if prefix == "encoder":
                lid = _layer_id(name, depth)
                scale = encoder_lr_scale * layer_decay ** (depth + 1 - lid)
            else:
                lid, scale = depth + 2, 1.0
            key = f"{prefix}_{lid}_{'no_decay' if no_decay else 'decay'}"
            g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                        "lr_scale": scale, "name": key})
            g["params"].append(p)
    return list(groups.values())


# -- prediction and metrics ------------------------------------------------------------------------------


def _collate(batch):
    return torch.stack([b[0] for b in batch]), torch.tensor([int(b[1]) for b in batch]), [b[2] for b in batch]


@torch.no_grad()
def predict_probs(model: nn.Module, dataset: Any, env: Any, batch_size: int, num_workers: int, binary_logit: bool,
                  amp: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities ``[N, C]`` (softmax) or ``[N]`` (sigmoid of a single logit), labels and paths, in
    dataset order; each rank computes a contiguous shard, gathered on every rank."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader, Subset

    from visionfm.engine.features import shard_indices

    model.eval()
    idx = shard_indices(len(dataset), env.rank, env.world_size)
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    probs, labels, paths = [], [], []
    use_amp = amp and env.device.type == "cuda"
    for x, y, extras in loader:
        with torch.autocast(device_type=env.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x.to(env.device, non_blocking=True))
        logits = logits.float().cpu()
        probs.append(torch.sigmoid(logits.reshape(-1)) if binary_logit else torch.softmax(logits, dim=1))
        labels.append(y)
        paths += [e.get("rel_path", e.get("img_path", "")) for e in extras]
    part = (torch.cat(probs).numpy() if probs else np.zeros((0,)), torch.cat(labels).numpy() if labels else
            np.zeros(0, np.int64), paths)
    if env.world_size == 1:
        return part
    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, part)
    return (np.concatenate([p[0] for p in parts if len(p[0])]), np.concatenate([p[1] for p in parts]),
            [q for p in parts for q in p[2]])


def task_of(num_classes: int, binary_logit: bool) -> str:
    return "binary" if num_classes == 2 else "multiclass"


def binary_scores(probs: np.ndarray, binary_logit: bool) -> np.ndarray:
    return probs if binary_logit else probs[:, 1]


def metrics_for(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], binary_logit: bool) -> dict[str, Any]:
    """``auroc`` (binary AUROC or macro OvR over the classes present), ``aupr``, ``accuracy``, ``f1_macro``."""
    from visionfm.metrics import classification_metrics

    task = task_of(len(classes), binary_logit)
    s = binary_scores(probs, binary_logit) if task == "binary" else probs
    m = classification_metrics(y, s, task, class_names=list(classes))
    if task == "binary":
        return {"auroc": m.get("auroc"), "aupr": m.get("aupr"), "accuracy": m.get("accuracy"),
                "f1_macro": m.get("f1_macro")}
    return {"auroc": m.get("auroc_macro"), "aupr": m.get("aupr_macro"), "accuracy": m.get("accuracy"),
            "f1_macro": m.get("f1_macro")}


# -- checkpoints ----------------------------------------------------------------------------------------------


def _save(stem: Path, model: FinetuneModel, info: dict[str, Any]) -> None:
    from visionfm.engine.trainer import save_decoder_checkpoint

    save_decoder_checkpoint(stem, model, info)


def _from_model_folder(folder: Path, device: torch.device) -> tuple[FinetuneModel, dict[str, Any]]:
    """A :class:`FinetuneModel` from a classification model folder (``finetune``'s ``<run>/model`` or any
    pooled single-label classification folder with a ``cls``/``linear`` head)."""
    from visionfm.models import build_encoder
    from visionfm.packaging import from_pretrained

    vm = from_pretrained(folder)
    cfg = vm.config
    head_cfg = cfg["head"]
    if cfg["task"] != "classification" or cfg.get("task_kind") not in ("binary", "multiclass"):
        raise CheckpointError(f"{folder}: a {cfg['task']} ({cfg.get('task_kind')}) model folder; finetune/evaluate "
                              "need a single-label classification model")
    if head_cfg["type"] not in ("cls", "linear") or int(head_cfg["args"].get("layers", 3)) != 3:
        raise CheckpointError(f"{folder}: head {head_cfg['type']} {head_cfg['args']} is not a finetune head "
                              "(cls with 3 layers, or linear)")
    feats = cfg["features"]
    if feats.get("block_ids"):
        raise CheckpointError(f"{folder}: features from explicit block ids {feats['block_ids']} are not supported here")
    enc = cfg["encoder"]
    size = int(cfg["preprocess"]["input_size"])
    n_out = int(head_cfg["args"]["num_classes"])
    avg = int(feats.get("avgpool", 0))
    n_last = int(feats.get("n_last_blocks", 1))
    model = FinetuneModel(build_encoder(enc["arch"], img_size=size, patch_size=int(enc["patch_size"])), n_out,
                          n_last, avg, head_cfg["type"], float(head_cfg["args"].get("bn_momentum", 0.1)))
    sd = vm.state_dict()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("masked_embed")]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not fit a finetune model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    info = {"format": "model-folder", "task": "finetune", "source": str(folder), "epoch": None, "arch": enc["arch"],
            "patch_size": int(enc["patch_size"]), "input_size": size, "n_last_blocks": n_last,
            "avgpool_patchtokens": avg, "head": head_cfg["type"],
            "bn_momentum": float(head_cfg["args"].get("bn_momentum", 0.1)), "num_outputs": n_out,
            "binary_logit": n_out == 1, "class_names": list(cfg["class_names"]), "modality": cfg["modality"],
            "interpolation": cfg["preprocess"].get("interpolation", "bicubic")}
    return model.to(device), info


def is_model_folder(path: str | Path | None) -> bool:
    """Whether ``path`` is a directory with a model folder's ``config.json``."""
    from visionfm.packaging.model_folder import CONFIG_FILE

    return path is not None and Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def load_finetuned(path: str | Path, device: torch.device,
                   opts: FinetuneConfig | EvaluateConfig | None = None) -> tuple[FinetuneModel, dict[str, Any]]:
    """A fine-tuned model from our checkpoint (``.safetensors`` + ``.json``), a model folder (``<run>/model``)
    or the original's ``checkpoint_best_finetune.pth`` (``visionfm_state_dict`` + ``classifier_state_dict``;
    needs ``opts.arch/patch_size/input_size`` and ``opts.num_labels``, safe loader)."""
    from visionfm.engine.trainer import load_decoder_checkpoint
    from visionfm.models import build_encoder

    p = Path(path)
    if p.is_dir():
        if not is_model_folder(p):
            raise CheckpointError(f"{p}: a folder without config.json (expected a model folder such as <run>/model)")
        return _from_model_folder(p, device)
    if p.suffix in (".pth", ".pt"):
        from visionfm import load_encoder
        from visionfm.io import load_checkpoint_file

        if opts is None or not opts.num_labels:
            raise ConfigError("an original checkpoint_best_finetune.pth needs --num_labels (and --arch, --input_size)")
        obj, _ = load_checkpoint_file(p)
        head_sd = obj.get("classifier_state_dict") if isinstance(obj, dict) else None
        if not isinstance(head_sd, dict):
            raise CheckpointError(f"{p}: no 'classifier_state_dict' (not a finetune checkpoint)")
        enc = load_encoder(p, opts.arch, "visionfm_state_dict", opts.patch_size, opts.input_size)
        model = FinetuneModel(enc, opts.num_labels, 4, 0, "cls")
        clean = {k[len("module."):] if k.startswith("module.") else k: v for k, v in head_sd.items()}
        model.head.load_state_dict(clean)
        info = {"format": "original-finetune-pth", "epoch": obj.get("epoch"), "arch": opts.arch,
                "patch_size": opts.patch_size, "input_size": opts.input_size, "binary_logit": opts.num_labels == 1,
                "modality": opts.modality, "class_names": None, "num_outputs": opts.num_labels}
        return model.to(device), info
    sd, info, _ = load_decoder_checkpoint(p)
    if info.get("task") != "finetune":
        raise CheckpointError(f"{p}: not a 'visionfm finetune' checkpoint (task={info.get('task')!r})")
    enc = build_encoder(info["arch"], img_size=info["input_size"], patch_size=info["patch_size"])
    model = FinetuneModel(enc, info["num_outputs"], info["n_last_blocks"], info["avgpool_patchtokens"], info["head"],
                          info.get("bn_momentum", 0.1))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("masked_embed")]
    if missing or unexpected:
        raise CheckpointError(f"{p}: weights do not fit the recorded model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return model.to(device), info


# -- the commands ---------------------------------------------------------------------------------------------


def _datasets(opts: FinetuneConfig, classes: list[str]):
    from visionfm.data.layouts import ImageFolderDataset
    from visionfm.data.layouts.imagefolder import available_splits
    from visionfm.engine.features import eval_transform

    present = available_splits(opts.data_path)
    if "train" not in present:
        raise DataFormatError(f"no train/ folder (splits present: {', '.join(present) or 'none'})", opts.data_path)
    ev = eval_transform(opts.input_size, opts.modality, interpolation="bicubic")
    train = ImageFolderDataset(opts.data_path, "train", class_order=classes, transform=build_train_transform(opts))
    val = ImageFolderDataset(opts.data_path, "val", class_order=classes, transform=ev) if "val" in present else None
    test = ImageFolderDataset(opts.data_path, "test", class_order=classes, transform=ev) if "test" in present else None
    return train, val, test


def _loss(opts: FinetuneConfig, num_classes: int, binary_logit: bool, mixup_on: bool):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if binary_logit:
        bce = nn.BCEWithLogitsLoss()
        s = float(opts.smoothing)
        return lambda logits, y: bce(logits.reshape(-1), y.float() * (1.0 - s) + 0.5 * s)
    if mixup_on:
        return SoftTargetCrossEntropy()
    if opts.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=opts.smoothing)
    return nn.CrossEntropyLoss()


def run_finetune(opts: FinetuneConfig) -> int:
    """``visionfm finetune``: see the module docstring and docs/forecasting-and-finetuning.md."""
    from torch.utils.data import DataLoader, DistributedSampler

    from visionfm import load_encoder
    from visionfm.engine.distributed import command_session
    from visionfm.engine.logging import RunLogger
    from visionfm.io import save_json_atomic

    if not opts.pretrained_weights:
        raise ConfigError("--pretrained_weights is required (a weights file, or 'random' for a random encoder)")
    if opts.accum_iter < 1:
        raise ConfigError("--accum_iter must be >= 1")
    with command_session(opts.device, seed=opts.seed) as env:
        run_dir = opts.run_dir()
        classes = resolve_classes(opts.data_path, opts.class_order, opts.class_order_preset)
        n_cls = len(classes)
        if n_cls < 2:
            raise DataFormatError(f"need at least 2 classes, found {classes}", opts.data_path)
        binary_logit = opts.num_labels == 1
        if binary_logit and n_cls != 2:
            raise ConfigError(f"--num_labels 1 (one sigmoid logit) needs exactly 2 classes, found {n_cls}")
        if opts.num_labels not in (None, 1, n_cls):
            raise ConfigError(f"--num_labels {opts.num_labels} but the class order has {n_cls} classes "
                              f"({', '.join(classes)})")
        n_out = 1 if binary_logit else n_cls
        mixup_on = opts.mixup > 0 or opts.cutmix > 0
        if mixup_on and opts.batch_size_per_gpu % 2:
            raise ConfigError("--mixup/--cutmix need an even --batch_size_per_gpu")
        if mixup_on and binary_logit:
            raise ConfigError("--mixup/--cutmix need softmax outputs; use --num_labels 2 (the default) for "
                              "binary tasks")
        train_ds, val_ds, test_ds = _datasets(opts, classes)
        sel_ds, sel_split = selection_split(val_ds, test_ds, warn=env.is_main and test_ds is not None)
        if sel_ds is None:
            raise DataFormatError("no val/ or test/ folder to select the best epoch on", opts.data_path)

        encoder = load_encoder(opts.pretrained_weights, opts.arch, opts.checkpoint_key, opts.patch_size,
                               opts.input_size, drop_path_rate=opts.drop_path)
        model = FinetuneModel(encoder, n_out, opts.n_last_blocks, opts.avgpool_patchtokens, opts.head,
                              opts.bn_momentum).to(env.device)
        if opts.load_from:
            init, _ = load_finetuned(opts.load_from, env.device, opts)
            model.load_state_dict(init.state_dict())
            log.info("initialised encoder and head from %s", opts.load_from)
        eff_batch = opts.batch_size_per_gpu * opts.accum_iter * env.world_size
        base_lr = opts.lr * eff_batch / 256.0
        groups = param_groups_lrd(model, opts.weight_decay, opts.layer_decay, opts.encoder_lr_scale)
        sampler = DistributedSampler(train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=opts.seed, drop_last=mixup_on) if env.world_size > 1 else None
        g = torch.Generator()
        loader = DataLoader(train_ds, batch_size=opts.batch_size_per_gpu, shuffle=sampler is None, sampler=sampler,
                            num_workers=opts.num_workers, collate_fn=_collate,
                            drop_last=len(train_ds) > opts.batch_size_per_gpu, generator=g,
                            pin_memory=env.device.type == "cuda")
        if len(loader) == 0:
            raise DataFormatError(f"train/ has {len(train_ds)} images, fewer than one batch of "
                                  f"{opts.batch_size_per_gpu}", opts.data_path)
        mixup_fn = None
        if mixup_on:
            from timm.data import Mixup

            mixup_fn = Mixup(mixup_alpha=opts.mixup, cutmix_alpha=opts.cutmix, prob=opts.mixup_prob,
                             switch_prob=opts.mixup_switch_prob, mode="batch", label_smoothing=opts.smoothing,
                             num_classes=n_cls)
        loss_fn = _loss(opts, n_cls, binary_logit, mixup_on)
        run_logger = RunLogger(run_dir, enabled=env.is_main)
        meta = {"task": "finetune", "arch": model.encoder.load_report.arch if hasattr(model.encoder, "load_report")
                else opts.arch, "patch_size": int(model.encoder.patch_size), "input_size": opts.input_size,
                "n_last_blocks": opts.n_last_blocks, "avgpool_patchtokens": opts.avgpool_patchtokens,
                "head": opts.head, "bn_momentum": opts.bn_momentum, "num_outputs": n_out, "binary_logit": binary_logit,
                "class_names": classes, "modality": opts.modality, "selection_split": sel_split,
                "selection_key": "auroc", "pretrained_weights": str(opts.pretrained_weights)}
        cfg = FitConfig(epochs=opts.epochs, lr=base_lr, batch_size=opts.batch_size_per_gpu, optimizer="adamw",
                        weight_decay=opts.weight_decay, scheduler="warmup_cosine", warmup_epochs=opts.warmup_epochs,
                        min_lr=opts.min_lr, accum_iter=opts.accum_iter, clip_grad=opts.clip_grad, amp=bool(opts.amp),
                        val_freq=opts.val_freq, seed=opts.seed)
        identity = {**{k: v for k, v in meta.items() if k != "selection_split"}, "data": str(opts.data_path),
                    "load_from": str(opts.load_from or ""), "augment": {k: getattr(opts, k) for k in (
                        "min_crop_scale", "randaug", "reprob", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob",
                        "smoothing", "drop_path", "layer_decay", "encoder_lr_scale")}}

        def batches(epoch: int) -> Any:
            g.manual_seed(opts.seed * 10_007 + epoch)  # the epoch's order depends on (seed, epoch) only: resumable
            if sampler is not None:
                sampler.set_epoch(epoch)
            return loader

        def step(net: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
            x, y, _ = batch
            x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
            target: torch.Tensor = y
            if mixup_fn is not None:
                x, target = mixup_fn(x, y)
            return loss_fn(net(x).float(), target), len(x)

        def evaluate(m: nn.Module) -> dict[str, Any]:
            probs, yv, _ = predict_probs(m, sel_ds, env, opts.batch_size_per_gpu, opts.num_workers, binary_logit,
                                         opts.amp)
            return metrics_for(yv, probs, classes, binary_logit)

        resume_from, _ = start_point(run_dir, None, opts.resume)
        result = fit(model, batches, step, evaluate, selection_key="auroc", higher_is_better=True, run_dir=run_dir,
                     cfg=cfg, env=env, run_logger=run_logger, meta=meta, identity=identity, param_groups=groups,
                     resume_from=resume_from, log_prefix=f"{sel_split}_", keep_last_if_never_selected=True)
        best_value = result.best_value
        best_model, info = load_finetuned(run_dir / "checkpoint_best.safetensors", env.device)
        summary: dict[str, Any] = {"best_epoch": info.get("epoch"), "best_val_auroc": best_value,
                                   "selection_split": sel_split}
        metrics = None
        if test_ds is not None:
            metrics = evaluate_split(best_model, info, test_ds, opts, env, run_dir / "report",
                                     f"test (best epoch selected on {sel_split})")
            if env.is_main:
                summary["test_metrics"] = metrics
                info["test_metrics"] = metrics
                save_json_atomic(info, run_dir / "checkpoint_best.json")
        if env.is_main:
            _package(opts, run_dir, best_model, info, metrics, sel_split)
        if env.is_main:
            run_logger.log({"final": summary})
            run_logger.close()
            print(json.dumps(summary))
        return 0


def _package(opts: FinetuneConfig, run_dir: Path, model: FinetuneModel, info: dict[str, Any],
             metrics: dict[str, Any] | None, sel_split: str) -> Path:
    """``<run>/model/``: the selected epoch's fine-tuned encoder + head as a model folder."""
    from visionfm.packaging import model_folder_from_training

    n_out = int(info["num_outputs"])
    if info["head"] == "cls":
        head_args: dict[str, Any] = {"embed_dim": int(model.in_dim), "num_classes": n_out, "layers": 3,
                                     "bn_momentum": float(info.get("bn_momentum", 0.1))}
    else:
        head_args = {"embed_dim": int(model.in_dim), "num_classes": n_out}
    data = {"data_path": str(opts.data_path), "source": "images (ImageNet layout: train/val/test/<class>/)",
            "selection_split": sel_split, "best_epoch": info.get("epoch"),
            "evaluated_on": f"the test split, with the epoch selected on {sel_split}" if metrics else "not evaluated",
            "run": str(run_dir)}
    return model_folder_from_training(
        run_dir / "model", encoder=model.encoder, head=model.head, task="classification",
        task_kind="binary" if info.get("binary_logit") else "multiclass", modality=str(info["modality"]),
        input_size=int(info["input_size"]), interpolation="bicubic",
        features={"type": "pooled", "n_last_blocks": int(info["n_last_blocks"]),
                  "avgpool": int(info["avgpool_patchtokens"])},
        head_type=str(info["head"]), head_args=head_args, class_names=list(info["class_names"]), metrics=metrics,
        data=data, name=f"{opts.run_name()} ({info['modality']}, fine-tuned)",
        weights_source=str(opts.pretrained_weights), encoder_frozen=False)


SUMMARY_KEYS = ("accuracy", "auroc", "auroc_macro", "aupr", "aupr_macro", "f1_macro")


def evaluate_split(model: FinetuneModel, info: dict[str, Any], dataset: Any, opts: FinetuneConfig | EvaluateConfig,
                   env: Any, out_dir: Path,
                   what: str) -> dict[str, Any]:
    """Predict ``dataset`` and write the standard report; returns the headline metrics (rank 0)."""
    from visionfm.reports import evaluate_classification_run

    binary_logit = bool(info.get("binary_logit"))
    classes = list(dataset.classes)
    probs, y, paths = predict_probs(model, dataset, env, opts.batch_size_per_gpu, opts.num_workers, binary_logit,
                                    getattr(opts, "amp", True))
    if not env.is_main:
        return {}
    task = task_of(len(classes), binary_logit)
    scores = binary_scores(probs, binary_logit) if task == "binary" else probs
    meta = {"name": opts.run_name(), "modality": info.get("modality"), "evaluated": what,
            "checkpoint_epoch": info.get("epoch"), "task": task, "n": len(y)}
    m = evaluate_classification_run(out_dir, y, scores, task, classes, paths=paths, n_boot=opts.report_n_boot,
                                    seed=opts.seed, title=f"{opts.run_name()} ({task}, fine-tuned)", meta=meta)
    np.save(out_dir / "probs.npy", probs)
    np.save(out_dir / "target.npy", y.reshape(-1, 1))
    return {k: m[k] for k in SUMMARY_KEYS if k in m}


def run_evaluate(opts: EvaluateConfig) -> int:
    """``visionfm evaluate``: a fine-tuned checkpoint on ``<data_path>/<split>``."""
    from visionfm.data.layouts import ImageFolderDataset
    from visionfm.engine.distributed import command_session
    from visionfm.engine.features import eval_transform
    from visionfm.io import save_json_atomic

    with command_session(opts.device) as env:
        source = getattr(opts, "model", None) or opts.load_from
        if getattr(opts, "model", None) and opts.load_from:
            raise ConfigError("give --model (a model folder) or --load_from (a checkpoint), not both")
        if not source:
            raise ConfigError("--model FOLDER or --load_from CHECKPOINT is required")
        if getattr(opts, "model", None) and not is_model_folder(source):
            raise ConfigError(f"--model {source}: not a model folder (config.json + model.safetensors); "
                              "use --load_from for checkpoint files")
        model, info = load_finetuned(source, env.device, opts)
        classes = info.get("class_names")
        if opts.class_order or opts.class_order_preset or not classes:
            classes = resolve_classes(opts.data_path, opts.class_order, opts.class_order_preset)
        if len(classes) != max(int(info.get("num_outputs", 0)), 2):
            raise ConfigError(f"the checkpoint has {info.get('num_outputs')} outputs but the class order has "
                              f"{len(classes)} classes ({', '.join(classes)})")
        size = int(info.get("input_size") or opts.input_size)
        modality = info.get("modality") or opts.modality
        ds = ImageFolderDataset(opts.data_path, opts.split, class_order=classes,
                                transform=eval_transform(size, modality, interpolation=info.get("interpolation",
                                                                                                "bicubic")))
        run_dir = opts.run_dir()
        metrics = evaluate_split(model, info, ds, opts, env, run_dir / "report", f"{opts.split} ({source})")
        if env.is_main:
            save_json_atomic({"checkpoint": str(source), "split": opts.split, "metrics": metrics},
                             run_dir / "evaluate.json")
            print(json.dumps(metrics))
        return 0
