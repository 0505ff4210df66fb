#!/usr/bin/env python
"""Throughput of the iBOT pretraining step and of its input pipeline, against the original's style.

What is measured (every figure in one run, on whatever device is present):

* **ours** — :meth:`visionfm.pretrain.trainer.IBOTTrainer.train_step`, the real training step, on
  synthetic crops already on the device (masks from the real masker): steady-state images/s, model
  FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``) and the achieved TFLOP/s, and the
  peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's maximum RSS).
* **baseline** — the same models, loss and optimizer driven in the original ``main_pretrain.py``
  execution style (reference §4.5): fp16 autocast with a GradScaler on GPU (fp32 on CPU), explicit
  softmax attention (``fused_attn = False`` on every timm ``Attention``), per-parameter Python-loop
  clipping and EMA, and host reads of the loss and logged statistics every step. ratio = ours / baseline.
* **pipeline** — images/s delivered by the trainer's own DataLoader (``PretrainImages`` →
  ``PretrainCropDataset`` → ``ResumableSampler`` → ``collate_crops``) from a temporary folder of
  JPEG files, with ``--workers`` worker processes.
* **end-to-end** — the same loader feeding the real step.

Run ``python benchmarks/pretrain_throughput.py --help`` for the flags; ``benchmarks/README.md``
explains every figure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from visionfm.cli.options import VFMArgumentParser
from visionfm.pretrain.config import add_pretrain_arguments, validate_pretrain_args
from visionfm.pretrain.optim import cancel_last_layer_grads, set_group_hparams
from visionfm.pretrain.trainer import EpochMeters, IBOTTrainer

__all__ = ["build_parser", "main", "run_benchmark", "set_fused_attention", "attention_modules"]

MODALITY = "Fundus"
# Figures the issue sets for an H100 (ViT-B/16, batch 128, 2 global crops at 224, no local crops).
TARGET_IMAGES_PER_S = 1400.0
TARGET_PEAK_GIB = 20.0


# -- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Images/s, TFLOP/s and peak memory of the iBOT pretraining step (ours vs the "
        "original's execution style), plus the JPEG input pipeline and the end-to-end rate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", default="vit_base", choices=["vit_tiny", "vit_small", "vit_base", "vit_large"])
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=128, help="images per step (each gives every crop)")
    p.add_argument("--input_size", type=int, default=224, help="global crop side")
    p.add_argument("--global_crops", type=int, default=2)
    p.add_argument("--local_crops", type=int, default=0)
    p.add_argument("--local_crops_size", type=int, default=96)
    p.add_argument("--steps", type=int, default=20, help="timed steps (and pipeline batches, rounded up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="ours: auto = bf16 on GPUs that support it, fp32 on CPU (the baseline is always "
                        "fp16 on GPU, fp32 on CPU)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    p.add_argument("--jpeg_size", type=int, default=1024, help="side of the synthetic JPEG files")
    p.add_argument("--num_jpegs", type=int, default=256, help="distinct JPEG files written")
    p.add_argument("--skip_baseline", action="store_true")
    p.add_argument("--skip_pipeline", action="store_true", help="also skips the end-to-end figure")
    p.add_argument("--compile", action="store_true", help="torch.compile the student and teacher (ours only)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch intra-op CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp_dir", default=None, help="where the temporary JPEG folder and run folder go")
    return p


def _check_args(a: argparse.Namespace) -> None:
    if a.steps < 1 or a.warmup < 0 or a.batch_size < 1 or a.workers < 0:
        raise SystemExit("--steps and --batch_size must be ≥ 1, --warmup and --workers ≥ 0")
    if a.global_crops < 1 or a.local_crops < 0 or (a.global_crops == 1 and a.local_crops == 0):
        raise SystemExit("need --global_crops ≥ 2, or ≥ 1 with --local_crops ≥ 1 (the CLS loss needs two views)")
    if a.num_jpegs < 1 or a.jpeg_size < 8:
        raise SystemExit("--num_jpegs must be ≥ 1 and --jpeg_size ≥ 8")


def trainer_args(a: argparse.Namespace, data_path: Path, out_dir: Path, name: str, *,
                 precision: str, compile_: bool, workers: int) -> argparse.Namespace:
    """The ``visionfm pretrain`` flags (library defaults for everything the benchmark does not set)."""
    parser = VFMArgumentParser(prog="visionfm pretrain")
    add_pretrain_arguments(parser)
    argv = [
        "--name", name, "--output_dir", str(out_dir), "--data_path", str(data_path), "--modality", MODALITY,
        "--arch", a.arch, "--patch_size", str(a.patch_size), "--input_size", str(a.input_size),
        "--batch_size_per_gpu", str(a.batch_size), "--global_crops_number", str(a.global_crops),
        "--local_crops_number", str(a.local_crops), "--local_crops_size", str(a.local_crops_size),
        "--num_workers", str(workers), "--precision", precision, "--device", a.device,
        "--seed", str(a.seed), "--no_progress",
    ]
    if compile_:
        argv.append("--compile")
    return validate_pretrain_args(parser.parse_args(argv))


# -- synthetic JPEG folder ------------------------------------------------------------------------------
def write_jpegs(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` distinct fundus-like JPEGs (dark surround, bright field, optic disc, smooth texture).

    Smooth content keeps file sizes and decode times close to real fundus photographs; random
    noise would compress poorly and decode slower than real data.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo = min(size, 128)  # colour and disc are smooth: compose them small, upsample once

    def radius(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
        return yy, xx, np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)

    yy, xx, r = radius(lo)
    shade = np.clip(1.2 - 1.4 * r, 0.0, 1.0)[..., None]
    field = (radius(size)[2] < 0.47)[..., None]  # sharp edge of the camera aperture, at full size
    grain = rng.normal(0.0, 3.0, (size, size, 1)).astype(np.float32) * field
    paths = []
    for i in range(n):
        colours = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        tex = np.asarray(colours.resize((lo, lo), Image.BICUBIC), np.float32)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        disc = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.004))[..., None]
        small = np.array([200.0, 90.0, 40.0], np.float32) * shade + (tex - 127.0) * 0.25 * shade + 120.0 * disc
        big = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        img = np.asarray(big, np.float32) * field + grain
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def fill_with_links(folder: Path, distinct: list[Path], total: int) -> None:
    """Grow ``folder`` to ``total`` files by hard-linking the distinct ones (copies if links fail).

    The sampler deals one batch to one worker, so an epoch must hold enough batches to keep every
    worker busy; links give that without writing (or decoding anything but) ``--num_jpegs`` files.
    """
    for j in range(len(distinct), total):
        src = distinct[j % len(distinct)]
        dst = folder / f"{j:06d}.jpg"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


# -- devices, timing, memory ----------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU: {model} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """CUDA: peak bytes allocated by tensors since the last reset. CPU: the process's maximum RSS
    (it never resets, so a later phase reports the maximum over all earlier phases too)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_memory_allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return float("nan"), "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss * scale / 2**30, "process_max_rss"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# -- attention and op accounting ------------------------------------------------------------------------
def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every timm attention module (the ones with a ``fused_attn`` switch)."""
    return [m for m in model.modules() if hasattr(m, "fused_attn") and hasattr(m, "qkv")]


def set_fused_attention(model: torch.nn.Module, fused: bool) -> int:
    """Switch every timm ``Attention`` between fused SDPA and explicit softmax; returns the count."""
    mods = attention_modules(model)
    for m in mods:
        m.fused_attn = fused
    return len(mods)


class OpTally(TorchDispatchMode):
    """Counts the ATen ops a region dispatches (forward and backward), by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def attention_ops(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.counts.items()) if "attention" in k or "softmax" in k}


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the CPU flash-attention kernels it does not know (the CUDA
    SDPA kernels are registered already), so fused and explicit attention count the same."""
    extra: dict[Any, Callable[..., int]] = {}
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        extra[fwd] = _cpu_sdpa_flops
    if bwd is not None:
        extra[bwd] = _cpu_sdpa_backward_flops
    return FlopCounterMode(display=False, custom_mapping=extra)


# -- inputs ---------------------------------------------------------------------------------------------
def synthetic_batch(trainer: IBOTTrainer, batch: int, epoch: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Normal-noise crops and real block masks (the trainer's masker), already on the device."""
    aug = trainer.augmentation
    dev = trainer.device
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(batch, 3, s, s, generator=g).to(dev) for s in aug.crop_sizes]
    rng = np.random.default_rng(seed)
    per_image = [aug.mask_fn(aug.crop_sizes, epoch, rng) for _ in range(batch)]
    masks = [torch.from_numpy(np.stack([m[c] for m in per_image])).to(dev) for c in range(len(aug.crop_sizes))]
    return crops, masks


# -- the original's execution style ---------------------------------------------------------------------
@torch.no_grad()
def loop_clip_gradients(model: torch.nn.Module, clip: float) -> list[float]:
    """The original ``utils.clip_gradients``: one norm, one host read and one branch per parameter."""
    norms = []
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def original_style_step(tr: IBOTTrainer, crops: list[torch.Tensor], masks: list[torch.Tensor], epoch: int, it: int) -> float:
    """One iteration as ``main_pretrain.py`` runs it (reference §4.5), on the trainer's own modules.

    Same models, loss, optimizer and schedules as :meth:`IBOTTrainer.train_step`; what differs is
    the execution style: no compile, per-parameter clipping and EMA loops, and host reads of the loss
    (finiteness check) and of the logged statistics every step. Precision and attention are set up
    by the caller (fp16 + GradScaler on GPU, explicit softmax attention).
    """
    args = tr.args
    g = args.global_crops_number
    set_group_hparams(tr.optimizer, float(tr.lr_schedule[it]), float(tr.wd_schedule[it]),
                      freeze_last_layer=epoch < args.freeze_last_layer)
    crops = [c.to(tr.device, non_blocking=True) for c in crops]
    masks = [m.to(tr.device, non_blocking=True) for m in masks]
    with tr.autocast():
        # The original calls the teacher without no_grad; its parameters do not require grad, so no
        # graph is built either way.
        t_cls, t_patch, _ = tr.teacher(crops[:g])
        s_cls, s_patch, s_local = tr.student(crops[:g], masks[:g], crops[g:])
        out = tr.loss_fn(s_cls, s_patch, t_cls, t_patch, masks[:g], epoch, student_local_cls=s_local)
    loss = out["loss"]
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"non-finite loss at iteration {it} (the original exits here)")
    b = crops[0].shape[0]
    acc = (t_cls[:b].argmax(-1) == s_cls[b : 2 * b].argmax(-1)).sum() / b if g > 1 else torch.zeros(())
    tr.optimizer.zero_grad()
    if tr.scaler is not None:
        tr.scaler.scale(loss).backward()
        if args.clip_grad:
            tr.scaler.unscale_(tr.optimizer)
            loop_clip_gradients(tr.student, args.clip_grad)
        cancel_last_layer_grads(tr.student, epoch, args.freeze_last_layer)
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
    else:
        loss.backward()
        if args.clip_grad:
            loop_clip_gradients(tr.student, args.clip_grad)
        cancel_last_layer_grads(tr.student, epoch, args.freeze_last_layer)
        tr.optimizer.step()
    with torch.no_grad():
        m = float(tr.momentum_schedule[it])
        for param_k, param_q in zip(tr.ema_teacher, tr.ema_student):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
    # MetricLogger.update(...) in the original: every logged tensor is read on the host each step.
    logged = [loss.item()] + [v.item() for v in out.values()] + [float(acc.item())]
    return logged[0]


# -- measurement helpers --------------------------------------------------------------------------------
StepFn = Callable[[list[torch.Tensor], list[torch.Tensor], int, int], Any]


def time_steps(step: StepFn, crops, masks, device: torch.device, epoch: int, first_it: int, n: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        step(crops, masks, epoch, first_it + i)
    sync(device)
    return time.perf_counter() - t0


def count_step(step: StepFn, crops, masks, device: torch.device, epoch: int, it: int) -> tuple[int, dict[str, int]]:
    """FLOPs and attention-related ATen ops of one step (forward and backward)."""
    tally = OpTally()
    with flop_counter() as fc, tally:
        step(crops, masks, epoch, it)
        sync(device)
    return int(fc.get_total_flops()), tally.attention_ops()


@contextlib.contextmanager
def eager_modules(tr: IBOTTrainer):
    """Run the trainer's step on the eager modules (FLOP counting cannot see inside compiled code)."""
    saved = tr.student_fwd, tr.teacher_fwd
    tr.student_fwd, tr.teacher_fwd = tr.student, tr.teacher
    try:
        yield
    finally:
        tr.student_fwd, tr.teacher_fwd = saved


def precision_name(tr: IBOTTrainer) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[tr.amp_dtype]


def time_loader(tr: IBOTTrainer, epoch: int, n_batches: int, consume: Callable[[Any, Any, int], Any] | None) -> float:
    """Seconds to pull ``n_batches`` from the trainer's loader (worker start-up included, as at the
    start of every training epoch), optionally running ``consume`` on each batch."""
    loader = tr._loader(epoch, 0)  # the trainer's own DataLoader: workers, pinning, prefetch
    sync(tr.device)
    t0 = time.perf_counter()
    batches = iter(loader)
    for i in range(n_batches):
        crops, masks = next(batches)
        if consume is not None:
            consume(crops, masks, i)
    sync(tr.device)
    elapsed = time.perf_counter() - t0
    del batches  # shuts the workers down
    return elapsed


def _it(tr: IBOTTrainer, epoch: int, i: int) -> int:
    return (epoch * tr.iters_per_epoch + i) % len(tr.lr_schedule)


# -- the benchmark --------------------------------------------------------------------------------------
def run_benchmark(a: argparse.Namespace) -> dict[str, Any]:
    _check_args(a)
    threads = torch.get_num_threads()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    tmp_root = Path(tempfile.mkdtemp(prefix="vfm_bench_", dir=a.tmp_dir))
    try:
        return _run(a, tmp_root)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp_root, ignore_errors=True)


def _run(a: argparse.Namespace, tmp_root: Path) -> dict[str, Any]:
    B = a.batch_size
    w = max(a.workers, 1)
    # Pipeline and end-to-end pull whole rounds of batches (one batch per worker per round).
    n_batches = w * math.ceil(max(a.steps + a.warmup, 1) / w)
    data_root = tmp_root / "data"
    folder = data_root / MODALITY
    t = time.perf_counter()
    if a.skip_pipeline:  # the trainer still needs a folder that fills one batch
        write_jpegs(folder, min(a.num_jpegs, B), min(a.jpeg_size, 64), a.seed)
        fill_with_links(folder, sorted(folder.iterdir()), B)
    else:
        distinct = write_jpegs(folder, a.num_jpegs, a.jpeg_size, a.seed)
        fill_with_links(folder, distinct, max(a.num_jpegs, n_batches * B))
    jpeg_write_s = time.perf_counter() - t

    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": {k: v for k, v in vars(a).items() if k not in ("json", "tmp_dir")},
    }
    # Each phase builds its own trainer and drops it on return, so the baseline's peak memory
    # (CUDA) does not include ours.
    dev = _measure_ours(a, data_root, tmp_root, n_batches, res)
    if "pipeline" in res:
        distinct_bytes = sum(p.stat().st_size for p in sorted(folder.iterdir())[: a.num_jpegs])
        res["pipeline"]["mean_jpeg_kib"] = distinct_bytes / a.num_jpegs / 1024
        res["pipeline"]["jpeg_write_s"] = jpeg_write_s
    free_memory(dev)
    if not a.skip_baseline:
        _measure_baseline(a, data_root, tmp_root, res)
        res["ratio_ours_over_baseline"] = res["ours"]["images_per_s"] / res["baseline"]["images_per_s"]
        free_memory(dev)

    if dev.type == "cuda" and (a.arch, B, a.input_size, a.patch_size, a.global_crops, a.local_crops) == (
        "vit_base", 128, 224, 16, 2, 0
    ):
        res["targets"] = {
            "images_per_s": TARGET_IMAGES_PER_S,
            "peak_memory_gib": TARGET_PEAK_GIB,
            "met": res["ours"]["images_per_s"] >= TARGET_IMAGES_PER_S
            and res["ours"]["peak_memory_gib"] <= TARGET_PEAK_GIB,
        }
    return res


def _measure_ours(a: argparse.Namespace, data_root: Path, tmp_root: Path, n_batches: int, res: dict[str, Any]) -> torch.device:
    """The real ``IBOTTrainer.train_step`` on synthetic device tensors, then the trainer's loader
    alone (pipeline) and feeding the step (end-to-end). Fills ``res``; returns the device."""
    B = a.batch_size
    targs = trainer_args(a, data_root, tmp_root / "runs", "ours", precision=a.precision,
                         compile_=a.compile, workers=a.workers)
    tr = IBOTTrainer(targs)
    dev = tr.device
    res["device"] = device_name(dev)
    res["device_type"] = dev.type
    epoch = targs.freeze_last_layer  # past the last-layer freeze: the regime of most of training
    crops, masks = synthetic_batch(tr, B, epoch, a.seed)
    meters = EpochMeters.zeros(dev)

    def step(c, m, e, it):
        return tr.train_step(c, m, e, it, meters)

    try:
        reset_peak(dev)
        t = time.perf_counter()
        time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, 0), a.warmup)
        warmup_s = time.perf_counter() - t
        with eager_modules(tr):
            flops, ops = count_step(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup))
        elapsed = time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup + 1), a.steps)
        peak, peak_kind = peak_memory_gib(dev)
        step_s = elapsed / a.steps
        mods = attention_modules(tr.student) + attention_modules(tr.teacher)
        res["ours"] = {
            "precision": precision_name(tr),
            "compiled": bool(a.compile),
            "images_per_s": B / step_s,
            "step_ms": 1e3 * step_s,
            "warmup_s": warmup_s,
            "flops_per_step": flops,
            "tflops_per_s": flops / step_s / 1e12,
            "peak_memory_gib": peak,
            "peak_memory_kind": peak_kind,
            "attention_modules": len(mods),
            "fused_attention_modules": sum(bool(m.fused_attn) for m in mods),
            "attention_ops": ops,
            "skipped_steps": tr.skipped_steps,
        }
        del crops, masks, mods

        if not a.skip_pipeline:
            pipe_s = time_loader(tr, epoch, n_batches, None)
            res["pipeline"] = {
                "workers": a.workers,
                "images_per_s": n_batches * B / pipe_s,
                "batches": n_batches,
                "distinct_jpegs": a.num_jpegs,
                "jpeg_size": a.jpeg_size,
            }

            def fed_step(c, m, i):
                tr.train_step(c, m, epoch, _it(tr, epoch, i), meters)

            e2e_s = time_loader(tr, epoch, n_batches, fed_step)
            res["end_to_end"] = {"images_per_s": n_batches * B / e2e_s, "batches": n_batches, "workers": a.workers}
    finally:
        tr.logger.close()
    return dev


def _measure_baseline(a: argparse.Namespace, data_root: Path, tmp_root: Path, res: dict[str, Any]) -> None:
    """The same step in the original's execution style (see :func:`original_style_step`)."""
    B = a.batch_size
    targs = trainer_args(a, data_root, tmp_root / "runs", "baseline", precision="fp16", compile_=False, workers=0)
    tr = IBOTTrainer(targs)
    dev = tr.device
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    # The original never enabled TF32 matmuls (the trainer does) and set cudnn.benchmark=True.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    try:
        n_attn = set_fused_attention(tr.student, False) + set_fused_attention(tr.teacher, False)
        epoch = targs.freeze_last_layer
        crops, masks = synthetic_batch(tr, B, epoch, a.seed)

        def step(c, m, e, it):
            return original_style_step(tr, c, m, e, it)

        reset_peak(dev)
        t = time.perf_counter()
        time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, 0), a.warmup)
        warmup_s = time.perf_counter() - t
        flops, ops = count_step(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup))
        elapsed = time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup + 1), a.steps)
        peak, peak_kind = peak_memory_gib(dev)
        step_s = elapsed / a.steps
        mods = attention_modules(tr.student) + attention_modules(tr.teacher)
        res["baseline"] = {
            "precision": precision_name(tr),
            "images_per_s": B / step_s,
            "step_ms": 1e3 * step_s,
            "warmup_s": warmup_s,
            "flops_per_step": flops,
            "tflops_per_s": flops / step_s / 1e12,
            "peak_memory_gib": peak,
            "peak_memory_kind": peak_kind + ("" if dev.type == "cuda" else " (max over the whole process so far)"),
            "attention_modules": n_attn,
            "fused_attention_modules": sum(bool(m.fused_attn) for m in mods),
            "attention_ops": ops,
            "grad_scaler": tr.scaler is not None,
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved
        tr.logger.close()


# -- report ---------------------------------------------------------------------------------------------
def format_table(res: dict[str, Any]) -> str:
    c = res["config"]
    o = res["ours"]
    b = res.get("baseline")

    def num(x: float, fmt: str = "{:,.1f}") -> str:
        return fmt.format(x) if x is not None and math.isfinite(x) else "n/a"

    def row(label: str, ours: str, base: str = "", ratio: str = "") -> str:
        return f"  {label:<36}{ours:>18}{base:>24}{ratio:>9}"

    mem_kind = "CUDA max allocated" if o["peak_memory_kind"].startswith("cuda") else "process max RSS"
    def attn(d: dict[str, Any]) -> str:
        kind = "fused SDPA" if d["fused_attention_modules"] else "explicit softmax"
        return f"{kind} ×{d['attention_modules']}"

    lines = [
        "VisionFM iBOT pretraining throughput",
        f"  date      {res['date']}   torch {res['torch']}",
        f"  device    {res['device']}",
        f"  config    {c['arch']}/{c['patch_size']}, batch {c['batch_size']}, {c['global_crops']}×{c['input_size']}px global"
        f" + {c['local_crops']}×{c['local_crops_size']}px local crops; {c['steps']} timed steps after {c['warmup']} warm-up",
        "",
        row("", "ours", "baseline (original)" if b else "", "ratio" if b else ""),
        row("precision", o["precision"] + (" +compile" if o["compiled"] else ""), b["precision"] if b else ""),
        row("attention", attn(o), attn(b) if b else ""),
        row("images/s (synthetic)", num(o["images_per_s"]), num(b["images_per_s"]) if b else "",
            num(res["ratio_ours_over_baseline"], "{:.2f}×") if b else ""),
        row("step time (ms)", num(o["step_ms"]), num(b["step_ms"]) if b else ""),
        row("GFLOP per step (counted)", num(o["flops_per_step"] / 1e9), num(b["flops_per_step"] / 1e9) if b else ""),
        row("achieved TFLOP/s", num(o["tflops_per_s"], "{:.3f}"), num(b["tflops_per_s"], "{:.3f}") if b else ""),
        row(f"peak memory GiB ({mem_kind})", num(o["peak_memory_gib"], "{:.2f}"),
            num(b["peak_memory_gib"], "{:.2f}") if b else ""),
    ]
    p = res.get("pipeline")
    if p:
        lines += [
            "",
            f"  input pipeline   {num(p['images_per_s'])} images/s  ({p['workers']} workers, {p['batches']} batches, "
            f"{p['distinct_jpegs']} distinct {p['jpeg_size']}px JPEGs, {num(p['mean_jpeg_kib'])} KiB each)",
            f"  end-to-end       {num(res['end_to_end']['images_per_s'])} images/s  (the loader feeding the real step)",
        ]
    tg = res.get("targets")
    if tg:
        lines += ["", f"  target (H100 ViT-B/16 b128): ≥ {tg['images_per_s']:,.0f} images/s and ≤ {tg['peak_memory_gib']:.0f} GiB"
                  f" → {'MET' if tg['met'] else 'NOT MET'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    res = run_benchmark(args)
    print(format_table(res), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
