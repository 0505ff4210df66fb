"""One training loop for the dense decoders (segmentation and landmarks) on a frozen encoder.

What is shared here, written once for both tasks (reference §5.4, §5.5):

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
  :func:`visionfm.engine.trainer.fit`, and one ``log.txt`` line per epoch (the original only
  logged improving epochs, item 25);
* :func:`run_dense` — the command: data, encoder, head, training, then the best checkpoint on the
  test split with predictions, overlays, ``metrics.json`` and ``report.html``.

The task-specific parts (loss, meter, decoding, output files) live in a :class:`DenseTask`
(:mod:`visionfm.tasks.segmentation`, :mod:`visionfm.tasks.landmark`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from visionfm.engine.trainer import FitResult, autocast, selection_split
from visionfm.errors import ConfigError, DataFormatError

if TYPE_CHECKING:
    from visionfm.config import DenseDecoderConfig

__all__ = [
    "DenseConfig",
    "DenseTask",
    "DenseSamples",
    "DenseDecoder",
    "FrozenFeatures",
    "CachedSplit",
    "LiveSplit",
    "build_head",
    "evaluate",
    "fit",
    "has_split",
    "run_dense",
    "package_dense_run",
]

log = logging.getLogger("visionfm.dense")

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


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
    amp: bool = True  # bf16 autocast on CUDA (False: fp32, as the original)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The task interface
# --------------------------------------------------------------------------------------------


class DenseTask(Protocol):
    """What the dense driver needs of a task class (:class:`~visionfm.tasks.segmentation.Segmentation`,
    :class:`~visionfm.tasks.landmark.Landmark`): reader, loss, evaluation, per-epoch summary, test outputs."""

    name: str
    selection_key: str
    higher_is_better: bool
    #: the ``best_*`` key of the original's ``checkpoint_<epoch>_linear.pth``
    original_best_key: str
    num_outputs: int

    def dataset(self, root: str, split: str, train: bool) -> DenseSamples:
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


class FrozenFeatures:
    """Patch tokens ``[B, 4, P, D]`` of four blocks of a frozen encoder (no gradients, eval mode).

    Args:
        encoder: a :class:`visionfm.models.VisionFMEncoder` (any input size: the position
            embedding is interpolated).
        block_ids: four block indices, shallowest first.
        amp: bf16 autocast on CUDA (False: fp32, as the original).
    """

    def __init__(self, encoder: nn.Module, block_ids: Sequence[int], amp: bool = True) -> None:
        ids = [int(i) for i in block_ids]
        depth = int(encoder.depth)  # type: ignore[arg-type]
        if len(ids) != 4 or any(not -depth <= i < depth for i in ids):
            raise ConfigError(f"block_ids must be 4 indices in [0, {depth - 1}], got {ids}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.block_ids = sorted(i % depth for i in ids)
        self.amp = bool(amp)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.amp):
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


#: ``--head_type`` → registered head (:mod:`visionfm.models.heads`).
DENSE_HEADS = {"unetr": "unetr", "linear": "linear_seg"}


def build_head(head_type: str, embed_dim: int, num_outputs: int, patch_size: int) -> nn.Module:
    """The ``--head_type`` decoder (``unetr``: UNETR, ``linear``: linear patch head) from the head registry."""
    from visionfm.models.heads import build_head as build

    return build(dense_head_name(head_type), **dense_head_args(embed_dim, num_outputs, patch_size))


def dense_head_name(head_type: str) -> str:
    if head_type not in DENSE_HEADS:
        raise ConfigError(f"unknown head_type {head_type!r}; expected one of {', '.join(DENSE_HEADS)}")
    return DENSE_HEADS[head_type]


def dense_head_args(embed_dim: int, num_outputs: int, patch_size: int) -> dict[str, int]:
    return {"embed_dim": int(embed_dim), "num_classes": int(num_outputs), "patch_size": int(patch_size)}


@torch.no_grad()
def evaluate(task: DenseTask, model: nn.Module, split: Any, batch: int, device: torch.device,
             writer: Any | None = None, amp: bool = True) -> dict[str, Any]:
    """Metrics over the whole split (per image, merged across ranks); ``writer`` receives every batch."""
    was_training = model.training
    model.eval()
    meter = task.new_meter()
    for feats, img, tgt, hw, idx in split.batches(batch, False, 0, 0, device):
        with autocast(device, amp):
            logits = model(feats, img)
        logits = logits.float()
        task.update(meter, logits, tgt, hw)
        if writer is not None:
            writer.add(logits, img, tgt, hw, idx)
    model.train(was_training)
    return meter.all_reduce().compute()


def fit(task: DenseTask, model: nn.Module, train: Any, val: Any, cfg: DenseConfig, env: Any, run_dir: Path,
        run_logger: Any | None = None, meta: dict[str, Any] | None = None, resume_from: str | Path | None = None,
        **hooks: Any) -> FitResult:
    """Train ``model`` (the decoder only) on ``train`` with :func:`visionfm.engine.trainer.fit`; select on ``val``."""
    from visionfm.engine.trainer import FitConfig
    from visionfm.engine.trainer import fit as engine_fit

    device = env.device
    fcfg = FitConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, optimizer="adamw",
                     weight_decay=cfg.weight_decay, scheduler=cfg.scheduler, step_size=20, gamma=0.5,
                     val_freq=cfg.val_freq, seed=cfg.seed, amp=cfg.amp)

    def step(net: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        feats, img, tgt, _, _ = batch
        return task.loss(net(feats, img).float(), tgt), len(img)

    return engine_fit(model, lambda epoch: train.batches(cfg.batch_size, True, cfg.seed, epoch, device), step,
                      lambda m: evaluate(task, m, val, cfg.batch_size, device, amp=cfg.amp),
                      selection_key=task.selection_key,
                      higher_is_better=task.higher_is_better, run_dir=run_dir, cfg=fcfg, env=env,
                      run_logger=run_logger, meta=meta, identity=meta, resume_from=resume_from,
                      summarize=task.summary, **hooks)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _cache_bytes(n: int, size: int, patch: int, dim: int) -> float:
    return n * (4 * (size // patch) ** 2 * dim * 2 + 3 * size * size * 4)


def run_dense(opts: DenseDecoderConfig, task: DenseTask) -> int:
    """``visionfm train-seg`` / ``train-landmark``: train, select, then report on the test split."""
    from visionfm import load_encoder
    from visionfm.engine.distributed import command_session
    from visionfm.engine.features import resolved_encoder_options
    from visionfm.engine.logging import RunLogger
    from visionfm.engine.trainer import (
        load_decoder_checkpoint,
        load_decoder_weights,
        start_point,
        write_original_checkpoint,
    )
    from visionfm.models import dense_block_ids
    from visionfm.reports import write_report

    with command_session(opts.device, seed=opts.seed) as env:
        if opts.input_size % 16 or (opts.patch_size and opts.input_size % opts.patch_size):
            raise ConfigError(f"--input_size {opts.input_size} must be a multiple of 16 (the decoders up-sample x16)")
        if not opts.pretrained_weights:
            raise ConfigError("--pretrained_weights is required (a weights file, or 'random' for a random encoder)")
        run_dir = Path(opts.output_dir) / opts.name
        encoder = load_encoder(opts.pretrained_weights, opts.arch, opts.checkpoint_key, opts.patch_size,
                               opts.input_size).to(env.device)
        opts = resolved_encoder_options(opts, encoder)  # what the run records: the encoder really loaded
        if opts.input_size % opts.patch_size:
            raise ConfigError(f"--input_size {opts.input_size} must be a multiple of the patch size {opts.patch_size} "
                              f"of {opts.pretrained_weights}")
        block_ids = list(opts.block_ids) if opts.block_ids else dense_block_ids(encoder.depth)
        extractor = FrozenFeatures(encoder, block_ids, amp=opts.amp)
        root = opts.data_path
        for split in ("training", "test"):
            if not has_split(root, split):
                raise DataFormatError(f"no '{split}' split (<dataset>/{split}/images) under {root}")
        _, sel_split = selection_split("val" if has_split(root, "val") else None, "test", warn=env.is_main)
        augment = not opts.no_augment
        train_data = task.dataset(root, "training", train=augment)
        val_data = task.dataset(root, sel_split, train=False)
        test_data = val_data if sel_split == "test" else task.dataset(root, "test", train=False)
        w = opts.num_workers
        use_cache = not augment
        if use_cache:
            need = _cache_bytes(len(train_data) + len(val_data), opts.input_size, opts.patch_size, encoder.embed_dim)
            if need > opts.cache_max_gb * 1e9:
                log.warning("feature cache would take %.1f GB > --cache_max_gb %.1f; computing features live",
                            need / 1e9, opts.cache_max_gb)
                use_cache = False
        t0 = time.perf_counter()
        if use_cache:
            train = CachedSplit(train_data, extractor, opts.batch_size_per_gpu, w, env.rank, env.world_size, pad=True)
            val: Any = CachedSplit(val_data, extractor, opts.batch_size_per_gpu, w, env.rank, env.world_size)
            log.info("cached frozen features of %d training and %d %s images in %.1fs", len(train_data),
                     len(val_data), sel_split, time.perf_counter() - t0)
        else:
            train = LiveSplit(train_data, extractor, w, env.rank, env.world_size, train=True)
            val = LiveSplit(val_data, extractor, w, env.rank, env.world_size)
        model = DenseDecoder(build_head(opts.head_type, encoder.embed_dim, task.num_outputs, opts.patch_size))
        resume_from, _ = start_point(run_dir, None, opts.resume, overwrite=opts.overwrite, is_main=env.is_main)
        if opts.load_from:
            load_decoder_weights(model, opts.load_from)
            log.info("initialised the decoder from %s", opts.load_from)
        cfg = DenseConfig(epochs=opts.epochs, lr=opts.lr, weight_decay=opts.weight_decay,
                          batch_size=opts.batch_size_per_gpu, scheduler=opts.scheduler, val_freq=opts.val_freq,
                          seed=opts.seed, num_workers=w, amp=opts.amp)
        meta = {"task": task.name, "arch": opts.arch, "pretrained_weights": str(opts.pretrained_weights),
                "checkpoint_key": opts.checkpoint_key, "input_size": opts.input_size, "patch_size": opts.patch_size,
                "block_ids": extractor.block_ids, "head_type": opts.head_type, "num_outputs": task.num_outputs,
                "modality": opts.modality, "augment": augment, "cached_features": use_cache,
                "selection_split": sel_split}
        run_logger = RunLogger(run_dir, enabled=env.is_main)
        run_logger.log({"run": meta})
        result = fit(task, model, train, val, cfg, env, run_dir, run_logger, meta, resume_from=resume_from)

        # Final evaluation of the selected weights on the test split, with outputs.
        sd, info, _ = load_decoder_checkpoint(run_dir / "checkpoint_best")
        model.load_state_dict(sd)
        if test_data is val_data:
            test = val
        elif use_cache:
            test = CachedSplit(test_data, extractor, opts.batch_size_per_gpu, w, env.rank, env.world_size)
        else:
            test = LiveSplit(test_data, extractor, w, env.rank, env.world_size)
        writer = task.writer(run_dir, test_data.names, opts.n_overlays if env.is_main else 0)
        metrics = evaluate(task, model, test, opts.batch_size_per_gpu, env.device, writer, amp=opts.amp)
        figures = writer.finish()
        if env.is_main:
            metrics["best_epoch"] = result.best_epoch
            metrics["selection"] = {"split": sel_split, "key": task.selection_key, "value": result.best_value,
                                    "higher_is_better": task.higher_is_better, "epochs": opts.epochs}
            if task.name == "segmentation":
                from visionfm.metrics.collapse import segmentation_collapse

                metrics["collapse"] = segmentation_collapse(metrics)
            title = f"{task.name.capitalize()} decoder ({opts.head_type}) — {opts.arch}, test split"
            report_meta = {**meta, "run": str(run_dir), "checkpoint": str(run_dir / "checkpoint_best.safetensors"),
                           "best_epoch": result.best_epoch, "epochs": opts.epochs, "data_path": str(root)}
            write_report(run_dir, title, metrics, images=figures, meta=report_meta)
            # the original's file name and layout beside ours (reference §5.4, §5.5)
            write_original_checkpoint(run_dir / f"checkpoint_{result.best_epoch}_linear.pth",
                                      {k.removeprefix("head."): v for k, v in model.state_dict().items()},
                                      dense_head_name(opts.head_type), result.best_epoch,
                                      {task.original_best_key: result.best_value})
            run_logger.log({"final_test": task.summary(metrics), "best_epoch": result.best_epoch,
                            "selection_split": sel_split})
            run_logger.close()
        return 0


def dense_summary(opts: DenseDecoderConfig, command: str, model_folder: Path | None) -> str:
    """The ending summary of ``train-seg`` / ``train-landmark`` from the run's ``metrics.json``."""
    from visionfm.reports.summary import format_summary

    run_dir = Path(opts.output_dir) / opts.name
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    sel = metrics.get("selection") or {}
    return format_summary(command, metrics, selection={
        "metric": sel.get("key"), "value": sel.get("value"), "epoch": metrics.get("best_epoch"),
        "epochs": sel.get("epochs"), "split": sel.get("split"), "higher_is_better": sel.get("higher_is_better")},
        paths={"report": run_dir / "report.html", "model": model_folder, "log": run_dir / "log.txt"})


def package_dense_run(opts: DenseDecoderConfig, task: str, class_names: Sequence[str] | None = None) -> Path | None:
    """``train-seg`` / ``train-landmark``: write ``<run>/model/`` from ``<run>/checkpoint_best`` after
    :func:`run_dense` has finished."""
    from visionfm.engine.distributed import is_main_process
    from visionfm.engine.features import resolved_encoder_options
    from visionfm.engine.task import get_task
    from visionfm.engine.trainer import load_decoder_checkpoint
    from visionfm.packaging import encoder_for_package, model_folder_from_training

    if not is_main_process():
        return None
    run_dir = Path(opts.output_dir) / opts.name
    sd, info, _ = load_decoder_checkpoint(run_dir / "checkpoint_best")
    encoder = encoder_for_package(opts.pretrained_weights, opts.arch, opts.checkpoint_key, opts.patch_size,
                                  opts.input_size, opts.seed)
    opts = resolved_encoder_options(opts, encoder)
    num_outputs = int(info.get("num_outputs") or opts.num_labels)
    head = build_head(opts.head_type, int(encoder.embed_dim), num_outputs, opts.patch_size)
    head.load_state_dict({k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")})
    block_ids = [int(i) for i in (info.get("block_ids") or [])]
    if len(block_ids) != 4:
        from visionfm.models import dense_block_ids

        block_ids = list(opts.block_ids) if opts.block_ids else list(dense_block_ids(int(encoder.depth)))
    metrics = None
    mpath = run_dir / "metrics.json"
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            metrics = None
    head_type = dense_head_name(opts.head_type)
    head_args = dense_head_args(int(encoder.embed_dim), num_outputs, int(opts.patch_size))
    # the output names under the task's key: the given class names, or the task's default names
    spec = get_task(task)
    names = list(class_names) if class_names is not None else spec.output_names({"head": {"args": head_args}}) or None
    data = {"data_path": str(opts.data_path), "selection_split": info.get("selection_split"),
            "evaluated_on": "the test split", "run": str(run_dir)}
    return model_folder_from_training(
        run_dir / "model", encoder=encoder, head=head, task=task, modality=opts.modality,
        input_size=int(opts.input_size), interpolation="bilinear", head_type=head_type, head_args=head_args,
        features={"type": "dense", "block_ids": block_ids}, **({spec.names_key: names} if names is not None else {}),
        metrics=metrics, data=data, name=f"{opts.name} ({opts.modality})",
        weights_source=str(opts.pretrained_weights))
