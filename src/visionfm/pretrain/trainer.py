"""The iBOT training loop (reference §4.5–§4.8), one code path for CPU, one GPU and torchrun DDP.

Per iteration: schedules → (device path) batched photometric augmentation → teacher and student
forward under autocast, the head's patch projection only on the masked tokens → iBOT loss (centres
all-reduced) → backward → clipping → last-layer freeze → optimizer step → fused EMA.

No host sync per step: with AdamW or SGD (fused kernels) a non-finite loss or gradient makes the
optimizer skip its update on the device (``found_inf``) and the EMA weight 0, so weights, moments and
teacher stay put; weights made non-finite by an applied update stop the run at the next read. The
counters live on the device and are read every ``--log_freq`` iterations,
before each checkpoint and at epoch ends. LARS and fp16 (GradScaler) keep one host read per step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from visionfm import __version__
from visionfm.config import PretrainConfig
from visionfm.data.layouts.pretrain import PretrainImages
from visionfm.data.modalities import MODALITY_NAMES, canonical_modality
from visionfm.engine.checkpoint import (
    capture_rng_state,
    find_resume,
    load_training_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from visionfm.engine.distributed import DistEnv, barrier, init_distributed, seed_everything
from visionfm.engine.fsdp import local_tensor
from visionfm.engine.logging import RunLogger, progress
from visionfm.engine.run_folder import claim_run_dir
from visionfm.errors import CheckpointError, ConfigError, NonFiniteLossError
from visionfm.io.atomic import save_text_atomic
from visionfm.io.finite import all_finite
from visionfm.pretrain.augment import IBOTAugmentation
from visionfm.pretrain.config import resolve_pretrain_path
from visionfm.pretrain.data import PretrainCropDataset, ResumableSampler, collate_crops, loader_generator
from visionfm.pretrain.lars import LARS
from visionfm.pretrain.loss import IBOTLoss
from visionfm.pretrain.masking import PretrainMasker
from visionfm.pretrain.model import MultiCropNetwork, build_student_teacher
from visionfm.pretrain.optim import (
    adapt_optimizer_state,
    cancel_last_layer_grads,
    clip_gradients_global,
    clip_gradients_per_param,
    common_params,
    ema_update_,
    param_groups,
    set_group_hparams,
)
from visionfm.pretrain.schedules import cosine_schedule
from visionfm.pretrain.views import (
    BatchPhotometric,
    GeometricViews,
    ViewBatch,
    collate_views,
    decode_deferred,
    min_decode_pixels,
    view_specs,
)

__all__ = ["IBOTTrainer", "run_pretrain", "resolve_precision", "NonFiniteLossError"]

log = logging.getLogger(__name__)



def resolve_precision(args: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None means fp32. CPU always runs fp32."""
    if device.type != "cuda":
        return None
    choice = args.precision
    if choice == "auto":
        if not args.use_fp16:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


def resolve_modalities(args: PretrainConfig) -> list[str]:
    raw = [m.strip() for m in str(args.modality).split(",") if m.strip()]
    if args.scheme == "mix":
        if len(raw) == 1 and raw[0].lower() == "all":
            return list(MODALITY_NAMES)
        return [canonical_modality(m) for m in raw]
    if len(raw) != 1:
        raise ConfigError(f"--modality {args.modality!r}: several modalities need --scheme mix")
    return [canonical_modality(raw[0])]


def parse_modality_weights(spec: str) -> str | dict[str, float]:
    if spec in ("uniform", "balanced"):
        return spec
    out: dict[str, float] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ConfigError(f"--modality_weights {spec!r}: expected uniform, balanced or NAME=W,NAME=W")
        name, value = part.split("=", 1)
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--modality_weights: {value!r} is not a number") from None
    return out


def resolve_augment_on(choice: str, device: torch.device) -> str:
    """``auto``: photometry on the device when training on a GPU, in the workers (PIL) otherwise."""
    if choice == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return choice


def select_masked_tokens(masks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` patch indices per row of ``masks [N, P]`` (bool), masked ones first, and which of them
    are masked. Fixed shapes, no host sync; ``k`` must bound the masked count of every row."""
    n, p = masks.shape
    if k >= p:
        return torch.arange(p, device=masks.device).expand(n, p), masks
    order = torch.argsort((~masks).to(torch.uint8), dim=1, stable=True)[:, :k]
    return order, masks.gather(1, order)


@dataclass
class EpochMeters:
    """Sums kept on the device; read on the host only when logging."""

    loss: torch.Tensor
    cls: torch.Tensor
    patch: torch.Tensor
    acc: torch.Tensor
    steps: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> EpochMeters:
        z = lambda: torch.zeros((), device=device, dtype=torch.float64)  # noqa: E731
        return cls(z(), z(), z(), z(), z())

    def state(self, all_reduce: bool = False) -> dict[str, torch.Tensor]:
        """The running sums (on the CPU) for a mid-epoch checkpoint: a resumed epoch logs the
        averages of all its iterations, not only of those after the resume. ``all_reduce``: the sums
        of every rank (a collective), which the resume gives to rank 0 alone."""
        vec = torch.stack([getattr(self, f.name).detach() for f in dataclasses.fields(self)])
        if all_reduce and torch.distributed.is_initialized():
            vec = vec.clone()
            torch.distributed.all_reduce(vec)
        return {f.name: v.cpu().clone() for f, v in zip(dataclasses.fields(self), vec.unbind())}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor] | None, device: torch.device) -> EpochMeters:
        meters = cls.zeros(device)
        for f in dataclasses.fields(cls):
            if state and f.name in state:
                setattr(meters, f.name, state[f.name].to(device=device, dtype=torch.float64).clone())
        return meters

    def add(self, out: dict[str, torch.Tensor], acc: torch.Tensor, ok: torch.Tensor | None = None) -> None:
        """Add one step's values; with ``ok`` (a device bool) a skipped step adds nothing."""
        def v(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().double()
            return t if ok is None else torch.where(ok, t, torch.zeros_like(t))

        self.loss += v(out["loss"])
        self.cls += v(out["cls"])
        self.patch += v(out["patch"])
        self.acc += v(acc)
        self.steps += 1 if ok is None else ok.double()

    def averages(self, all_reduce: bool) -> dict[str, float]:
        vec = torch.stack([self.loss, self.cls, self.patch, self.acc, self.steps])
        if all_reduce and torch.distributed.is_initialized():
            torch.distributed.all_reduce(vec)
        n = max(float(vec[4]), 1.0)
        return {
            "loss": float(vec[0]) / n, "cls": float(vec[1]) / n, "patch": float(vec[2]) / n, "acc": float(vec[3]) / n,
            "steps": float(vec[4]),  # the applied (not skipped) steps
        }


class IBOTTrainer:
    """Owns models, optimizer, schedules and the loop; built from the parsed ``visionfm pretrain`` flags."""

    #: called with the global iteration index after every training step (tests inject faults here).
    after_iteration: Any = None

    def __init__(self, args: PretrainConfig, env: DistEnv | None = None) -> None:
        self.args = args
        self.env = env or init_distributed(args.device)
        self.device = self.env.device
        self.run_dir = Path(args.output_dir) / args.name
        # an earlier run here is continued (--resume/--load_from), replaced (--overwrite) or refused
        claim_run_dir(self.run_dir, resume=bool(args.resume or args.load_from), overwrite=args.overwrite,
                      resume_flag="--resume auto", named=bool(args.name), is_main=self.env.is_main)
        self.amp_dtype = resolve_precision(args, self.device)
        seed_everything(args.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # data
        self.modalities = resolve_modalities(args)
        normalize = True  # --scheme mix normalises each image with its own modality (the original did not normalise)
        self.masker = PretrainMasker(
            args.pred_ratio, args.pred_ratio_var, args.pred_start_epoch, args.pred_shape, args.patch_size
        )
        specs = view_specs(args.input_size, args.global_crops_scale, args.local_crops_scale,
                           args.global_crops_number, args.local_crops_number, args.local_crops_size)
        self.augment_on = resolve_augment_on(args.augment_on, self.device)
        if args.decode == "gpu":
            if self.device.type != "cuda":
                raise ConfigError("--decode gpu decodes JPEGs with nvJPEG and needs a CUDA device; "
                                  "on the CPU use --decode reduced (the default)")
            if args.augment_on == "cpu":
                raise ConfigError("--decode gpu works with --augment_on device (or auto), not --augment_on cpu")
            self.augment_on = "device"
        min_pixels = min_decode_pixels(specs) if args.decode in ("reduced", "gpu") else 0
        self.augmentation: IBOTAugmentation | GeometricViews
        self.photometric: BatchPhotometric | None = None
        if self.augment_on == "device":
            self.augmentation = GeometricViews(specs, self.masker.make_masks)
            self.photometric = BatchPhotometric(normalize=normalize).to(self.device)
            self.collate = collate_views
        else:
            self.augmentation = IBOTAugmentation(
                input_size=args.input_size,
                global_crops_scale=tuple(args.global_crops_scale),
                local_crops_scale=tuple(args.local_crops_scale),
                global_crops_number=args.global_crops_number,
                local_crops_number=args.local_crops_number,
                local_crops_size=args.local_crops_size,
                normalize=normalize,
                patch_size=args.patch_size,
                mask_fn=self.masker.make_masks,
            )
            self.collate = collate_crops
        from visionfm.data.shards import ShardImages, is_shard_index

        if is_shard_index(args.data_path):  # tar shards (visionfm prepare --format shards): indexed, random access
            if args.decode == "gpu":
                raise ConfigError("--decode gpu reads image files; with a shard index use --decode cpu")
            self.images = ShardImages(args.data_path, self.modalities, on_error=args.on_corrupt,
                                      min_pixels=min_pixels)
        else:
            self.images = PretrainImages(args.data_path, self.modalities, on_error=args.on_corrupt,
                                         min_pixels=min_pixels, defer_jpeg=args.decode == "gpu")
        weights = None
        if args.scheme == "mix" and len(self.modalities) > 1:
            spec = parse_modality_weights(args.modality_weights)
            if spec != "uniform":
                weights = self.images.sample_weights(spec)
        self.dataset = PretrainCropDataset(self.images, self.augmentation, args.seed)
        self.sampler = ResumableSampler(
            len(self.images), args.batch_size_per_gpu, self.env.rank, self.env.world_size, args.seed, weights
        )
        self.iters_per_epoch = self.sampler.iters_per_epoch

        # models
        student, teacher = build_student_teacher(args)
        if args.load_pretrain:
            self._load_pretrained_backbones(student, teacher, resolve_pretrain_path(args))
        teacher.load_state_dict(student.state_dict(), strict=False)
        for p in teacher.parameters():
            p.requires_grad_(False)
        if args.grad_checkpointing:
            student.backbone.set_grad_checkpointing(True)
        bn_head = student.head.has_batchnorm or teacher.head.has_batchnorm
        student.to(self.device)
        # The original never puts its teacher in eval mode: with a BatchNorm head the teacher
        # normalises with its batch's statistics and updates its own running averages (the EMA
        # copies parameters only). Without BatchNorm both modes compute the same (no dropout or
        # drop-path in the teacher).
        teacher.to(self.device).train(bn_head)
        # Patch outputs are needed at the masked positions only; a BatchNorm head must still see
        # every token (its statistics), so it gets all of them.
        n_patches = (args.input_size // args.patch_size) ** 2
        self.k_select = n_patches if bn_head else self.masker.max_masked(args.input_size)
        if self.env.distributed and bn_head:
            if self.device.type == "cuda":  # both networks, as the original
                student.head.sync_batchnorm_()
                teacher.head.sync_batchnorm_()
            else:
                log.warning("--norm_in_head %s on CPU processes: SyncBatchNorm needs CUDA, so each process "
                            "keeps its own BatchNorm statistics", args.norm_in_head)
        self.fsdp = bool(args.fsdp)
        if self.fsdp:  # FSDP2: each block's parameters, gradients and optimizer state sharded over the ranks
            self._check_fsdp()
            from visionfm.engine.fsdp import shard_network

            gather_dtype = self.amp_dtype if self.amp_dtype == torch.bfloat16 else None
            shard_network(student, param_dtype=gather_dtype)
            shard_network(teacher, param_dtype=gather_dtype)  # the same layout: the EMA runs on the local shards
        self.student: MultiCropNetwork = student
        self.teacher: MultiCropNetwork = teacher
        self.student_fwd: torch.nn.Module = student
        if self.env.distributed and not self.fsdp:
            self.student_fwd = DDP(student, device_ids=[self.env.local_rank] if self.device.type == "cuda" else None)
        self.teacher_fwd: torch.nn.Module = teacher
        if args.compile:
            self.student_fwd = torch.compile(self.student_fwd)
            self.teacher_fwd = torch.compile(self.teacher_fwd)
        self.ema_teacher, self.ema_student = common_params(teacher, student)

        shared = args.shared_head or args.shared_head_teacher
        self.loss_fn = IBOTLoss(
            args.out_dim,
            args.out_dim if shared else args.patch_out_dim,
            global_crops=args.global_crops_number,
            local_crops=args.local_crops_number,
            warmup_teacher_temp=args.warmup_teacher_temp,
            teacher_temp=args.teacher_temp,
            warmup_teacher_patch_temp=args.warmup_teacher_patch_temp,
            teacher_patch_temp=args.teacher_patch_temp,
            warmup_teacher_temp_epochs=args.warmup_teacher_temp_epochs,
            epochs=args.epochs,
            lambda1=args.lambda1,
            lambda2=args.lambda2,
            mim_start_epoch=args.pred_start_epoch,
        ).to(self.device)
        self.loss_call = self.loss_fn.forward_selected
        self.photometric_call = self.photometric
        if args.compile:
            self.loss_call = torch.compile(self.loss_fn.forward_selected)
            if self.photometric is not None:
                self.photometric_call = torch.compile(self.photometric)

        # optimisation
        # --official_weight_decay: exactly the original's two groups (the last layer is frozen by dropping
        # its gradients, as there), so the optimizer state also resumes in the original
        groups = param_groups(student, args.weight_decay, official_decay=args.official_weight_decay,
                              split_last_layer=not args.official_weight_decay)
        if args.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=0.0, fused=True)
        elif args.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=0.9, fused=True)
        else:
            self.optimizer = LARS(groups, lr=0.0)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        # Fused AdamW/SGD skip their update on the device when found_inf is 1: no per-step host read.
        self.device_skip = args.optimizer in ("adamw", "sgd") and self.scaler is None
        total_batch = args.batch_size_per_gpu * self.env.world_size
        ipe = self.iters_per_epoch
        self.lr_schedule = cosine_schedule(
            args.lr * total_batch / 256.0, args.min_lr, args.epochs, ipe, args.warmup_epochs
        )
        self.wd_schedule = cosine_schedule(args.weight_decay, args.weight_decay_end, args.epochs, ipe)
        self.momentum_schedule = cosine_schedule(args.momentum_teacher, 1.0, args.epochs, ipe)
        for flags, values in (("--lr/--min_lr", self.lr_schedule),
                              ("--weight_decay/--weight_decay_end", self.wd_schedule),
                              ("--momentum_teacher", self.momentum_schedule)):
            if not np.isfinite(values).all():  # a non-finite rate would make every weight NaN at the first step
                raise ConfigError(f"{flags}: the schedule they give is not finite (it reaches "
                                  f"{values[~np.isfinite(values)][0]}); expected finite numbers")
        self._momentum_dev = torch.as_tensor(self.momentum_schedule, dtype=torch.float32, device=self.device)
        self.student_params = [p for p in student.parameters() if p.requires_grad]

        self.start_epoch = 0
        self.start_iter = 0
        self._resume_meters: dict[str, torch.Tensor] | None = None  # running sums of a mid-epoch checkpoint
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        # device-side counters of the fused path (skips since the last read, current streak),
        # folded into the two above by _check_nonfinite()
        self._streak_dev = torch.zeros((), dtype=torch.int64, device=self.device)
        self._skipped_dev = torch.zeros((), dtype=torch.int64, device=self.device)
        self.logger = RunLogger(self.run_dir, enabled=self.env.is_main)
        self.history: list[dict[str, Any]] = []

    # -- set-up helpers -----------------------------------------------------------------------------
    def _check_fsdp(self) -> None:
        """What ``--fsdp`` needs: several processes, an optimizer whose update is elementwise (LARS
        normalises by whole-tensor norms), and no fp16 loss scaling."""
        args = self.args
        if not self.env.distributed:
            raise ConfigError("--fsdp shards the model over processes: launch with torchrun --nproc_per_node N "
                              "(N ≥ 2), or leave --fsdp out to train in one process")
        if args.optimizer == "lars":
            raise ConfigError("--fsdp works with --optimizer adamw or sgd, not lars (its trust ratio needs whole "
                              "parameters)")
        if self.amp_dtype == torch.float16:
            raise ConfigError("--fsdp trains in bf16 or fp32, not fp16 (no loss scaling on sharded gradients): "
                              "add --precision bf16")

    def _everywhere(self, ok: torch.Tensor) -> torch.Tensor:
        """A device bool that holds on every rank: with FSDP each rank sees only its shards' values."""
        if not self.fsdp:
            return ok
        bad = (~ok).float()
        torch.distributed.all_reduce(bad)
        return bad == 0

    def _load_pretrained_backbones(self, student: MultiCropNetwork, teacher: MultiCropNetwork, path: str) -> None:
        """Initialise both backbones from a local file: the student from its ``student`` entry when the
        file has one (else ``teacher``/bare), the teacher from ``teacher``. Mismatches are errors."""
        from visionfm.models.encoder import resample_pos_embed
        from visionfm.models.loading import read_backbone_state_dict

        def load_into(net: MultiCropNetwork, key: str) -> None:
            try:
                sd, _ = read_backbone_state_dict(path, key)
            except CheckpointError:
                sd, _ = read_backbone_state_dict(path, "teacher")
            own = net.backbone.state_dict()
            if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
                sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], net.backbone.grid_size)
            missing = [k for k in own if k not in sd and k != "masked_embed"]
            bad = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
            if missing or bad:
                raise ConfigError(
                    f"--pretrain_path {path}: does not fit --arch {self.args.arch}/{self.args.patch_size} "
                    f"(missing {missing[:3]}, shape mismatch {bad[:3]})"
                )
            net.backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)

        load_into(student, "student")
        load_into(teacher, "teacher")
        log.info("initialised student and teacher backbones from %s", path)

    def _checkpoint_state(self, epoch: int, epoch_iter: int,
                          meters: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """Everything a resume needs. ``history`` (the finished epochs' log lines) lets a resume make
        ``log.txt`` one line per finished epoch whatever the kill point; ``epoch_meters`` (mid-epoch
        only) the running sums of the interrupted epoch."""
        args_dict = self.args.to_dict()
        if self.fsdp:  # consolidated on rank 0 (a collective: every rank gathers)
            from visionfm.engine.fsdp import full_model_state, full_optimizer_state

            student_sd, teacher_sd = full_model_state(self.student), full_model_state(self.teacher)
            optimizer_sd = full_optimizer_state(self.student, self.optimizer)
        else:
            student_sd, teacher_sd = self.student.state_dict(), self.teacher.state_dict()
            optimizer_sd = self.optimizer.state_dict()
        state: dict[str, Any] = {
            "student": {f"module.{k}": v for k, v in student_sd.items()},
            # the original's teacher is DDP-wrapped (keys ``module.*``) exactly when its head has BatchNorm
            "teacher": {f"{'module.' if self.teacher.head.has_batchnorm else ''}{k}": v
                        for k, v in teacher_sd.items()},
            "optimizer": optimizer_sd,
            "epoch": epoch,
            "epoch_iter": epoch_iter,
            "iteration": epoch * self.iters_per_epoch + epoch_iter,
            "args": argparse.Namespace(**args_dict),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in args_dict.items()},
            "ibot_loss": self.loss_fn.state_dict(),
            "rng": capture_rng_state(),
            "world_size": self.env.world_size,
            "skipped_steps": self.skipped_steps,
            "history": [dict(h) for h in self.history],
            "visionfm_version": __version__,
        }
        if epoch_iter and meters is not None:
            state["epoch_meters"] = meters
        if self.scaler is not None:
            state["fp16_scaler"] = self.scaler.state_dict()
        return state

    def save(self, epoch: int, epoch_iter: int, also_numbered: bool = False,
             meters: EpochMeters | None = None) -> None:
        """Rank 0 writes ``checkpoint.pth`` (and the numbered copy). With ``--fsdp`` every rank first writes its
        shards (``checkpoint_dcp/``, torch.distributed.checkpoint), then the consolidated file is gathered, and
        all ranks leave together once it is written."""
        # the interrupted epoch's running sums over all ranks (a collective, so before anyone returns)
        sums = meters.state(all_reduce=self.env.distributed) if epoch_iter and meters is not None else None
        if self.fsdp:
            from visionfm.engine.fsdp import save_sharded

            save_sharded(self.run_dir, epoch * self.iters_per_epoch + epoch_iter, self.student, self.teacher,
                         self.optimizer)
        elif not self.env.is_main:
            return
        state = self._checkpoint_state(epoch, epoch_iter, sums)
        if self.env.is_main:
            save_checkpoint(state, self.run_dir / "checkpoint.pth")
            if also_numbered:
                save_checkpoint(state, self.run_dir / f"checkpoint{epoch - 1:04d}.pth")
        if self.fsdp:  # nobody runs ahead of a half-written save: a node lost now leaves one consistent checkpoint
            barrier()

    def maybe_resume(self) -> bool:
        path = find_resume(self.run_dir, self.args.resume, self.args.load_from)
        if path is None:
            if self.args.resume:  # nothing to continue: a log.txt without its checkpoint is not this run's
                self.logger.rewind([])
            return False
        ckpt = load_training_checkpoint(path)

        def unwrap(sd: dict[str, Any]) -> dict[str, Any]:
            return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}

        if self.fsdp:
            self._load_sharded_or_full(path, ckpt, unwrap)
        else:
            self.student.load_state_dict(unwrap(ckpt["student"]))
            self.teacher.load_state_dict(unwrap(ckpt["teacher"]))
            if "optimizer" in ckpt:  # ours, or the original's two groups: matched by parameter name
                self.optimizer.load_state_dict(adapt_optimizer_state(ckpt["optimizer"], self.optimizer,
                                                                     self.student, str(path)))
        if "optimizer" in ckpt:
            if self.device_skip:  # a saved group may carry fused=False (an older or official file)
                for group in self.optimizer.param_groups:
                    group["fused"], group["foreach"] = True, False
        if self.scaler is not None and "fp16_scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["fp16_scaler"])
        if "ibot_loss" in ckpt:
            self.loss_fn.load_state_dict(ckpt["ibot_loss"])
        self.start_epoch = int(ckpt.get("epoch", 0))
        self.start_iter = int(ckpt.get("epoch_iter", 0))
        self.skipped_steps = int(ckpt.get("skipped_steps", 0))
        saved_world = int(ckpt.get("world_size", self.env.world_size))
        if self.start_iter and saved_world != self.env.world_size:
            log.warning("checkpoint was written with %d processes, now %d: restarting epoch %d from its start",
                        saved_world, self.env.world_size, self.start_epoch)
            self.start_iter = 0
        saved_meters = ckpt.get("epoch_meters")
        # the sums of all ranks: rank 0 continues them, the others count from zero (the epoch end adds them up)
        self._resume_meters = (saved_meters if self.start_iter and isinstance(saved_meters, dict) and self.env.is_main
                               else None)
        if isinstance(ckpt.get("history"), list):  # ours: log.txt becomes one line per finished epoch
            self.history = [dict(h) for h in ckpt["history"]]
            self.logger.rewind(self.history)
        # last: nothing between this and the first step may draw from the global generators
        restore_rng_state(ckpt.get("rng"))
        log.info("resumed from %s after %d finished epoch(s), at iteration %d of epoch %d", path, self.start_epoch,
                 self.start_iter, self.start_epoch + 1)
        return True

    def _load_sharded_or_full(self, path: Path, ckpt: dict[str, Any], unwrap: Any) -> None:
        """``--fsdp`` resume: the shards of ``checkpoint_dcp/`` when they hold the same iteration as ``path``
        (each rank reads its part), else the consolidated weights and optimizer state of ``path`` (any
        checkpoint: an FSDP or DDP run's, or the original's), sharded on load."""
        from visionfm.engine.fsdp import (
            load_full_model_state,
            load_full_optimizer_state,
            load_sharded,
            sharded_iteration,
        )

        shards_at = sharded_iteration(self.run_dir) if path.parent.resolve() == self.run_dir.resolve() else None
        if shards_at is not None and shards_at == int(ckpt.get("iteration", -1)):
            load_sharded(self.run_dir, self.student, self.teacher, self.optimizer)
            log.info("--fsdp: weights and optimizer state from the shards in %s", self.run_dir / "checkpoint_dcp")
            return
        load_full_model_state(self.student, unwrap(ckpt["student"]), f"{path} (student)")
        load_full_model_state(self.teacher, unwrap(ckpt["teacher"]), f"{path} (teacher)")
        if "optimizer" in ckpt:
            load_full_optimizer_state(self.student, self.optimizer,
                                      adapt_optimizer_state(ckpt["optimizer"], self.optimizer, self.student,
                                                            str(path)))
        log.info("--fsdp: weights and optimizer state from the consolidated %s", path)

    def _loader(self, epoch: int, start_iter: int) -> DataLoader:
        self.sampler.set_epoch(epoch, start_iter)
        workers = self.args.num_workers
        return DataLoader(
            self.dataset,
            batch_size=self.args.batch_size_per_gpu,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            collate_fn=self.collate,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            generator=loader_generator(self.args.seed, epoch),  # never a draw from the global generator
        )

    # -- one step -----------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_batch(self, batch: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A loader batch → ``(crops, masks)`` on the device; the device path augments here."""
        if isinstance(batch, ViewBatch):
            assert self.photometric_call is not None
            modality = batch.modality.to(self.device, non_blocking=True)
            raw = [c.to(self.device, non_blocking=True) for c in batch.crops]
            decode_deferred(batch, raw, self.device)  # --decode gpu: nvJPEG, then the crops on the device
            crops = [self.photometric_call(c, p.to(self.device, non_blocking=True), modality)
                     for c, p in zip(raw, batch.params)]
            masks = batch.masks
        else:
            crops, masks = batch
        g = self.args.global_crops_number
        if self.k_select < masks[0][0].numel() and masks[0].device.type == "cpu":
            # loader masks are still on the CPU: checking the token bound here costs no device sync
            most = int(torch.cat(masks[:g]).flatten(1).sum(1).max())
            if most > self.k_select:
                raise RuntimeError(f"a mask has {most} masked patches, more than the bound {self.k_select}")
        return crops, [m.to(self.device, non_blocking=True) for m in masks]

    def train_step(
        self, crops: list[torch.Tensor], masks: list[torch.Tensor], epoch: int, it: int, meters: EpochMeters
    ) -> None:
        """One optimisation step. A non-finite loss leaves weights, optimizer state and teacher as
        they were (on the device with fused optimizers; see :meth:`_check_nonfinite`)."""
        args = self.args
        g = args.global_crops_number
        set_group_hparams(self.optimizer, float(self.lr_schedule[it]), float(self.wd_schedule[it]),
                          freeze_last_layer=epoch < args.freeze_last_layer)
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        masks = [m.to(self.device, non_blocking=True) for m in masks]
        global_masks = torch.cat(masks[:g]).flatten(1)  # [G*B, P], the rows of the global crops
        select, valid = select_masked_tokens(global_masks, self.k_select)
        with self.autocast():
            with torch.no_grad():
                t_cls, t_patch, _, t_mean = self.teacher_fwd(crops[:g], select=select, patch_mean=True)
            if self.fsdp:
                # FSDP2 keeps a root's parameters gathered after its forward (for the backward that follows);
                # the teacher has no backward, and gathered copies would miss the EMA update of its shards
                self.teacher.reshard()  # type: ignore[attr-defined]
            s_cls, s_patch, s_local, _ = self.student_fwd(
                crops[:g], masks[:g] if args.use_masked_im_modeling else None, crops[g:], select=select
            )
            out = self.loss_call(s_cls, s_patch, t_cls, t_patch, t_mean, valid, epoch, student_local_cls=s_local)
        loss = out["loss"]
        ok = torch.isfinite(loss)
        if self.env.distributed:
            # one rank's non-finite loss poisons every rank's averaged gradients: all skip together
            bad_anywhere = (~ok).float()
            torch.distributed.all_reduce(bad_anywhere)
            ok = bad_anywhere == 0
        if self.scaler is not None:  # fp16: the one per-step host read (the GradScaler skips inf gradients itself)
            if not bool(ok):
                self._skip_on_host(it)
                return
            self.nonfinite_streak = 0
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if args.clip_grad:
                self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if args.clip_grad:
            if args.clip_mode == "global":
                clip_gradients_global(self.student_params, args.clip_grad)
            else:
                clip_gradients_per_param(self.student_params, args.clip_grad)
        cancel_last_layer_grads(self.student, epoch, args.freeze_last_layer)
        if self.scaler is None:
            # a finite loss can still give NaN/inf gradients (identical on every rank after DDP's
            # all-reduce): such a step is skipped too, before it touches weights, moments or the EMA
            ok = ok & self._everywhere(all_finite(None if p.grad is None else local_tensor(p.grad)
                                                  for p in self.student_params))
            if not self.device_skip:  # LARS: the one per-step host read
                if not bool(ok):
                    self._skip_on_host(it)
                    return
                self.nonfinite_streak = 0
        momentum: float | torch.Tensor = float(self.momentum_schedule[it])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.device_skip:
                bad = ~ok
                self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]  # fused kernels skip on 1
                momentum = torch.where(ok, self._momentum_dev[it], torch.ones_like(self._momentum_dev[it]))
                self._skipped_dev += bad
                self._streak_dev = torch.where(ok, torch.zeros_like(self._streak_dev), self._streak_dev + 1)
            self.optimizer.step()
        ema_update_(self.ema_teacher, self.ema_student, momentum)
        with torch.no_grad():
            b = crops[0].shape[0]
            if g > 1:
                acc = (t_cls[:b].argmax(-1) == s_cls[b : 2 * b].argmax(-1)).float().mean()
            else:
                acc = torch.zeros((), device=self.device)
        meters.add(out, acc, ok)

    def _skip_on_host(self, it: int) -> None:
        """LARS / fp16: count a skipped step (non-finite loss or gradients) and drop its gradients."""
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        log.warning("non-finite loss or gradients at iteration %d (streak %d); step skipped", it, self.nonfinite_streak)
        self.optimizer.zero_grad(set_to_none=True)
        self._raise_if_diverged(it)

    def _check_nonfinite(self, it: int) -> None:
        """Read the device-side flags (at logging, saving and epoch ends): stop a run whose weights became
        non-finite, or that skipped ``--max_nonfinite_steps`` steps in a row (non-finite loss or gradients).

        An update can still overflow (e.g. a huge --lr): the weights are checked here, at every read (before
        every save), not after every step, since a NaN/inf weight stays non-finite under further updates."""
        bad_weights = ~self._everywhere(all_finite(local_tensor(p) for p in self.student_params))
        if self.device_skip:
            bad_params, new, streak = (int(v) for v in torch.stack(
                [bad_weights.long(), self._skipped_dev, self._streak_dev]).tolist())
            self._skipped_dev.zero_()
        else:
            bad_params, new, streak = int(bad_weights), 0, self.nonfinite_streak
        if bad_params:
            raise NonFiniteLossError(
                f"the student's weights became non-finite by iteration {it} (an optimizer step overflowed); "
                f"stopping before saving. The last good checkpoint in {self.run_dir} is intact. Try a lower --lr "
                "or --clip_grad."
            )
        if new > 0:
            log.warning("%d non-finite loss(es) or gradient(s) up to iteration %d; those steps were skipped", new, it)
        self.skipped_steps += new
        self.nonfinite_streak = streak
        self._raise_if_diverged(it)

    def _raise_if_diverged(self, it: int) -> None:
        if self.nonfinite_streak >= self.args.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_streak} consecutive non-finite losses or gradients (last at iteration {it}); "
                "stopping. "
                f"The last good checkpoint in {self.run_dir} is intact. Try a lower --lr, --clip_grad, "
                "or --precision bf16/fp32."
            )

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        args = self.args
        self.maybe_resume()
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.to_dict().items()}
            save_text_atomic(yaml.safe_dump(cfg, sort_keys=True), self.run_dir / "config.yaml")
        imgs_per_step = args.batch_size_per_gpu * self.env.world_size
        log.info(
            "iBOT pretraining: %s on %d %s images (%s), %d iterations/epoch, %d epochs, batch %d×%d, %s, precision %s",
            args.arch, len(self.images), "+".join(self.modalities), args.scheme, self.iters_per_epoch, args.epochs,
            args.batch_size_per_gpu, self.env.world_size, self.device, self.amp_dtype or "fp32",
        )
        for epoch in range(self.start_epoch, args.epochs):
            start_iter = self.start_iter if epoch == self.start_epoch else 0
            meters = EpochMeters.from_state(self._resume_meters if start_iter else None, self.device)
            loader = self._loader(epoch, start_iter)
            t0 = time.perf_counter()
            last_t, last_i = t0, start_iter
            bar_items = progress(enumerate(loader, start=start_iter), total=self.iters_per_epoch - start_iter,
                                 desc=f"epoch {epoch + 1}/{args.epochs}",
                                 enabled=self.env.is_main and not args.no_progress)
            i = start_iter
            for i, batch in bar_items:
                it = epoch * self.iters_per_epoch + i
                crops, masks = self.prepare_batch(batch)
                self.train_step(crops, masks, epoch, it, meters)
                done = i + 1
                if args.log_freq and done % args.log_freq == 0:
                    self._check_nonfinite(it)
                    now = time.perf_counter()
                    rate = (done - last_i) * imgs_per_step / max(now - last_t, 1e-9)
                    last_t, last_i = now, done
                    avg = meters.averages(all_reduce=False)
                    scalars = {"loss": avg["loss"], "cls": avg["cls"], "patch": avg["patch"],
                               "lr": float(self.lr_schedule[it]), "wd": float(self.wd_schedule[it]),
                               "momentum": float(self.momentum_schedule[it]),
                               "teacher_temp": self.loss_fn.teacher_temperature(epoch), "images_per_s": rate}
                    if self.device.type == "cuda":
                        scalars["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    self.logger.scalars({f"iter/{k}": v for k, v in scalars.items()}, it)
                    if hasattr(bar_items, "set_postfix"):
                        bar_items.set_postfix(loss=f"{avg['loss']:.4f}", img_s=f"{rate:.1f}")
                if args.saveckp_iters and (it + 1) % args.saveckp_iters == 0 and done < self.iters_per_epoch:
                    self._check_nonfinite(it)
                    self.save(epoch, done, meters=meters)
                if self.after_iteration is not None:
                    self.after_iteration(it)
            it_last = epoch * self.iters_per_epoch + self.iters_per_epoch - 1
            self._check_nonfinite(it_last)
            elapsed = time.perf_counter() - t0
            avg = meters.averages(all_reduce=True)
            if avg.pop("steps") == 0:  # every step skipped: an error, not a 0.0 loss
                raise NonFiniteLossError(
                    f"epoch {epoch}: none of its {self.iters_per_epoch - start_iter} step(s) was applied (each had a "
                    f"non-finite loss or gradients); stopping before saving. The last good checkpoint in "
                    f"{self.run_dir} is intact. Try a lower --lr, --clip_grad, or --precision bf16/fp32."
                )
            stats = {f"train_{k}": v for k, v in avg.items()}
            stats |= {"train_lr": float(self.lr_schedule[it_last]), "train_wd": float(self.wd_schedule[it_last]),
                      "train_momentum": float(self.momentum_schedule[it_last]),
                      "train_teacher_temp": self.loss_fn.teacher_temperature(epoch),
                      "train_images_per_s": (self.iters_per_epoch - start_iter) * imgs_per_step / max(elapsed, 1e-9),
                      "epoch": epoch + 1}  # numbered from 1 in log.txt (checkpoint.pth "epoch": epochs done)
            if self.device.type == "cuda":
                stats["train_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.history.append(stats)
            numbered = args.saveckp_freq and epoch % args.saveckp_freq == 0 and epoch != 0
            # the checkpoint (which holds this line in its history) first, then the line: a kill in
            # between is repaired by the resume, which writes the lines from the checkpoint's history
            self.save(epoch + 1, 0, also_numbered=bool(numbered))
            self.logger.log(stats, step=epoch + 1)
            log.info("epoch %d/%d: loss %.4f (cls %.4f, patch %.4f), %.1f images/s", epoch + 1, args.epochs,
                     avg["loss"], avg["cls"], avg["patch"], stats["train_images_per_s"])
        self.logger.close()
        return self.history


def run_pretrain(cfg: PretrainConfig) -> tuple[Path, list[dict[str, Any]]]:
    """``visionfm pretrain`` / :func:`visionfm.pretrain`: set up the process (group), train, clean up.

    Returns ``(run folder, per-epoch history)``.
    """
    from visionfm.engine.distributed import command_session

    with command_session(cfg.device) as env:
        trainer = IBOTTrainer(cfg, env)
        return trainer.run_dir, trainer.fit()
