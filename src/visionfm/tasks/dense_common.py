"""One training loop for the dense decoders (segmentation and landmarks) on a frozen encoder.

What is shared here, written once for both tasks (reference §5.4, §5.5):

* command-line flags (:func:`add_dense_arguments`, the original's names and defaults);
* :class:`FrozenFeatures` — the patch tokens of 4 blocks (``dense_block_ids(depth)`` → [3,5,7,11] /
  [5,11,17,23], or ``--block_ids``) under ``torch.no_grad()`` and autocast (bf16 on CUDA);
* two sources of batches with the same output ``(features [B, 4, P, D], image, target, orig_hw, index)``:
  :class:`CachedSplit` (features computed once, kept in memory as float16 — used with
  ``--no_augment``, where every epoch would recompute identical features) and :class:`LiveSplit`
  (random joint augmentation, encoder run on every batch);
* :func:`fit` — AdamW (wd 0.05, no batch scaling, as the original), a learning-rate schedule that
  is stepped once per epoch (cosine by default, or the original's ``StepLR(20, 0.5)``, which the
  original created but never stepped, item 26), validation every ``val_freq`` epochs on the whole
  split with per-image metrics, best/last checkpoints in safetensors + JSON through
  :mod:`visionfm.engine.decoder_trainer`, and one ``log.txt`` line per epoch (the original only
  logged improving epochs, item 25);
* :func:`run_dense` — the command: data, encoder, head, training, then the best checkpoint on the
  test split with predictions, overlays, ``metrics.json`` and ``report.html``.

The task-specific parts (loss, meter, decoding, output files) live in a :class:`DenseTask`
(:mod:`visionfm.tasks.segmentation`, :mod:`visionfm.tasks.landmark`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from visionfm.engine.decoder_trainer import epoch_mean_loss, selection_split
from visionfm.errors import ConfigError, DataFormatError

__all__ = [
    "ARCH_CHOICES",
    "DenseConfig",
    "DenseTask",
    "DenseSamples",
    "DenseDecoder",
    "FrozenFeatures",
    "CachedSplit",
    "LiveSplit",
    "add_dense_arguments",
    "build_head",
    "evaluate",
    "fit",
    "has_split",
    "run_dense",
]

log = logging.getLogger("visionfm.dense")

ARCH_CHOICES = ["vit_tiny", "vit_small", "vit_base", "vit_large"]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------


def add_dense_arguments(p: Any, *, modality: str, num_labels: int, output_dir: str, data_path: str,
                        labels_help: str) -> None:
    """The flags of ``train_seg_decoder.py`` / ``train_landmark_decoder.py`` plus visionfm's extras."""
    p.add_argument("--name", required=True, help="run name; outputs go to <output_dir>/<name>")
    p.add_argument("--arch", default="vit_base", choices=ARCH_CHOICES)
    p.add_argument("--input_size", type=int, default=224, help="side S of the square input (multiple of 16)")
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--pretrained_weights", default="", help="encoder weights file, or 'random'")
    p.add_argument("--checkpoint_key", default="teacher")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.001, help="AdamW learning rate (not scaled by batch size)")
    p.add_argument("--batch_size_per_gpu", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--val_freq", type=int, default=1)
    p.add_argument("--data_path", default=data_path, help="folder of dataset folders (<dataset>/<split>/images)")
    p.add_argument("--modality", default=modality, help="normalisation statistics to use")
    p.add_argument("--head_type", default="unetr", choices=["unetr", "linear"])
    p.add_argument("--output_dir", default=output_dir)
    p.add_argument("--num_labels", type=int, default=num_labels, help=labels_help)
    p.add_argument("--load_from", default=None, help="decoder checkpoint to initialise the head from")
    # visionfm extras
    p.add_argument("--block_ids", type=int, nargs=4, default=None,
                   help="the 4 encoder blocks feeding the decoder (default [3,5,7,11] / [5,11,17,23])")
    p.add_argument("--no_augment", action="store_true",
                   help="no random augmentation: features are computed once and cached (much faster)")
    p.add_argument("--scheduler", default="cosine", choices=["cosine", "step", "constant"],
                   help="per-epoch LR schedule; 'step' = StepLR(20, 0.5), 'constant' = the original's behaviour")
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--n_overlays", type=int, default=8, help="overlay figures of test images in the report")
    p.add_argument("--cache_max_gb", type=float, default=8.0,
                   help="with --no_augment, fall back to live features when the cache would exceed this")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_distributed_arguments()
    p.add_config_argument()


@dataclass
class DenseConfig:
    """Training settings of :func:`fit` (one process)."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    scheduler: str = "cosine"
    val_freq: int = 1
    seed: int = 0
    num_workers: int = 4
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The task interface
# --------------------------------------------------------------------------------------------


class DenseTask(Protocol):
    """What differs between segmentation and landmarks (implemented in the task modules)."""

    name: str
    selection_key: str
    higher_is_better: bool
    num_outputs: int

    def dataset(self, root: str, split: str, train: bool) -> "DenseSamples":
        """The split wrapped in :class:`DenseSamples` with the train or eval joint transform."""

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss of float logits ``[B, C, S, S]`` against a batch of targets."""

    def new_meter(self) -> Any:
        """An empty metric meter (``update`` by :meth:`update`, then ``all_reduce().compute()``)."""

    def update(self, meter: Any, logits: torch.Tensor, target: torch.Tensor, orig_hw: torch.Tensor) -> None:
        """Add one batch to ``meter``."""

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The few scalars logged every epoch."""

    def writer(self, out_dir: Path, names: Sequence[str], n_overlays: int) -> Any:
        """An object with ``add(logits, images, targets, orig_hw, index)`` and ``finish() -> [(caption, png)]``."""


class DenseSamples(Dataset):  # type: ignore[type-arg]
    """A reader (``SegmentationDataset`` / ``LandmarkDataset``) with a joint transform.

    Returns ``(image [3, S, S], target, orig_hw int64 [2], index)``; ``orig_hw`` is the size of the
    file before resizing (for errors at the original resolution and for saving predictions).
    """

    def __init__(self, base: Any, transform: Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]) -> None:
        if getattr(base, "joint_transform", None) is not None:
            raise ConfigError("pass the reader without joint_transform; DenseSamples applies it")
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    @property
    def names(self) -> list[str]:
        return [s.rel_path for s in self.base.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        image, target, _ = self.base[index]
        hw = torch.tensor([image.height, image.width], dtype=torch.int64)
        img, tgt = self.transform(image, target)
        return img, tgt, hw, index


def has_split(root: str | Path, split: str) -> bool:
    """True when ``root`` (one dataset or a folder of datasets) has ``<split>/images``."""
    root = Path(root)
    if (root / split / "images").is_dir():
        return True
    return root.is_dir() and any((d / split / "images").is_dir() for d in root.iterdir() if d.is_dir())


# --------------------------------------------------------------------------------------------
# Features and batches
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class FrozenFeatures:
    """Patch tokens ``[B, 4, P, D]`` of four blocks of a frozen encoder (no gradients, eval mode).

    Args:
        encoder: a :class:`visionfm.models.VisionFMEncoder` (any input size: the position
            embedding is interpolated).
        block_ids: four block indices, shallowest first.
    """

    def __init__(self, encoder: nn.Module, block_ids: Sequence[int]) -> None:
        ids = [int(i) for i in block_ids]
        depth = int(encoder.depth)  # type: ignore[arg-type]
        if len(ids) != 4 or any(not -depth <= i < depth for i in ids):
            raise ConfigError(f"block_ids must be 4 indices in [0, {depth - 1}], got {ids}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.block_ids = sorted(i % depth for i in ids)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with _autocast(images.device):
            outs = self.encoder.forward_intermediates_tokens(images, self.block_ids, norm=True)  # type: ignore[operator]
        return torch.stack([o[:, 1:] for o in outs], 1)


def _shard(order: Any, rank: int, world: int, pad: bool) -> list[int]:
    """This rank's part of ``order`` (an int ``n`` means ``range(n)``), strided.

    ``pad``: wrap around so that every rank gets ``ceil(n / world)`` items (equal step counts in DDP).
    """
    idx = list(range(order)) if isinstance(order, int) else list(order)
    n = len(idx)
    if pad and world > 1:
        per = math.ceil(n / world)
        idx = idx + idx[: per * world - n]
    return idx[rank::world]


def _loader(ds: Dataset, batch: int, workers: int, shuffle: bool, seed: int, drop_last: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
                      generator=g, persistent_workers=False, pin_memory=torch.cuda.is_available())


class CachedSplit:
    """A split whose frozen features were computed once (eval transform), kept on the CPU in float16."""

    def __init__(self, data: DenseSamples, extractor: FrozenFeatures, batch: int, workers: int, rank: int = 0,
                 world: int = 1, pad: bool = False) -> None:
        from torch.utils.data import Subset

        self.names = data.names
        sub = Subset(data, _shard(len(data), rank, world, pad))
        feats, images, targets, hws, idxs = [], [], [], [], []
        dev = extractor.device
        for img, tgt, hw, idx in _loader(sub, batch, workers, False, 0):
            feats.append(extractor(img.to(dev, non_blocking=True)).to("cpu", torch.float16))
            images.append(img)
            targets.append(tgt)
            hws.append(hw)
            idxs.append(idx)
        self.feats = torch.cat(feats)
        self.images = torch.cat(images)
        self.targets = torch.cat(targets)
        self.orig_hw = torch.cat(hws)
        self.index = torch.cat(idxs)

    def __len__(self) -> int:
        return len(self.index)

    def batches(self, batch: int, shuffle: bool, seed: int, epoch: int, device: torch.device) -> Iterator[Batch]:
        if shuffle:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 10_007 + epoch))
        else:
            order = torch.arange(len(self))
        parts = list(torch.split(order, batch))
        if shuffle and len(parts) > 1 and len(parts[-1]) == 1:  # BatchNorm cannot train on one sample
            parts = parts[:-1]
        for sel in parts:
            yield (self.feats[sel].to(device).float(), self.images[sel].to(device), self.targets[sel].to(device),
                   self.orig_hw[sel], self.index[sel])


class LiveSplit:
    """A split read from disk every epoch (random joint augmentation when its transform has any)."""

    def __init__(self, data: DenseSamples, extractor: FrozenFeatures, workers: int, rank: int = 0, world: int = 1,
                 train: bool = False) -> None:
        self.data = data
        self.names = data.names
        self.extractor = extractor
        self.workers = workers
        self.rank, self.world, self.train = rank, world, train

    def __len__(self) -> int:
        return len(_shard(len(self.data), self.rank, self.world, self.train))

    def batches(self, batch: int, shuffle: bool, seed: int, epoch: int, device: torch.device) -> Iterator[Batch]:
        from torch.utils.data import Subset

        n = len(self.data)
        order = range(n)
        if shuffle:
            order = [int(i) for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10_007 + epoch))]
        idx = _shard(order, self.rank, self.world, self.train)
        drop = shuffle and len(idx) % batch == 1 and len(idx) > 1  # BatchNorm cannot train on one sample
        for img, tgt, hw, index in _loader(Subset(self.data, idx), batch, self.workers, False, seed + epoch, drop):
            img = img.to(device, non_blocking=True)
            yield self.extractor(img).float(), img, tgt.to(device, non_blocking=True), hw, index


# --------------------------------------------------------------------------------------------
# Model, loop, evaluation
# --------------------------------------------------------------------------------------------


class DenseDecoder(nn.Module):
    """Adapter so that one module call takes ``(features [B, 4, P, D], image [B, 3, S, S])``."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.head(list(feats.unbind(1)), image)


def build_head(head_type: str, embed_dim: int, num_outputs: int, patch_size: int) -> nn.Module:
    """``unetr`` (:class:`~visionfm.models.heads.unetr.UnetrHead`) or ``linear`` (``LinearSegHead``)."""
    if head_type == "unetr":
        from visionfm.models.heads.unetr import UnetrHead

        return UnetrHead(embed_dim, num_outputs, patch_size=patch_size)
    if head_type == "linear":
        from visionfm.models.heads.linear_seg import LinearSegHead

        return LinearSegHead(embed_dim, num_outputs, patch_size=patch_size)
    raise ConfigError(f"unknown head_type {head_type!r}; expected unetr or linear")


def _scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int) -> Any:
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=0.0)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"unknown scheduler {name!r}; expected cosine, step or constant")


@torch.no_grad()
def evaluate(task: DenseTask, model: nn.Module, split: Any, batch: int, device: torch.device,
             writer: Any | None = None) -> dict[str, Any]:
    """Metrics over the whole split (per image, merged across ranks); ``writer`` receives every batch."""
    was_training = model.training
    model.eval()
    meter = task.new_meter()
    for feats, img, tgt, hw, idx in split.batches(batch, False, 0, 0, device):
        with _autocast(device):
            logits = model(feats, img)
        logits = logits.float()
        task.update(meter, logits, tgt, hw)
        if writer is not None:
            writer.add(logits, img, tgt, hw, idx)
    model.train(was_training)
    return meter.all_reduce().compute()


@dataclass
class FitResult:
    best_epoch: int
    best_value: float | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]


def fit(task: DenseTask, model: nn.Module, train: Any, val: Any, cfg: DenseConfig, env: Any, run_dir: Path,
        run_logger: Any | None = None, meta: dict[str, Any] | None = None) -> FitResult:
    """Train ``model`` (the decoder only) on ``train``; select on ``val``; checkpoints in ``run_dir``."""
    from visionfm.engine.decoder_trainer import save_decoder_checkpoint

    device = env.device
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg.scheduler, cfg.epochs)
    net: nn.Module = model
    if env.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    meta = dict(meta or {})
    record = {"selection_key": task.selection_key, "higher_is_better": task.higher_is_better,
              "config": asdict(cfg), **meta}
    best_value: float | None = None
    best_epoch, best_metrics = -1, {}
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        lr = optimizer.param_groups[0]["lr"]
        total, count = 0.0, 0
        for feats, img, tgt, _, _ in train.batches(cfg.batch_size, True, cfg.seed, epoch, device):
            with _autocast(device):
                logits = net(feats, img)
            loss = task.loss(logits.float(), tgt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total + loss.detach() * len(img)
            count += len(img)
        scheduler.step()
        stats: dict[str, Any] = {"epoch": epoch, "train_loss": epoch_mean_loss(total, count, epoch), "lr": lr}
        if (epoch + 1) % max(cfg.val_freq, 1) == 0 or epoch == cfg.epochs - 1:
            metrics = evaluate(task, model, val, cfg.batch_size, device)
            value = metrics.get(task.selection_key)
            stats.update({f"val_{k}": v for k, v in task.summary(metrics).items()})
            improved = value is not None and (
                best_value is None or (value >= best_value if task.higher_is_better else value <= best_value))
            if improved:
                best_value, best_epoch, best_metrics = float(value), epoch, metrics
                if env.is_main:
                    save_decoder_checkpoint(run_dir / "checkpoint_best", model,
                                            {**record, "epoch": epoch, "best_value": best_value,
                                             "val_metrics": task.summary(metrics)})
            stats["improved"] = bool(improved)
        stats.update({"best_epoch": best_epoch, f"best_{task.selection_key}": best_value,
                      "epoch_time_s": round(time.perf_counter() - t0, 3)})
        history.append(stats)
        if env.is_main:
            save_decoder_checkpoint(run_dir / "checkpoint_last", model,
                                    {**record, "epoch": epoch, "best_value": best_value, "best_epoch": best_epoch},
                                    optimizer, scheduler)
            if run_logger is not None:
                run_logger.log(stats, step=epoch)
            log.info("epoch %d/%d loss %.4f %s=%s", epoch + 1, cfg.epochs, stats["train_loss"],
                     task.selection_key, stats.get(f"val_{task.selection_key}"))
    return FitResult(best_epoch, best_value, best_metrics, history)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _cache_bytes(n: int, size: int, patch: int, dim: int) -> float:
    return n * (4 * (size // patch) ** 2 * dim * 2 + 3 * size * size * 4)


def run_dense(args: Any, make_task: Callable[[Any], DenseTask]) -> int:
    """``visionfm train-seg`` / ``train-landmark``: train, select, then report on the test split."""
    from visionfm import load_encoder
    from visionfm.engine.decoder_trainer import load_decoder_checkpoint
    from visionfm.engine.distributed import cleanup_distributed, init_distributed, seed_everything
    from visionfm.engine.logging import RunLogger, setup_logging
    from visionfm.models import dense_block_ids
    from visionfm.reports import write_report

    env = init_distributed(getattr(args, "device", "auto"))
    setup_logging(env.is_main)
    try:
        seed_everything(args.seed)
        if args.input_size % args.patch_size or args.input_size % 16:
            raise ConfigError(f"--input_size {args.input_size} must be a multiple of 16 (the decoders up-sample x16)")
        if not args.pretrained_weights:
            raise ConfigError("--pretrained_weights is required (a weights file, or 'random' for a random encoder)")
        task = make_task(args)
        run_dir = Path(args.output_dir) / args.name
        encoder = load_encoder(args.pretrained_weights, args.arch, args.checkpoint_key, args.patch_size,
                               args.input_size).to(env.device)
        block_ids = list(args.block_ids) if args.block_ids else dense_block_ids(encoder.depth)
        extractor = FrozenFeatures(encoder, block_ids)
        root = args.data_path
        for split in ("training", "test"):
            if not has_split(root, split):
                raise DataFormatError(f"no '{split}' split (<dataset>/{split}/images) under {root}")
        _, sel_split = selection_split("val" if has_split(root, "val") else None, "test", warn=env.is_main)
        augment = not args.no_augment
        train_data = task.dataset(root, "training", train=augment)
        val_data = task.dataset(root, sel_split, train=False)
        test_data = val_data if sel_split == "test" else task.dataset(root, "test", train=False)
        w = args.num_workers
        use_cache = not augment
        if use_cache:
            need = _cache_bytes(len(train_data) + len(val_data), args.input_size, args.patch_size, encoder.embed_dim)
            if need > args.cache_max_gb * 1e9:
                log.warning("feature cache would take %.1f GB > --cache_max_gb %.1f; computing features live",
                            need / 1e9, args.cache_max_gb)
                use_cache = False
        t0 = time.perf_counter()
        if use_cache:
            train = CachedSplit(train_data, extractor, args.batch_size_per_gpu, w, env.rank, env.world_size, pad=True)
            val: Any = CachedSplit(val_data, extractor, args.batch_size_per_gpu, w, env.rank, env.world_size)
            log.info("cached frozen features of %d training and %d %s images in %.1fs", len(train_data),
                     len(val_data), sel_split, time.perf_counter() - t0)
        else:
            train = LiveSplit(train_data, extractor, w, env.rank, env.world_size, train=True)
            val = LiveSplit(val_data, extractor, w, env.rank, env.world_size)
        model = DenseDecoder(build_head(args.head_type, encoder.embed_dim, task.num_outputs, args.patch_size))
        if args.load_from:
            sd, _, _ = load_decoder_checkpoint(args.load_from)
            sd = {k if k.startswith("head.") else f"head.{k}": v for k, v in sd.items()}
            model.load_state_dict(sd)
            log.info("initialised the decoder from %s", args.load_from)
        cfg = DenseConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                          batch_size=args.batch_size_per_gpu, scheduler=args.scheduler, val_freq=args.val_freq,
                          seed=args.seed, num_workers=w)
        meta = {"task": task.name, "arch": args.arch, "pretrained_weights": str(args.pretrained_weights),
                "checkpoint_key": args.checkpoint_key, "input_size": args.input_size, "patch_size": args.patch_size,
                "block_ids": extractor.block_ids, "head_type": args.head_type, "num_outputs": task.num_outputs,
                "modality": args.modality, "augment": augment, "cached_features": use_cache,
                "selection_split": sel_split}
        run_logger = RunLogger(run_dir, enabled=env.is_main)
        run_logger.log({"run": meta})
        result = fit(task, model, train, val, cfg, env, run_dir, run_logger, meta)

        # Final evaluation of the selected weights on the test split, with outputs.
        sd, info, _ = load_decoder_checkpoint(run_dir / "checkpoint_best")
        model.load_state_dict(sd)
        if test_data is val_data:
            test = val
        elif use_cache:
            test = CachedSplit(test_data, extractor, args.batch_size_per_gpu, w, env.rank, env.world_size)
        else:
            test = LiveSplit(test_data, extractor, w, env.rank, env.world_size)
        writer = task.writer(run_dir, test_data.names, args.n_overlays if env.is_main else 0)
        metrics = evaluate(task, model, test, args.batch_size_per_gpu, env.device, writer)
        figures = writer.finish()
        if env.is_main:
            metrics["best_epoch"] = result.best_epoch
            metrics["selection"] = {"split": sel_split, "key": task.selection_key, "value": result.best_value}
            title = f"{task.name.capitalize()} decoder ({args.head_type}) — {args.arch}, test split"
            report_meta = {**meta, "run": str(run_dir), "checkpoint": str(run_dir / "checkpoint_best.safetensors"),
                           "best_epoch": result.best_epoch, "epochs": args.epochs, "data_path": str(root)}
            write_report(run_dir, title, metrics, images=figures, meta=report_meta)
            run_logger.log({"final_test": task.summary(metrics), "best_epoch": result.best_epoch,
                            "selection_split": sel_split})
            run_logger.close()
            print({"test": task.summary(metrics), "best_epoch": result.best_epoch})
        return 0
    finally:
        cleanup_distributed()
