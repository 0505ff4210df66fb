"""The one training loop of every supervised decoder, frozen-encoder or fine-tuned (design §2.6).

:func:`fit` owns what the original copied into seven scripts: device and DDP (wrapping only the
trainable module), bf16 autocast on CUDA, the optimizer (AdamW or SGD, over given parameter groups),
the learning-rate schedule (per epoch: cosine, step, constant; or per optimizer step: linear warm-up
then cosine, with a ``lr_scale`` per group for layer decay), gradient accumulation and clipping,
validation every ``val_freq`` epochs and at the last one, selection on a named metric through
``higher_is_better`` (ties keep the later epoch, as the original's ``>=``), one JSON line per epoch
in ``log.txt`` (+ TensorBoard), a progress bar with ETA and samples/s, and two checkpoints written
atomically every epoch in the run folder:

* ``checkpoint_best.safetensors`` + ``checkpoint_best.json`` — weights of the selected epoch;
* ``checkpoint_last.safetensors`` + ``checkpoint_last.json`` — weights, optimizer and scheduler
  state after the latest epoch: ``resume_from`` continues from it after checking that the saved
  run settings equal the current ones (a different run with the same name is refused, not resumed).

The training loss and a count of steps with non-finite gradients are kept on the device and read
once per epoch (no per-step host syncs); an epoch with a non-finite loss, a non-finite gradient or
non-finite weights after it stops the run with :class:`~visionfm.errors.NonFiniteLossError` before
anything of it is evaluated or saved (the previous ``checkpoint_last`` stays), and the writers
refuse non-finite tensors anyway (:mod:`visionfm.io.finite`). An epoch without a batch is an error.
What differs between tasks — where batches come from and how a batch becomes a loss —
is passed in: ``batches(epoch)`` and ``step(net, batch) -> (loss, n)``.

Safetensors holds tensors only (``model.*`` and ``optim.<param id>.<name>``); the JSON holds the
epoch, metrics, best value, optimizer param groups, scheduler state and run settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Sized

import torch
from torch import nn

from visionfm.errors import CheckpointError, ConfigError, NonFiniteLossError
from visionfm.io import save_json_atomic, save_safetensors_atomic
from visionfm.io.finite import all_finite

__all__ = [
    "FitConfig",
    "FitResult",
    "fit",
    "loss_step",
    "start_point",
    "TensorBatches",
    "epoch_mean_loss",
    "selection_split",
    "build_scheduler",
    "warmup_cosine",
    "autocast",
    "checkpoint_paths",
    "save_decoder_checkpoint",
    "load_decoder_checkpoint",
    "load_decoder_weights",
    "write_original_checkpoint",
    "SCHEDULERS",
]

log = logging.getLogger("visionfm.train")

SCHEDULERS = ("cosine", "step", "constant", "warmup_cosine")


@dataclass
class FitConfig:
    """Settings of :func:`fit` (one process; ``batch_size`` is per process).

    ``lr`` is the actual base learning rate (already scaled by the caller where a command scales
    it by batch size). ``scheduler``: ``cosine`` (per epoch to 0), ``step`` (``StepLR(step_size,
    gamma)`` per epoch), ``constant``, or ``warmup_cosine`` (per optimizer step: linear warm-up for
    ``warmup_epochs`` then half-cosine to ``min_lr``; each group's lr is multiplied by its ``lr_scale``).
    """

    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 512
    optimizer: str = "adamw"  # or "sgd"
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD only
    scheduler: str = "cosine"
    step_size: int = 20  # scheduler "step"
    gamma: float = 0.5  # scheduler "step"
    warmup_epochs: float = 0.0  # scheduler "warmup_cosine"
    min_lr: float = 0.0  # scheduler "warmup_cosine"
    accum_iter: int = 1
    clip_grad: float = 0.0  # 0: no clipping
    amp: bool = True  # bf16 autocast, CUDA only
    val_freq: int = 1
    seed: int = 0


#: checkpoint JSON marker: "epoch" / "best_epoch" count from 1 (files without it counted from 0)
EPOCH_NUMBERING = "1-based"


@dataclass
class FitResult:
    """What :func:`fit` returns; ``best_epoch`` (0: never selected) and ``last_epoch`` count from 1."""

    best_epoch: int
    best_value: float | None
    best_metrics: dict[str, Any]
    last_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


# -- small shared pieces --------------------------------------------------------------------------------


def epoch_mean_loss(total: torch.Tensor | float, count: int, epoch: int) -> float:
    """Mean training loss of an epoch from a sum kept on the device (one host read per epoch, not two
    per step); a non-finite epoch stops the run with a clear error."""
    if count == 0:  # no step was taken: an error, not a 0.0 loss
        raise ConfigError(f"epoch {epoch}: no training batch was run (fewer training samples than one batch?)")
    value = float(total) / count
    if not math.isfinite(value):
        raise NonFiniteLossError(f"epoch {epoch}: training loss is {value}; stopping before saving (lower --lr?)")
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


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (when ``enabled``); nothing on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def warmup_cosine(step: float, total: int, warmup: int, base: float, min_lr: float) -> float:
    """Linear warm-up for ``warmup`` steps, then half-cosine from ``base`` to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base * step / warmup
    if total <= warmup:
        return base
    t = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: FitConfig) -> Any:
    """The per-epoch scheduler of ``cfg.scheduler`` (``None`` for the per-step ``warmup_cosine``)."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1), eta_min=0.0)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if cfg.scheduler == "warmup_cosine":
        return None
    raise ConfigError(f"unknown scheduler {cfg.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")


def _build_optimizer(params: Sequence[Any], cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; expected adamw or sgd")


class TensorBatches:
    """Batches of rows of in-memory tensors (cached features): a seed-derived permutation per epoch,
    sharded over ranks (every rank gets the same number of batches), as ``(inputs, targets)``."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, device: torch.device | None = None) -> None:
        device = device or inputs.device
        self.inputs, self.targets = inputs.to(device), targets.to(device)
        self.batch_size, self.seed, self.rank, self.world = int(batch_size), int(seed), int(rank), int(world)

    def indices(self, epoch: int) -> list[torch.Tensor]:
        n = len(self.inputs)
        g = torch.Generator().manual_seed(self.seed * 10_007 + int(epoch))
        perm = torch.randperm(n, generator=g)
        per_rank = math.ceil(n / self.world)
        if per_rank * self.world > n:  # pad by wrapping, as DistributedSampler does
            perm = torch.cat([perm, perm[: per_rank * self.world - n]])
        batches = list(torch.split(perm[self.rank::self.world], self.batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot train on a batch of one
            batches = batches[:-1]
        return batches

    def __len__(self) -> int:
        """Batches per epoch (the same every epoch), from the sizes alone (what :meth:`indices` yields)."""
        n = math.ceil(len(self.inputs) / self.world)
        count = math.ceil(n / self.batch_size)
        last = n - (count - 1) * self.batch_size
        return count - 1 if count > 1 and last == 1 else count

    def __call__(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.indices(epoch):
            idx = idx.to(self.inputs.device)
            yield self.inputs[idx], self.targets[idx]


# -- checkpoints ------------------------------------------------------------------------------------------


def checkpoint_paths(stem: str | Path) -> tuple[Path, Path]:
    """``(weights.safetensors, info.json)`` for a stem, a ``.safetensors`` path or a ``.json`` path."""
    p = Path(stem)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU, CUDA), NumPy and Python RNG states as ``(tensors, JSON)``, for exact resumes."""
    import random

    import numpy as np

    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    return tensors, {"numpy": [name, int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(internal), gauss]}


def _restore_rng(tensors: Mapping[str, torch.Tensor], saved: Mapping[str, Any] | None) -> None:
    import random

    import numpy as np

    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if saved and "rng.numpy" in tensors:
        name, pos, has_gauss, cached = saved["numpy"]
        np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if saved and "python" in saved:
        version, internal, gauss = saved["python"]
        random.setstate((version, tuple(internal), gauss))


def save_decoder_checkpoint(stem: str | Path, model: nn.Module, info: Mapping[str, Any],
                            optimizer: torch.optim.Optimizer | None = None, scheduler: Any | None = None,
                            rng: bool = False) -> Path:
    """Write ``<stem>.safetensors`` (weights [+ optimizer tensors] [+ RNG states]) then ``<stem>.json``
    (both atomic)."""
    wpath, jpath = checkpoint_paths(stem)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    record = dict(info)
    if rng:
        rng_tensors, record["rng"] = _rng_state()
        tensors.update(rng_tensors)
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


def load_decoder_checkpoint(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
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
        return clean, {"epoch": obj.get("epoch"), "format": "original-linear-pth"}, {}
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


def load_decoder_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a decoder checkpoint's weights into ``model`` (strictly) and return its info JSON.

    The original's ``checkpoint_*_linear.pth`` heads (UNETR, linear seg, RegHead, ClsHead) are renamed to
    our parameter names first (:func:`~visionfm.models.heads.official.adapt_state_dict`); a checkpoint that
    still does not fit is a :class:`~visionfm.errors.CheckpointError` listing the differing names.
    """
    from visionfm.models.heads.official import adapt_state_dict

    sd, info, _ = load_decoder_checkpoint(path)
    target = model.state_dict()
    sd = adapt_state_dict(sd, target.keys())
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    shapes = [k for k in target if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]
        raise CheckpointError(f"{path}: its weights do not fit this decoder ({'; '.join(parts)})")
    model.load_state_dict(sd)
    return info


def write_original_checkpoint(path: str | Path, state: Mapping[str, torch.Tensor], head_type: str, epoch: int,
                              best: Mapping[str, Any]) -> Path:
    """The original's decoder checkpoint file beside ours, so its own scripts and habits keep working:
    ``{epoch, state_dict, best_*}`` with the head's tensors under the original's names and DDP's
    ``module.`` prefix (:func:`~visionfm.models.heads.official.to_official`). ``best`` holds the
    original's ``best_<metric>`` key(s). Written atomically; returns the path."""
    from visionfm.io import save_torch_atomic
    from visionfm.models.heads.official import to_official

    sd = to_official(head_type, {k: v.detach().cpu() for k, v in state.items()})
    return save_torch_atomic({"epoch": int(epoch), "state_dict": sd, **dict(best)}, path)


def _restore_optimizer(optimizer: torch.optim.Optimizer, info: Mapping[str, Any],
                       tensors: Mapping[str, torch.Tensor]) -> bool:
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


def _json_plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing saved settings."""
    return json.loads(json.dumps(value, default=str))


def _setting_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


# -- the loop ---------------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
    evaluate: Callable[[nn.Module], dict[str, Any]],
    *,
    selection_key: str,
    higher_is_better: bool,
    run_dir: str | Path,
    cfg: FitConfig,
    env: Any,
    run_logger: Any | None = None,
    meta: Mapping[str, Any] | None = None,
    identity: Mapping[str, Any] | None = None,
    param_groups: Sequence[dict[str, Any]] | None = None,
    resume_from: str | Path | None = None,
    init_from: str | Path | None = None,
    summarize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    log_prefix: str = "val_",
    batches_per_epoch: int | None = None,
    keep_last_if_never_selected: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    on_best: Callable[[int, dict[str, Any], torch.optim.Optimizer, Any], None] | None = None,
) -> FitResult:
    """Train ``model``; see the module docstring.

    Args:
        batches: ``batches(epoch)`` → this rank's batches for that epoch (any objects ``step`` takes).
        step: ``step(net, batch) -> (loss, n)``: the scalar loss of a batch (graph attached) and its
            number of samples; ``net`` is the DDP-wrapped model when running distributed.
        evaluate: called with the unwrapped model in eval mode under ``no_grad``; returns a metrics dict
            holding ``selection_key`` (``None`` counts as the worst value). Runs on every rank.
        meta: run description stored in every checkpoint's JSON.
        identity: the settings that make a run this run (architecture, weights, task, outputs...); with
            ``cfg`` they are saved and compared on resume.
        param_groups: optimizer groups (default: every parameter that requires grad, one group).
        resume_from: a ``checkpoint_last`` written by this function: training continues after its
            epoch with its optimizer, scheduler and best value, if its settings equal these.
        init_from: a decoder checkpoint whose weights initialise ``model`` (nothing else is restored).
        summarize: metrics → the scalars logged per epoch and stored as ``val_metrics`` (default: all
            scalar entries).
        batches_per_epoch: batches per epoch, needed by ``warmup_cosine`` when ``batches(epoch)`` has
            no ``len`` (a ``DataLoader`` has one).
        keep_last_if_never_selected: when ``selection_key`` was never defined, write the last epoch as
            the best checkpoint (with a warning) instead of leaving none.
        on_epoch_end: ``(epoch, stats)`` after each epoch's checkpoints (tests inject faults here).
        on_best: ``(epoch, metrics, optimizer, scheduler)`` on the main rank right after a new best
            checkpoint is written (a command writes its extra files of the selected epoch there).
    """
    run_dir = Path(run_dir)
    device = env.device
    model.to(device)
    if cfg.accum_iter < 1:
        raise ConfigError(f"accum_iter must be >= 1, got {cfg.accum_iter}")
    params = list(param_groups) if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = _build_optimizer(params, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    per_step = cfg.scheduler == "warmup_cosine"
    shown_of = summarize or (lambda m: {k: v for k, v in m.items()
                                        if v is None or isinstance(v, (int, float))})
    stored_of = summarize or (lambda m: m)  # what checkpoints keep: the summary, or every metric
    settings = _json_plain({"config": asdict(cfg), "identity": dict(identity or {}),
                            "selection_key": selection_key})
    record = {"selection_key": selection_key, "higher_is_better": higher_is_better, "config": asdict(cfg),
              "identity": settings["identity"], **dict(meta or {})}
    # Epochs are numbered from 1 in everything written (log.txt, checkpoint JSON, FitResult, messages); the
    # callbacks (batches, on_best, on_epoch_end) get the 0-based loop index. best_epoch 0: none selected yet.
    record["epoch_numbering"] = EPOCH_NUMBERING
    start_epoch, best_value, best_epoch, best_metrics = 0, None, 0, {}
    history: list[dict[str, Any]] = []
    if resume_from is not None:
        sd, info, otensors = load_decoder_checkpoint(resume_from)
        saved = {"config": info.get("config"), "identity": info.get("identity", {}),
                 "selection_key": info.get("selection_key")}
        diffs = _setting_differences(saved["config"] or {}, settings["config"]) + \
            _setting_differences(saved["identity"] or {}, settings["identity"])
        if saved["selection_key"] != selection_key:
            diffs.append(f"selection_key: saved {saved['selection_key']!r}, now {selection_key!r}")
        if not info.get("optimizer"):
            raise CheckpointError(f"{resume_from}: not a checkpoint_last (no optimizer state) — it cannot be resumed")
        if diffs:
            raise ConfigError(f"{resume_from} belongs to a run with other settings, so it is not resumed ("
                              + "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
                              + "); use another --name, or the same settings")
        model.load_state_dict(sd)
        _restore_optimizer(optimizer, info, otensors)
        if scheduler is not None and info.get("scheduler"):
            scheduler.load_state_dict(info["scheduler"])
        from safetensors import safe_open

        with safe_open(str(checkpoint_paths(resume_from)[0]), framework="pt") as fh:
            _restore_rng({k: fh.get_tensor(k) for k in fh.keys() if k.startswith("rng.")}, info.get("rng"))
        one_based = info.get("epoch_numbering") == EPOCH_NUMBERING  # older checkpoints counted from 0
        start_epoch = int(info.get("epoch", -1)) + (0 if one_based else 1)
        best_value = info.get("best_value")
        best_epoch = int(info.get("best_epoch", -1)) + (0 if one_based else 1)
        best_metrics = dict(info.get("best_metrics") or {})
        if isinstance(info.get("history"), list):  # log.txt: one line per finished epoch, whatever the kill point
            history = [dict(h) for h in info["history"]]
            if env.is_main and run_logger is not None and hasattr(run_logger, "rewind"):
                run_logger.rewind(history)
        log.info("resumed from %s after epoch %d (best %s=%s at epoch %d)", resume_from, start_epoch,
                 selection_key, best_value, best_epoch)
    elif init_from is not None:
        load_decoder_weights(model, init_from)
        log.info("initialised the decoder from %s (weights only)", init_from)
    net: nn.Module = model
    if env.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = 0
    if per_step:
        n_batches = batches_per_epoch if batches_per_epoch is not None else _length(batches)
        if n_batches is None:
            n_batches = _length(batches(0))
        if n_batches is None:
            raise ConfigError("the warmup_cosine schedule needs batches_per_epoch")
        steps_per_epoch = max(n_batches // cfg.accum_iter, 1)
        total_steps = cfg.epochs * steps_per_epoch
        warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    from visionfm.engine.logging import progress

    opt_step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        total: torch.Tensor | float = 0.0
        count = 0
        bad_grads = torch.zeros((), dtype=torch.int64, device=device)  # optimizer steps with NaN/inf gradients
        optimizer.zero_grad(set_to_none=True)
        epoch_batches = batches(epoch)
        n_epoch = _length(epoch_batches)
        if n_epoch is None:
            n_epoch = batches_per_epoch if batches_per_epoch is not None else _length(batches)
        bar = progress(epoch_batches, n_epoch, f"epoch {epoch + 1}/{cfg.epochs}", env.is_main and log.isEnabledFor(
            logging.INFO) and _bars_wanted())
        lr = optimizer.param_groups[0]["lr"]
        for i, batch in enumerate(bar):
            if per_step and i % cfg.accum_iter == 0:
                lr = warmup_cosine(opt_step, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
                for grp in optimizer.param_groups:
                    grp["lr"] = lr * grp.get("lr_scale", 1.0)
            with autocast(device, cfg.amp):
                loss, n = step(net, batch)
            if cfg.accum_iter == 1:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                bad_grads += ~all_finite(p.grad for p in model.parameters())  # on the device, read per epoch
                optimizer.step()
                opt_step += 1
            else:
                (loss / cfg.accum_iter).backward()
                last = n_epoch is not None and i + 1 == n_epoch
                if (i + 1) % cfg.accum_iter == 0 or last:
                    if cfg.clip_grad > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    bad_grads += ~all_finite(p.grad for p in model.parameters())
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    opt_step += 1
            total = total + loss.detach() * n
            count += n
            if hasattr(bar, "set_postfix") and i % 10 == 0:
                rate = count / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(samples_per_s=f"{rate:.0f}")
        if scheduler is not None:
            scheduler.step()
        if per_step:
            lr = optimizer.param_groups[-1]["lr"]
        ep = epoch + 1  # the epoch's number as written
        stats: dict[str, Any] = {"epoch": ep, "train_loss": epoch_mean_loss(total, count, ep), "lr": lr}
        _stop_if_nonfinite(model, bad_grads, ep)  # before anything of this epoch is evaluated or saved
        is_val = (epoch + 1) % max(cfg.val_freq, 1) == 0 or epoch == cfg.epochs - 1
        if is_val:
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            value = metrics.get(selection_key)
            shown = shown_of(metrics)
            stats.update({f"{log_prefix}{k}": v for k, v in shown.items()})
            improved = value is not None and (
                best_value is None or (value >= best_value if higher_is_better else value <= best_value))
            if improved and value is not None:
                best_value, best_epoch, best_metrics = float(value), ep, dict(metrics)
                if env.is_main:
                    save_decoder_checkpoint(run_dir / "checkpoint_best", model, {
                        **record, "epoch": ep, "best_value": best_value,
                        "val_metrics": _json_plain(stored_of(metrics))})
                    if on_best is not None:
                        on_best(epoch, metrics, optimizer, scheduler)
            stats["improved"] = bool(improved)
        stats.update({"best_epoch": best_epoch, f"best_{selection_key}": best_value,
                      "epoch_time_s": round(time.perf_counter() - t0, 3)})
        history.append(stats)
        if env.is_main:
            # the checkpoint (its history holds this epoch's line) before the line: a resume after a kill
            # in between writes the missing line from it (RunLogger.rewind)
            save_decoder_checkpoint(run_dir / "checkpoint_last", model, {
                **record, "epoch": ep, "best_value": best_value, "best_epoch": best_epoch,
                "best_metrics": _json_plain(stored_of(best_metrics)) if best_metrics else {},
                "history": _json_plain(history)},
                optimizer, scheduler, rng=True)
            if run_logger is not None:
                run_logger.log(stats, step=ep)
            log.info("epoch %d/%d loss %.4f%s", ep, cfg.epochs, stats["train_loss"],
                     f" {log_prefix}{selection_key}={stats.get(log_prefix + selection_key)}" if is_val else "")
        if on_epoch_end is not None:
            on_epoch_end(epoch, stats)
    if best_epoch <= 0 and keep_last_if_never_selected and env.is_main and cfg.epochs > start_epoch:
        log.warning("%s was never defined on the selection split; the last epoch is kept as the best checkpoint",
                    selection_key)
        save_decoder_checkpoint(run_dir / "checkpoint_best", model, {
            **record, "epoch": cfg.epochs, "best_value": None, "val_metrics": {}})
    if env.world_size > 1:
        from visionfm.engine.distributed import barrier

        barrier()
    return FitResult(best_epoch, best_value, best_metrics, cfg.epochs, history)


def _stop_if_nonfinite(model: nn.Module, bad_grad_steps: torch.Tensor, epoch: int) -> None:
    """Stop the run (nothing of this epoch saved; the previous ``checkpoint_last`` stays) when a step had
    non-finite gradients or the weights (or buffers) after the epoch are not all finite."""
    n = int(bad_grad_steps)
    if n:
        raise NonFiniteLossError(f"epoch {epoch}: {n} optimizer step(s) had non-finite gradients; stopping "
                                 "before saving, the last checkpoint is intact (lower --lr, set --clip_grad?)")
    if not bool(all_finite(model.state_dict().values())):
        raise NonFiniteLossError(f"epoch {epoch}: the weights became non-finite (an optimizer step overflowed); "
                                 "stopping before saving, the last checkpoint is intact (lower --lr?)")


def _length(obj: Any) -> int | None:
    """``len(obj)`` for sized objects (a DataLoader, :class:`TensorBatches`), else ``None`` (a generator)."""
    return len(obj) if isinstance(obj, Sized) else None


def _bars_wanted() -> bool:
    """Progress bars only on a terminal (CI logs and pipes get the per-epoch log line)."""
    import sys

    return sys.stderr.isatty()


def loss_step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
              ) -> Callable[[nn.Module, Any], tuple[torch.Tensor, int]]:
    """The :func:`fit` step of ``(inputs, targets)`` batches: ``loss_fn(net(inputs), targets)``."""
    def step(net: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        x, y = batch
        return loss_fn(net(x), y), len(x)

    return step


def start_point(run_dir: str | Path, load_from: str | Path | None, resume: bool, *, overwrite: bool = False,
                named: bool = True, is_main: bool = True) -> tuple[Path | None, Path | None]:
    """``(resume_from, init_from)`` from the ``--load_from`` / ``--resume`` / ``--overwrite`` flags, after
    claiming the run folder (:func:`~visionfm.engine.run_folder.claim_run_dir`). Call it before anything
    is written to ``run_dir``.

    ``--load_from`` a ``checkpoint_last`` (it holds optimizer state) resumes that run, as the original's
    ``--load_from`` did — after :func:`fit` has checked that its settings are these; any other decoder
    checkpoint only initialises the weights. ``--resume`` continues ``<run>/checkpoint_last``. With
    neither, a folder that already holds a run is refused, or replaced with ``--overwrite``.
    """
    from visionfm.engine.run_folder import claim_run_dir, existing_run_files

    run_dir = Path(run_dir)
    last = checkpoint_paths(run_dir / "checkpoint_last")[0]
    if load_from and resume:
        raise ConfigError("give --load_from CHECKPOINT or --resume, not both")
    resume_from: Path | None = None
    init_from: Path | None = None
    if resume:
        if overwrite:
            raise ConfigError("--overwrite and --resume contradict each other: give one")
        if not last.is_file():
            partial = existing_run_files(run_dir)
            raise ConfigError(f"--resume: {run_dir} has no checkpoint_last to continue" + (
                f" (it holds {', '.join(partial)} of a run stopped in its first epoch: pass --overwrite to "
                "start it again)" if partial else ""))
        resume_from = last
    elif load_from:
        p = Path(load_from)
        if p.suffix in (".pth", ".pt"):
            init_from = p
        else:
            _, info, _ = load_decoder_checkpoint(p)
            resume_from, init_from = (p, None) if info.get("optimizer") else (None, p)
    if overwrite and init_from is not None and run_dir.resolve() in Path(init_from).resolve().parents:
        raise ConfigError(f"--load_from {load_from} lies in the run folder that --overwrite would clear; "
                          "copy it elsewhere first")
    claim_run_dir(run_dir, resume=resume_from is not None, overwrite=overwrite, resume_flag="--resume",
                  named=named, is_main=is_main)
    return resume_from, init_from
