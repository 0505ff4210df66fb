"""End-to-end fine-tuning on the RETFound benchmark layout (``visionfm finetune`` / ``evaluate``;
reference §2.8, §5.8, §5.9).

Encoder and :class:`~visionfm.models.heads.ClsHead` are trained together, wrapped in ONE DDP module
(the original trained the encoder outside DDP, §8 item 27). Two recipes
(:data:`~visionfm.config.FINETUNE_RECIPES`): ``visionfm``, the original script's (two AdamW groups,
per-epoch cosine, bilinear crops, plain CE, the original's class orders), and ``retfound`` (layer-wise
lr decay, per-iteration warm-up + cosine, drop path, RandAugment, random erasing, label smoothing,
bf16 autocast). The best epoch is chosen on validation AUROC (macro one-vs-rest over the classes
present, binary AUROC for two classes) computed by :func:`visionfm.metrics.classification_metrics`, so
binary tasks and classes absent from a split work (the original crashed, §8 item 10).

Class order: ``--class_order a,b,c``, ``--class_order_preset NAME`` (the original's hard-coded orders,
:data:`~visionfm.data.layouts.RETFOUND_CLASS_ORDERS`), ``auto`` (that order when the data folder's name
or ``--task`` names the benchmark, as the original's path test did) or ``alphabetical``; the order is
fixed once for all splits, so a class missing from ``val`` keeps its index.

Outputs: ``<run>/checkpoint_best.safetensors`` (``model.encoder.*``, ``model.head.*``) +
``checkpoint_best.json`` (architecture, pooling, classes, epoch, val and test metrics); the same
selected model as a model folder ``<run>/model/`` (see docs/inference.md); ``config.yaml`` (the
resolved settings, usable as ``--config``); and the original's files of the selected epoch:
``checkpoint_best_finetune.pth``, ``best.npy``, ``target.npy`` (``log.txt`` carries its keys).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from visionfm.engine.trainer import FitConfig, fit, selection_split, start_point
from visionfm.errors import CheckpointError, ConfigError, DataFormatError
from visionfm.reports.summary import summary_from_report

if TYPE_CHECKING:
    from visionfm.config import EvaluateConfig, FinetuneConfig

__all__ = [
    "FinetuneModel",
    "ORIGINAL_CHECKPOINT",
    "benchmark_of",
    "resolve_classes",
    "param_groups_lrd",
    "build_train_transform",
    "predict_probs",
    "metrics_for",
    "original_finetune_checkpoint",
    "load_finetuned",
    "run_finetune",
    "run_evaluate",
]

log = logging.getLogger("visionfm.finetune")

#: the original's fine-tuned checkpoint file name (reference §5.8), written beside ours
ORIGINAL_CHECKPOINT = "checkpoint_best_finetune.pth"


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
        if getattr(encoder, "masked_embed", None) is not None:
            encoder.masked_embed.requires_grad_(False)  # no masks when fine-tuning (the original had no token)
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


def benchmark_of(root: str | Path, task: str = "") -> str | None:
    """The RETFound benchmark whose class order the original script would have used for ``root``.

    The original tested substrings of the whole data path in this order (PAPILA, Glaucoma_fundus,
    Retina, OCTID, JSIEC, IDRiD, otherwise the 5-grade DR order of MESSIDOR2/APTOS2019). Here only the
    data folder's own name is tested, then ``--task`` (the FT-README's tasks start with the benchmark),
    and the DR order needs its name too: a folder that names no benchmark gets ``None``."""
    from visionfm.data.layouts import RETFOUND_CLASS_ORDERS

    for text in (Path(root).resolve().name, task or ""):
        for name in RETFOUND_CLASS_ORDERS:
            if name in text:
                return name
    return None


def _class_folders(root: Path) -> set[str]:
    from visionfm.data.layouts.imagefolder import available_splits

    names: set[str] = set()
    for split in available_splits(root):
        names.update(d.name for d in (root / split).iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataFormatError("no class folders found; expected <split>/<class>/<images>", root)
    return names


def resolve_classes(root: str | Path, class_order: str | None, preset: str | None, task: str = "") -> list[str]:
    """The label order: an explicit list, a benchmark preset, ``auto`` (the benchmark's order when the data
    folder or ``task`` names one and its class folders are that benchmark's, else alphabetical) or
    alphabetical (``None`` / ``alphabetical``) over the class folders of every split."""
    from visionfm.data.layouts import retfound_class_order

    if class_order and preset:
        raise ConfigError("give --class_order or --class_order_preset, not both")
    if class_order:
        return [c.strip() for c in class_order.split(",") if c.strip()]
    if preset and preset not in ("auto", "alphabetical"):
        return retfound_class_order(preset)
    root = Path(root)
    folders = _class_folders(root)
    if preset == "auto":
        bench = benchmark_of(root, task)
        if bench is None:
            log.info("class order: alphabetical (neither the data folder's name nor --task names a RETFound "
                     "benchmark)")
        elif set(retfound_class_order(bench)) != folders:
            log.warning("class order: alphabetical; %s names the %s benchmark but its class folders are not "
                        "that benchmark's (%s)", root, bench, ", ".join(retfound_class_order(bench)))
        else:
            log.info("class order: the original's %s order", bench)
            return retfound_class_order(bench)
    return sorted(folders)


def build_train_transform(opts: FinetuneConfig):
    """RandomResizedCrop → H/V flips → [RandAugment] → ToTensor → Normalize → [RandomErasing] (``opts``
    resolved: see :meth:`~visionfm.config.FinetuneConfig.resolved`)."""
    from torchvision import transforms as T

    from visionfm.data.modalities import get_stats

    mean, std = get_stats(opts.modality)
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    if opts.crop_interpolation not in interp:
        raise ConfigError(f"--crop_interpolation {opts.crop_interpolation!r}: expected bilinear or bicubic")
    steps: list[Any] = [
        T.RandomResizedCrop(opts.input_size, scale=(opts.min_crop_scale, 1.0),
                            interpolation=interp[opts.crop_interpolation]),
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
                     encoder_lr_scale: float, decay_all: bool = False) -> list[dict[str, Any]]:
    """AdamW groups, each with its ``lr_scale``: encoder layer ``i`` gets ``encoder_lr_scale ·
    layer_decay^(depth+1-i)``, the head 1. Without ``decay_all``, biases, norms (1-d tensors), position
    embedding and tokens get no weight decay. With ``layer_decay == 1`` and ``decay_all`` these are the
    original's two groups, encoder then head."""
    depth = int(model.encoder.depth)  # type: ignore[arg-type]
    no_decay_names = set(getattr(model.encoder, "no_weight_decay", lambda: set())())
    groups: dict[str, dict[str, Any]] = {}
    for prefix, module in (("encoder", model.encoder), ("head", model.head)):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = not decay_all and (p.ndim <= 1 or name in no_decay_names or name.endswith(".bias"))
            key, scale = prefix, 1.0
            if prefix == "encoder":
                scale = encoder_lr_scale
                if layer_decay != 1.0:
                    lid = _layer_id(name, depth)
                    scale *= layer_decay ** (depth + 1 - lid)
                    key = f"encoder_{lid}"
            if not decay_all:
                key += "_no_decay" if no_decay else "_decay"
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


def _cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (optimizer states hold device tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def original_finetune_checkpoint(model: FinetuneModel, epoch: int, optimizer: Any, scheduler: Any,
                                 best_auc: float | None, meta: dict[str, Any]) -> dict[str, Any]:
    """The original's ``checkpoint_best_finetune.pth`` content (reference §5.8): ``epoch`` (selected epoch
    + 1), ``classifier_state_dict`` (ClsHead names with DDP's ``module.``), ``visionfm_state_dict`` (bare
    ViT keys, no ``masked_embed``), ``optimizer``, ``scheduler`` (``None`` for the per-iteration
    schedule), ``best_auc``; plus ``visionfm`` (architecture, pooling, classes), which the original
    ignores and ``evaluate`` reads."""
    from visionfm.models.heads.official import to_official

    encoder = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items() if k != "masked_embed"}
    head = to_official("cls", {k: v.detach().cpu() for k, v in model.head.state_dict().items()})
    return {"epoch": int(epoch) + 1, "classifier_state_dict": head, "visionfm_state_dict": encoder,
            "optimizer": _cpu(optimizer.state_dict()),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "best_auc": None if best_auc is None else float(best_auc), "visionfm": dict(meta)}


def _from_original_pth(p: Path, device: torch.device,
                       opts: FinetuneConfig | EvaluateConfig | None) -> tuple[FinetuneModel, dict[str, Any]]:
    """A :class:`FinetuneModel` from a ``checkpoint_best_finetune.pth`` (the original's or ours): encoder
    from ``visionfm_state_dict``, ClsHead from ``classifier_state_dict`` (``module.`` stripped). Outputs
    and head width come from the head's tensors; architecture and patch size from the encoder's (given
    flags are checks); pooling and classes from our ``visionfm`` entry, else the flags."""
    from visionfm import load_encoder
    from visionfm.io import load_checkpoint_file
    from visionfm.models.heads.official import from_official

    obj, _ = load_checkpoint_file(p)
    if not isinstance(obj, dict) or not isinstance(obj.get("visionfm_state_dict"), dict):
        keys = ", ".join(sorted(map(str, obj))) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{p}: not a fine-tuned checkpoint (expected 'visionfm_state_dict' and "
                              f"'classifier_state_dict'; found {keys})")
    raw_head = obj.get("classifier_state_dict")
    if not isinstance(raw_head, dict) or not raw_head:
        raise CheckpointError(f"{p}: no 'classifier_state_dict', so the fine-tuned head is missing (the original "
                              "went on with a random head; visionfm refuses)")
    head_sd = from_official("cls", raw_head)
    linear = sorted((int(k.split(".")[1]), v) for k, v in head_sd.items()
                    if k.startswith("classifier.") and k.endswith(".weight") and v.ndim == 2)
    if "channel_bn.weight" not in head_sd or len(linear) != 3:
        raise CheckpointError(f"{p}: 'classifier_state_dict' is not a 3-layer ClsHead (keys: "
                              f"{', '.join(sorted(head_sd)[:6])} ...)")
    n_out, in_dim = int(linear[-1][1].shape[0]), int(head_sd["channel_bn.weight"].shape[0])
    want = getattr(opts, "num_labels", None)
    if want and int(want) != n_out:
        raise ConfigError(f"--num_labels {want}, but the head in {p} has {n_out} outputs")
    meta = obj.get("visionfm") if isinstance(obj.get("visionfm"), dict) else {}
    size = int(meta.get("input_size") or getattr(opts, "input_size", 224))
    key = getattr(opts, "checkpoint_key", None)
    key = key if key and isinstance(obj.get(key), dict) else "visionfm_state_dict"
    enc = load_encoder(p, getattr(opts, "arch", None) or meta.get("arch"), key,
                       getattr(opts, "patch_size", None) or meta.get("patch_size"), size)
    n_last = int(meta.get("n_last_blocks", getattr(opts, "n_last_blocks", 4)))
    avg = int(meta.get("avgpool_patchtokens", getattr(opts, "avgpool_patchtokens", 0)))
    bn_m = float(meta.get("bn_momentum", getattr(opts, "bn_momentum", 0.1)))
    model = FinetuneModel(enc, n_out, n_last, avg, "cls", bn_m)
    if model.in_dim != in_dim:
        raise CheckpointError(f"{p}: the head takes {in_dim} features, but --n_last_blocks {n_last} "
                              f"--avgpool_patchtokens {avg} on {enc.load_report.arch} give {model.in_dim}")
    try:
        model.head.load_state_dict(head_sd)
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: 'classifier_state_dict' does not fit ClsHead({in_dim}, {n_out}): "
                              f"{str(exc).splitlines()[0]}") from None
    info = {"format": "original-finetune-pth", "task": "finetune", "epoch": obj.get("epoch"),
            "arch": enc.load_report.arch, "patch_size": int(enc.patch_size), "input_size": size,
            "n_last_blocks": n_last, "avgpool_patchtokens": avg, "head": "cls", "bn_momentum": bn_m,
            "num_outputs": n_out, "binary_logit": n_out == 1, "class_names": meta.get("class_names"),
            "modality": meta.get("modality") or getattr(opts, "modality", None), "interpolation": "bicubic"}
    return model.to(device), info


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
    or a ``checkpoint_best_finetune.pth``, the original's or ours (safe loader; see
    :func:`_from_original_pth`)."""
    from visionfm.engine.trainer import load_decoder_checkpoint
    from visionfm.models import build_encoder

    p = Path(path)
    if p.is_dir():
        if not is_model_folder(p):
            raise CheckpointError(f"{p}: a folder without config.json (expected a model folder such as <run>/model)")
        return _from_model_folder(p, device)
    if p.suffix in (".pth", ".pt"):
        return _from_original_pth(p, device, opts)
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


class _OriginalLogKeys:
    """The run logger, adding the original's ``train_lr`` to each epoch line (``val_loss``, ``val_auc`` and
    ``val_aupr`` come from the evaluation itself)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def log(self, stats: dict[str, Any], step: int | None = None) -> None:
        self.inner.log({**stats, "train_lr": stats["lr"]} if "lr" in stats else stats, step=step)

    def rewind(self, entries: Any) -> None:
        self.inner.rewind(entries, write=self.log)


def _mean_nll(probs: np.ndarray, y: np.ndarray, binary_logit: bool) -> float:
    """Mean cross-entropy (BCE for one sigmoid output) of predicted probabilities: the validation loss."""
    eps = 1e-12
    if binary_logit:
        p = np.clip(probs.reshape(-1), eps, 1 - eps)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))


def _save_npy(array: np.ndarray, path: Path) -> None:
    from visionfm.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def original_arrays(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``best.npy`` / ``target.npy`` as the original wrote them: probabilities ``[N, C]`` (``[N, 1]`` for one
    sigmoid output), float32, and labels ``[N, 1]`` int64."""
    p = probs.reshape(len(probs), -1).astype(np.float32)
    return p, y.reshape(-1, 1).astype(np.int64)


def run_finetune(opts: FinetuneConfig) -> int:
    """``visionfm finetune``: see the module docstring and docs/forecasting-and-finetuning.md."""
    import yaml
    from torch.utils.data import DataLoader, DistributedSampler

    from visionfm import load_encoder
    from visionfm.engine.distributed import command_session
    from visionfm.engine.logging import RunLogger
    from visionfm.io import save_json_atomic, save_text_atomic, save_torch_atomic

    opts = opts.resolved()
    if not opts.pretrained_weights:
        raise ConfigError("--pretrained_weights is required (a weights file, or 'random' for a random encoder)")
    if opts.accum_iter < 1:
        raise ConfigError("--accum_iter must be >= 1")
    with command_session(opts.device, seed=opts.seed) as env:
        run_dir = opts.run_dir()
        if env.is_main:
            log.info("fine-tuning %s (%s recipe) on %s", opts.task or opts.run_name(), opts.recipe, opts.data_path)
        classes = resolve_classes(opts.data_path, opts.class_order, opts.class_order_preset, opts.task)
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
        groups = param_groups_lrd(model, opts.weight_decay, opts.layer_decay, opts.encoder_lr_scale,
                                  opts.weight_decay_all)
        for grp in groups:  # per-epoch schedules start from each group's own lr (warmup_cosine sets it per step)
            grp["lr"] = base_lr * grp["lr_scale"]
        sampler = DistributedSampler(train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=opts.seed, drop_last=mixup_on) if env.world_size > 1 else None
        per_rank = len(sampler) if sampler is not None else len(train_ds)
        rest = per_rank % opts.batch_size_per_gpu
        drop_last = per_rank > opts.batch_size_per_gpu and (
            bool(opts.drop_last) or rest == 1 or (mixup_on and rest % 2 == 1))
        if drop_last and not opts.drop_last and env.is_main:
            log.info("dropping the last training batch of each epoch (%d sample(s): %s)", rest,
                     "BatchNorm cannot train on one sample" if rest == 1 else "mixup needs an even batch")
        g = torch.Generator()
        loader = DataLoader(train_ds, batch_size=opts.batch_size_per_gpu, shuffle=sampler is None, sampler=sampler,
                            num_workers=opts.num_workers, collate_fn=_collate, drop_last=drop_last, generator=g,
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
        resume_from, _ = start_point(run_dir, None, opts.resume, overwrite=opts.overwrite, named=bool(opts.name),
                                     is_main=env.is_main)  # before anything is written there
        run_logger = RunLogger(run_dir, enabled=env.is_main)
        arch = model.encoder.load_report.arch if hasattr(model.encoder, "load_report") else opts.arch
        meta = {"task": "finetune", "recipe": opts.recipe, "arch": arch, "patch_size": int(model.encoder.patch_size),
                "input_size": opts.input_size, "n_last_blocks": opts.n_last_blocks,
                "avgpool_patchtokens": opts.avgpool_patchtokens, "head": opts.head, "bn_momentum": opts.bn_momentum,
                "num_outputs": n_out, "binary_logit": binary_logit, "class_names": classes,
                "modality": opts.modality, "selection_split": sel_split, "selection_key": "auroc",
                "pretrained_weights": str(opts.pretrained_weights)}
        cfg = FitConfig(epochs=opts.epochs, lr=base_lr, batch_size=opts.batch_size_per_gpu, optimizer="adamw",
                        weight_decay=opts.weight_decay, scheduler=opts.scheduler, warmup_epochs=opts.warmup_epochs,
                        min_lr=opts.min_lr, accum_iter=opts.accum_iter, clip_grad=opts.clip_grad, amp=bool(opts.amp),
                        val_freq=opts.val_freq, seed=opts.seed)
        identity = {**{k: v for k, v in meta.items() if k != "selection_split"}, "data": str(opts.data_path),
                    "load_from": str(opts.load_from or ""), "augment": {k: getattr(opts, k) for k in (
                        "min_crop_scale", "crop_interpolation", "randaug", "reprob", "mixup", "cutmix", "mixup_prob",
                        "mixup_switch_prob", "smoothing", "drop_path", "layer_decay", "encoder_lr_scale",
                        "weight_decay_all", "drop_last")}}
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_text_atomic(yaml.safe_dump(opts.to_dict(), sort_keys=True), run_dir / "config.yaml")

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

        last_eval: dict[str, np.ndarray] = {}

        def evaluate(m: nn.Module) -> dict[str, Any]:
            probs, yv, _ = predict_probs(m, sel_ds, env, opts.batch_size_per_gpu, opts.num_workers, binary_logit,
                                         opts.amp)
            last_eval.update(probs=probs, y=yv)
            out = metrics_for(yv, probs, classes, binary_logit)
            # the original's log keys (val_auc, val_aupr, val_loss in log.txt)
            return {**out, "auc": out["auroc"], "aupr": out["aupr"], "loss": _mean_nll(probs, yv, binary_logit)}

        def on_best(epoch: int, metrics: dict[str, Any], optimizer: Any, scheduler: Any) -> None:
            """The original's files of the selected epoch (rank 0, atomically)."""
            best, target = original_arrays(last_eval["probs"], last_eval["y"])
            if opts.head == "cls":
                save_torch_atomic(original_finetune_checkpoint(model, epoch, optimizer, scheduler, metrics["auc"],
                                                               {k: meta[k] for k in _ORIGINAL_META}),
                                  run_dir / ORIGINAL_CHECKPOINT)
            _save_npy(best, run_dir / "best.npy")
            _save_npy(target, run_dir / "target.npy")

        result = fit(model, batches, step, evaluate, selection_key="auroc", higher_is_better=True, run_dir=run_dir,
                     cfg=cfg, env=env, run_logger=_OriginalLogKeys(run_logger), meta=meta, identity=identity,
                     param_groups=groups, resume_from=resume_from, log_prefix=f"{sel_split}_",
                     keep_last_if_never_selected=True, on_best=on_best)
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
        folder = None
        if env.is_main:
            folder = _package(opts, run_dir, best_model, info, metrics, sel_split)
        if env.is_main:
            run_logger.log({"final": summary})
            run_logger.close()
            aupr = result.best_metrics.get("aupr")
            print("Finetuning of VisionFM completed\nBest val auc: {}; accompanying aupr: {}".format(
                "n/a" if best_value is None else f"{best_value:.4f}", "n/a" if aupr is None else f"{aupr:.4f}"))
            print(summary_from_report("finetune", run_dir / "report", metrics, selection={
                "metric": "auroc", "value": best_value, "epoch": info.get("epoch"), "epochs": opts.epochs,
                "split": sel_split, "higher_is_better": True},
                paths={"model": folder, "checkpoint": run_dir / "checkpoint_best_finetune.pth",
                       "log": run_dir / "log.txt"}))
        return 0


# what the original-format checkpoint records beside the weights, for ``evaluate``
_ORIGINAL_META = ("arch", "patch_size", "input_size", "n_last_blocks", "avgpool_patchtokens", "bn_momentum",
                  "class_names", "modality", "binary_logit", "recipe")


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
    """``visionfm evaluate``: a fine-tuned checkpoint on ``<data_path>/<split>``; prints the original's
    ``AUC: ..., AUPR: ...`` line and writes its ``best.npy`` / ``target.npy`` beside our report."""
    from visionfm.data.layouts import ImageFolderDataset
    from visionfm.engine.distributed import command_session
    from visionfm.engine.features import eval_transform
    from visionfm.io import save_json_atomic

    with command_session(opts.device) as env:
        source = getattr(opts, "model", None) or opts.load_from
        if getattr(opts, "model", None) and opts.load_from:
            raise ConfigError("give --model (a model folder) or --pretrained_weights (a checkpoint), not both")
        if not source:
            raise ConfigError("--pretrained_weights CHECKPOINT (or --model FOLDER) is required")
        if getattr(opts, "model", None) and not is_model_folder(source):
            raise ConfigError(f"--model {source}: not a model folder (config.json + model.safetensors); "
                              "use --pretrained_weights for checkpoint files")
        model, info = load_finetuned(source, env.device, opts)
        if opts.num_labels and int(opts.num_labels) != int(info.get("num_outputs", 0)):
            raise ConfigError(f"--num_labels {opts.num_labels}, but {source} has {info.get('num_outputs')} outputs")
        classes = info.get("class_names")
        if opts.class_order or opts.class_order_preset or not classes:
            classes = resolve_classes(opts.data_path, opts.class_order, opts.class_order_preset or
                                      (None if classes else "auto"), opts.task)
        if len(classes) != max(int(info.get("num_outputs", 0)), 2):
            raise ConfigError(f"the checkpoint has {info.get('num_outputs')} outputs but the class order has "
                              f"{len(classes)} classes ({', '.join(classes)})")
        size = int(info.get("input_size") or opts.input_size)
        modality = info.get("modality") or opts.modality
        ds = ImageFolderDataset(opts.data_path, opts.split, class_order=classes,
                                transform=eval_transform(size, modality, interpolation=info.get("interpolation",
                                                                                                "bicubic")))
        run_dir = opts.run_dir()
        if env.is_main:
            log.info("evaluating %s on %s/%s (%s)", source, opts.data_path, opts.split, opts.task or opts.run_name())
        metrics = evaluate_split(model, info, ds, opts, env, run_dir / "report", f"{opts.split} ({source})")
        if env.is_main:
            best, target = original_arrays(np.load(run_dir / "report" / "probs.npy"),
                                           np.load(run_dir / "report" / "target.npy"))
            _save_npy(best, run_dir / "best.npy")
            _save_npy(target, run_dir / "target.npy")
            save_json_atomic({"checkpoint": str(source), "split": opts.split, "metrics": metrics},
                             run_dir / "evaluate.json")
            auc = metrics.get("auroc_macro", metrics.get("auroc"))
            aupr = metrics.get("aupr_macro", metrics.get("aupr"))
            print(f"AUC: {auc}, AUPR: {aupr}")
            print(summary_from_report("evaluate", run_dir / "report", metrics,
                                      selection={"metric": "auroc", "epoch": info.get("epoch")},
                                      paths={"checkpoint": source, "predictions": run_dir / "best.npy"}))
        return 0
