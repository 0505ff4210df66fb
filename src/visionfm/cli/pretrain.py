"""``visionfm pretrain``: iBOT self-supervised pretraining (flags of the original ``main_pretrain.py``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from visionfm.cli.options import (
    NUM_WORKERS,
    VFMArgumentParser,
    add_device_argument,
    arch_choices,
    bool_flag,
    parse_with_config,
    to_config,
)

if TYPE_CHECKING:
    from visionfm.config import PretrainConfig


def add_arguments(p: VFMArgumentParser) -> None:
    """Every flag of the original ``main_pretrain.py`` (same names and defaults, reference §4.1) plus
    visionfm's own, documented where they differ."""
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="vit_base", choices=arch_choices(), help="encoder architecture")
    g.add_argument("--patch_size", type=int, default=16, help="ViT patch size in pixels")
    g.add_argument("--out_dim", type=int, default=8192, help="CLS prototypes K")
    g.add_argument("--patch_out_dim", type=int, default=8192, help="patch prototypes (ignored when a head is shared)")
    g.add_argument("--shared_head", type=bool_flag, default=False, help="student shares last_layer for CLS and patches")
    g.add_argument("--shared_head_teacher", type=bool_flag, default=True,
                   help="teacher shares last_layer for CLS and patches")
    g.add_argument("--norm_last_layer", type=bool_flag, default=True,
                   help="freeze the weight norm of the student head's last layer")
    g.add_argument("--momentum_teacher", type=float, default=0.996,
                   help="base EMA momentum of the teacher (cosine schedule to 1)")
    g.add_argument("--norm_in_head", default=None, choices=[None, "bn", "syncbn", "ln"],
                   help="norm inside the head MLP")
    g.add_argument("--act_in_head", default="gelu", choices=["gelu", "relu"], help="activation inside the head MLP")
    g.add_argument("--use_masked_im_modeling", type=bool_flag, default=True,
                   help="masked image modelling: the student gets masked patches (iBOT patch loss)")
    g.add_argument("--drop_path", type=float, default=0.1, help="student stochastic depth (teacher: 0)")
    g.add_argument("--use_flash", action="store_true",
                   help="accepted for compatibility: fused SDPA attention is always on")
    g.add_argument("--load_pretrain", action="store_true",
                   help="initialise student and teacher backbones from --pretrain_path, or without it from the "
                        "DINO ImageNet file the original downloaded (vit_small/vit_base, patch 16/8), read from "
                        "$TORCH_HOME/hub/checkpoints (never downloaded)")
    g.add_argument("--pretrain_path", default=None,
                   help="local checkpoint for --load_pretrain (official, DINO/iBOT, RETFound or ours)")

    g = p.add_argument_group("masking")
    g.add_argument("--pred_ratio", type=float, nargs="+", default=[0.3], help="mask ratio(s)")
    g.add_argument("--pred_ratio_var", type=float, nargs="+", default=[0.0],
                   help="± range of each mask ratio")
    g.add_argument("--pred_shape", default="block", choices=["block", "rand"], help="mask shape")
    g.add_argument("--pred_start_epoch", type=int, default=0, help="epoch at which masking starts")

    g = p.add_argument_group("loss and temperatures")
    g.add_argument("--lambda1", type=float, default=1.0, help="weight of the CLS loss")
    g.add_argument("--lambda2", type=float, default=1.0, help="weight of the patch (MIM) loss")
    g.add_argument("--warmup_teacher_temp", type=float, default=0.07,
                   help="initial teacher CLS temperature")
    g.add_argument("--teacher_temp", type=float, default=0.04, help="final teacher CLS temperature")
    g.add_argument("--warmup_teacher_patch_temp", type=float, default=0.04,
                   help="initial teacher patch temperature")
    g.add_argument("--teacher_patch_temp", type=float, default=0.07, help="final teacher patch temperature")
    g.add_argument("--warmup_teacher_temp_epochs", type=int, default=30,
                   help="epochs of the linear teacher-temperature warm-up")

    g = p.add_argument_group("optimisation")
    g.add_argument("--use_fp16", type=bool_flag, default=True, help="mixed precision on GPU (see --precision)")
    g.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 on GPUs that support it (fp16+GradScaler otherwise) when --use_fp16, fp32 on CPU")
    g.add_argument("--weight_decay", type=float, default=0.04, help="initial weight decay (cosine schedule)")
    g.add_argument("--weight_decay_end", type=float, default=0.4, help="final weight decay")
    g.add_argument("--clip_grad", type=float, default=3.0, help="gradient clip threshold (0 disables)")
    g.add_argument("--clip_mode", default="per_param", choices=["per_param", "global"],
                   help="per_param reproduces the original (each tensor clipped to norm ≤ clip); "
                        "global clips the total norm")
    g.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=128,
                   help="images per batch and process")
    g.add_argument("--epochs", type=int, default=100, help="training epochs")
    g.add_argument("--freeze_last_layer", type=int, default=3,
                   help="epochs during which the head's last layer is not updated")
    g.add_argument("--lr", type=float, default=7.5e-5, help="peak lr for a total batch of 256 (scaled linearly)")
    g.add_argument("--warmup_epochs", type=int, default=50, help="epochs of linear learning-rate warm-up")
    g.add_argument("--min_lr", type=float, default=2e-6, help="final learning rate of the cosine schedule")
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd", "lars"], help="optimizer")
    g.add_argument("--official_weight_decay", type=bool_flag, default=False,
                   help="the original's two optimizer groups: decay also on cls_token/pos_embed/masked_embed/"
                        "weight_g, last layer not apart (its checkpoints then resume in the original)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the student, the teacher, the loss and the device-side augmentation")
    g.add_argument("--grad_checkpointing", action="store_true",
                   help="activation checkpointing in the student's blocks (less memory, ~30%% more compute; for ViT-L)")
    g.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer state over the processes (FSDP2, per block; "
                        "sharded checkpoints in checkpoint_dcp/ plus the usual checkpoint.pth); for ViT-L and "
                        "larger: DDP (the default) is faster for ViT-B")
    g.add_argument("--max_nonfinite_steps", type=int, default=10,
                   help="stop cleanly after this many consecutive non-finite losses (each such step is skipped)")

    g = p.add_argument_group("data")
    g.add_argument("--data_path", required=True,
                   help="pretraining root (one folder of images per modality), or a shard index from visionfm "
                        "prepare --format shards (shards.json, its folder, or a file:// URL)")
    g.add_argument("--modality", default="Fundus", help="modality folder; with --scheme mix a comma list or 'all'")
    g.add_argument("--scheme", default="single", choices=["single", "mix"],
                   help="single: one modality; mix: one encoder over several modality folders, each image "
                        "normalised with its own modality statistics")
    g.add_argument("--modality_weights", default="uniform",
                   help="mix sampling: uniform (every image equal), balanced (every modality equal), or Fundus=2,OCT=1")
    g.add_argument("--input_size", type=int, default=224, help="side of the global crops")
    g.add_argument("--global_crops_number", type=int, default=2, help="global crops per image")
    g.add_argument("--global_crops_scale", type=float, nargs=2, default=(0.32, 1.0),
                   help="area range of the global crops")
    g.add_argument("--local_crops_number", type=int, default=0, help="local crops per image (0: no multi-crop)")
    g.add_argument("--local_crops_scale", type=float, nargs=2, default=(0.05, 0.4),
                   help="area range of the local crops")
    g.add_argument("--local_crops_size", type=int, default=96, help="side of the local crops")
    g.add_argument("--num_workers", type=int, default=NUM_WORKERS, help="image-loading workers per process")
    g.add_argument("--on_corrupt", default="fail", choices=["fail", "skip"], help="corrupt image policy")
    g.add_argument("--augment_on", default="auto", choices=["auto", "cpu", "device"],
                   help="where colour jitter, grayscale, blur, solarize and normalisation run: cpu = PIL in the "
                        "DataLoader workers (the original's design), device = batched on the training device after "
                        "the workers' decode + crop; auto = device when training on a GPU, cpu otherwise")
    g.add_argument("--decode", default="reduced", choices=["reduced", "full", "gpu"],
                   help="reduced: JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) at which every crop the "
                        "recipe can draw still spans its output size; full: always full size (the original); "
                        "gpu: workers only read the files, JPEG batches decode with nvJPEG on the GPU and are "
                        "cropped there (for machines with few CPU cores; other formats still decode in the workers)")

    g = p.add_argument_group("run")
    g.add_argument("--name", required=True, help="run name; outputs go to <output_dir>/<name>")
    g.add_argument("--output_dir", default=".", help="outputs go to <output_dir>/<name>")
    g.add_argument("--saveckp_freq", type=int, default=40, help="write checkpointNNNN.pth every this many epochs")
    g.add_argument("--saveckp_iters", type=int, default=0, help="also write checkpoint.pth every K iterations (0: off)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--load_from", default=None, help="resume file (relative to <output_dir>/<name> or absolute)")
    g.add_argument("--resume", default=None, help="'auto' resumes from <output_dir>/<name>/checkpoint.pth when present")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in <output_dir>/<name>; without it (and without --resume) "
                        "an existing run is refused")
    add_device_argument(g)
    g.add_argument("--log_freq", type=int, default=10, help="iterations between host-side metric reads")
    g.add_argument("--use_wandb", action="store_true", help="accepted for compatibility; visionfm logs to TensorBoard")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_distributed_arguments()
    p.add_config_argument()


def config_from_argv(argv: list[str]) -> PretrainConfig:
    """The validated :class:`~visionfm.config.PretrainConfig` of ``visionfm pretrain ARGV`` (benchmarks, tests)."""
    from visionfm.config import PretrainConfig
    from visionfm.pretrain.config import validate_pretrain_args

    parser = VFMArgumentParser(prog="visionfm pretrain")
    add_arguments(parser)
    return validate_pretrain_args(to_config(PretrainConfig, parse_with_config(parser, argv)))


def run(args: argparse.Namespace) -> int:
    from visionfm.config import PretrainConfig
    from visionfm.errors import NonFiniteLossError
    from visionfm.pretrain.config import validate_pretrain_args
    from visionfm.pretrain.trainer import run_pretrain

    cfg = validate_pretrain_args(to_config(PretrainConfig, args))
    try:
        run_dir, history = run_pretrain(cfg)
    except NonFiniteLossError as exc:
        print(f"visionfm pretrain: stopped: {exc}", file=sys.stderr)
        return 3
    from visionfm.engine.distributed import is_main_process

    if is_main_process() and history:
        from visionfm.reports.summary import format_summary

        first, last = history[0]["train_loss"], history[-1]["train_loss"]
        print(format_summary("pretrain", None, task="iBOT pretraining", notes=[
            f"epochs {history[0]['epoch']}-{history[-1]['epoch']} of {cfg.epochs}: loss {first:.4f} -> {last:.4f}"],
            paths={"checkpoint": run_dir / "checkpoint.pth", "log": run_dir / "log.txt"}))
    return 0
