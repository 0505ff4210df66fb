"""The shared training loop for decoders on cached (frozen-encoder) features.

Inputs live in memory as one tensor; every epoch shuffles them with a seed-derived permutation,
shards the permutation over ranks (DDP wraps only the decoder), steps AdamW or SGD and a per-epoch
cosine (or constant) schedule, validates every ``val_freq`` epochs and at the last one, selects the
best epoch through ``higher_is_better`` (ties keep the later epoch, as the original's ``>=``),
writes one JSON line per epoch to ``log.txt``, and keeps two checkpoints in the run folder:

* ``checkpoint_best.safetensors`` + ``checkpoint_best.json`` — weights of the selected epoch;
* ``checkpoint_last.safetensors`` + ``checkpoint_last.json`` — weights, optimizer and scheduler
  state after the latest epoch, used to resume.

Safetensors holds tensors only (``model.*`` and ``optim.<param id>.<name>``); the JSON holds the
epoch, metrics, best value, optimizer param groups, scheduler state and run metadata.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from visionfm.errors import CheckpointError
from visionfm.io import save_json_atomic, save_safetensors_atomic

__all__ = [
    "selection_split",
    "epoch_mean_loss",
    "DecoderTrainConfig",
    "DecoderResult",
    "train_decoder",
    "save_decoder_checkpoint",
    "load_decoder_checkpoint",
    "checkpoint_paths",
]

log = logging.getLogger("visionfm.decoder")


def epoch_mean_loss(total: torch.Tensor | float, count: int, epoch: int) -> float:
    """Mean training loss of an epoch from a sum kept on the device (one host read per epoch, not two
    per step); a non-finite epoch stops the run with a clear error."""
    value = float(total) / max(count, 1)
    if not math.isfinite(value):
        raise FloatingPointError(f"epoch {epoch}: training loss is {value}; stopping (lower --lr?)")
    return value


def selection_split(val: Any, test: Any, warn: bool = True) -> tuple[Any, str]:
    """``(split, name)`` to select the best epoch on: ``val`` when the data has one, else ``test``.

    Selecting on test makes the reported test metrics optimistic, so that case is logged once
    (pass ``warn=is_main`` so only rank 0 says it).
    """
    if val is not None:
        return val, "val"
    if warn:
        log.warning("no val split: model selection uses the TEST split (optimistic test metrics)")
    return test, "test"


@dataclass
class DecoderTrainConfig:
    epochs: int = 100
    lr: float = 1e-3  # the actual learning rate (already scaled by the caller)
    batch_size: int = 512  # per process
    optimizer: str = "adamw"  # or "sgd"
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD only
    scheduler: str = "cosine"  # or "constant"
    val_freq: int = 1
    seed: int = 0


@dataclass
class DecoderResult:
    best_epoch: int
    best_value: float | None
    best_metrics: dict[str, Any]
    last_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_paths(stem: str | Path) -> tuple[Path, Path]:
    """``(weights.safetensors, info.json)`` for a stem, a ``.safetensors`` path or a ``.json`` path."""
    p = Path(stem)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_decoder_checkpoint(
    stem: str | Path,
    model: nn.Module,
    info: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
) -> Path:
    """Write ``<stem>.safetensors`` (weights [+ optimizer tensors]) then ``<stem>.json`` (both atomic)."""
    wpath, jpath = checkpoint_paths(stem)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    record = dict(info)
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for name, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{pid}.{name}"] = value
                else:
                    scalars.setdefault(str(pid), {})[name] = value
        record["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalars}
    if scheduler is not None:
        record["scheduler"] = scheduler.state_dict()
    save_safetensors_atomic(tensors, wpath, metadata={"format": "visionfm-decoder/1"})
    save_json_atomic(record, jpath)
    return wpath


def load_decoder_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """Read a decoder checkpoint: ``(model state dict, info json, optimizer tensors)``.

    Accepts our ``.safetensors`` + ``.json`` pair (either path, or the stem) and, for weights only,
    the original's ``checkpoint_<key>_linear.pth`` (read with the safe loader, ``module.`` stripped).
    """
    p = Path(path)
    if p.suffix in (".pth", ".pt"):
        from visionfm.io import load_checkpoint_file

        obj, _ = load_checkpoint_file(p)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(sd, dict):
            raise CheckpointError(f"{p}: expected a dict with 'state_dict'")
        clean = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items() if torch.is_tensor(v)}
        info = {"epoch": obj.get("epoch"), "format": "original-linear-pth"}
        return clean, info, {}
    wpath, jpath = checkpoint_paths(p)
    if not wpath.is_file():
        raise CheckpointError(f"decoder checkpoint not found: {wpath}")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(wpath))
    except Exception as exc:
        raise CheckpointError(f"{wpath}: unreadable safetensors file ({exc})") from None
    info: dict[str, Any] = {}
    if jpath.is_file():
        try:
            info = json.loads(jpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{jpath}: not valid JSON ({exc})") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_t = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    return model_sd, info, optim_t


def _restore_optimizer(optimizer: torch.optim.Optimizer, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> bool:
    saved = info.get("optimizer")
    if not saved:
        return False
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, extra in (saved.get("scalars") or {}).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return True


def _build_optimizer(model: nn.Module, cfg: DecoderTrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected adamw or sgd")


def _build_scheduler(optimizer: torch.optim.Optimizer, cfg: DecoderTrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1), eta_min=0.0)
    if cfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}; expected cosine or constant")


def _epoch_batches(n: int, batch: int, seed: int, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    """Shuffled index batches for this rank; every rank gets the same number of batches."""
    g = torch.Generator().manual_seed(int(seed) * 10_007 + int(epoch))
    perm = torch.randperm(n, generator=g)
    per_rank = math.ceil(n / world)
    if per_rank * world > n:  # pad by wrapping, as DistributedSampler does
        perm = torch.cat([perm, perm[: per_rank * world - n]])
    mine = perm[rank::world]
    batches = list(torch.split(mine, batch))
    if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot train on a batch of one
        batches = batches[:-1]
    return batches


def train_decoder(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, Any]],
    selection_key: str,
    higher_is_better: bool,
    run_dir: str | Path,
    cfg: DecoderTrainConfig,
    env: Any,
    run_logger: Any | None = None,
    meta: Mapping[str, Any] | None = None,
    resume_from: str | Path | None = None,
) -> DecoderResult:
    """Train ``model`` on ``(inputs, targets)``; see the module docstring.

    Args:
        evaluate: called with the (unwrapped) model in eval mode; returns a metrics dict holding
            ``selection_key`` (``None`` counts as the worst value). Runs on every rank; only rank 0
            writes.
        resume_from: a ``checkpoint_last`` written by this function; training continues after its
            epoch with its optimizer, scheduler and best value. ``None`` resumes from
            ``<run_dir>/checkpoint_last`` when it exists.
    """
    run_dir = Path(run_dir)
    device = env.device
    model.to(device)
    optimizer = _build_optimizer(model, cfg)
    scheduler = _build_scheduler(optimizer, cfg)
    start_epoch, best_value, best_epoch, best_metrics = 0, None, -1, {}
    last_stem = run_dir / "checkpoint_last"
    if resume_from is None and checkpoint_paths(last_stem)[0].is_file():
        resume_from = last_stem
    if resume_from is not None:
        sd, info, otensors = load_decoder_checkpoint(resume_from)
        model.load_state_dict(sd)
        if _restore_optimizer(optimizer, info, otensors) and info.get("scheduler"):
            scheduler.load_state_dict(info["scheduler"])
            start_epoch = int(info.get("epoch", -1)) + 1
            best_value = info.get("best_value")
            best_epoch = int(info.get("best_epoch", -1))
            best_metrics = dict(info.get("best_metrics") or {})
            log.info("resumed from %s after epoch %d (best %s=%s at epoch %d)", resume_from, start_epoch - 1,
                     selection_key, best_value, best_epoch)
        else:
            log.info("initialised the decoder from %s (weights only)", resume_from)
    net: nn.Module = model
    if env.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    inputs = inputs.to(device)
    targets = targets.to(device)
    meta = dict(meta or {})
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        total, count = 0.0, 0
        lr = optimizer.param_groups[0]["lr"]
        for idx in _epoch_batches(len(inputs), cfg.batch_size, cfg.seed, epoch, env.rank, env.world_size):
            idx = idx.to(device)
            out = net(inputs[idx])
            loss = loss_fn(out, targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total + loss.detach() * len(idx)
            count += len(idx)
        scheduler.step()
        stats: dict[str, Any] = {"epoch": epoch, "train_loss": epoch_mean_loss(total, count, epoch), "lr": lr}
        is_val = (epoch + 1) % max(cfg.val_freq, 1) == 0 or epoch == cfg.epochs - 1
        if is_val:
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            value = metrics.get(selection_key)
            stats.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None})
            improved = value is not None and (
                best_value is None or (value >= best_value if higher_is_better else value <= best_value)
            )
            if improved:
                best_value, best_epoch, best_metrics = float(value), epoch, dict(metrics)
                if env.is_main:
                    save_decoder_checkpoint(run_dir / "checkpoint_best", model, {
                        "epoch": epoch, "selection_key": selection_key, "best_value": best_value,
                        "higher_is_better": higher_is_better, "val_metrics": metrics, "config": asdict(cfg), **meta,
                    })
            stats["improved"] = bool(improved)
        stats.update({"best_epoch": best_epoch, f"best_{selection_key}": best_value,
                      "epoch_time_s": round(time.perf_counter() - t0, 3)})
        history.append(stats)
        if env.is_main:
            if run_logger is not None:
                run_logger.log(stats, step=epoch)
            save_decoder_checkpoint(last_stem, model, {
                "epoch": epoch, "selection_key": selection_key, "best_value": best_value, "best_epoch": best_epoch,
                "best_metrics": best_metrics, "higher_is_better": higher_is_better, "config": asdict(cfg), **meta,
            }, optimizer, scheduler)
            log.info("epoch %d/%d loss %.4f%s", epoch + 1, cfg.epochs, stats["train_loss"],
                     f" val {selection_key}={stats.get('val_' + selection_key)}" if is_val else "")
    if env.world_size > 1:
        from visionfm.engine.distributed import barrier

        barrier()
    return DecoderResult(best_epoch, best_value, best_metrics, cfg.epochs - 1, history)
