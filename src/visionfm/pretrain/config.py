"""Flags of ``visionfm pretrain``: every flag of the original ``main_pretrain.py`` (same names and
defaults, reference §4.1) plus visionfm's own, documented where they differ.
"""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, bool_flag

__all__ = ["add_pretrain_arguments", "validate_pretrain_args"]


def _float_list(values: list[float]) -> float | list[float]:
    """The original collapses a one-element list to a scalar (reference §4.3)."""
    return values[0] if len(values) == 1 else list(values)


def add_pretrain_arguments(p: VFMArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="vit_base", choices=["vit_tiny", "vit_small", "vit_base", "vit_large"])
    g.add_argument("--patch_size", type=int, default=16)
    g.add_argument("--out_dim", type=int, default=8192, help="CLS prototypes K")
    g.add_argument("--patch_out_dim", type=int, default=8192, help="patch prototypes (ignored when a head is shared)")
    g.add_argument("--shared_head", type=bool_flag, default=False, help="student shares last_layer for CLS and patches")
    g.add_argument("--shared_head_teacher", type=bool_flag, default=True)
    g.add_argument("--norm_last_layer", type=bool_flag, default=True)
    g.add_argument("--momentum_teacher", type=float, default=0.996)
    g.add_argument("--norm_in_head", default=None, choices=[None, "bn", "syncbn", "ln"],
                   help="norm inside the head MLP")
    g.add_argument("--act_in_head", default="gelu", choices=["gelu", "relu"])
    g.add_argument("--use_masked_im_modeling", type=bool_flag, default=True)
    g.add_argument("--drop_path", type=float, default=0.1, help="student stochastic depth (teacher: 0)")
    g.add_argument("--use_flash", action="store_true",
                   help="accepted for compatibility: fused SDPA attention is always on")
    g.add_argument("--load_pretrain", action="store_true",
                   help="initialise student and teacher backbones from --pretrain_path")
    g.add_argument("--pretrain_path", default=None,
                   help="local checkpoint for --load_pretrain (official, DINO/iBOT, RETFound or ours)")

    g = p.add_argument_group("masking")
    g.add_argument("--pred_ratio", type=float, nargs="+", default=[0.3])
    g.add_argument("--pred_ratio_var", type=float, nargs="+", default=[0.0])
    g.add_argument("--pred_shape", default="block", choices=["block", "rand"])
    g.add_argument("--pred_start_epoch", type=int, default=0)

    g = p.add_argument_group("loss and temperatures")
    g.add_argument("--lambda1", type=float, default=1.0)
    g.add_argument("--lambda2", type=float, default=1.0)
    g.add_argument("--warmup_teacher_temp", type=float, default=0.07)
    g.add_argument("--teacher_temp", type=float, default=0.04)
    g.add_argument("--warmup_teacher_patch_temp", type=float, default=0.04)
    g.add_argument("--teacher_patch_temp", type=float, default=0.07)
    g.add_argument("--warmup_teacher_temp_epochs", type=int, default=30)

    g = p.add_argument_group("optimisation")
    g.add_argument("--use_fp16", type=bool_flag, default=True, help="mixed precision on GPU (see --precision)")
    g.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 on GPUs that support it (fp16+GradScaler otherwise) when --use_fp16, fp32 on CPU")
    g.add_argument("--weight_decay", type=float, default=0.04)
    g.add_argument("--weight_decay_end", type=float, default=0.4)
    g.add_argument("--clip_grad", type=float, default=3.0, help="gradient clip threshold (0 disables)")
    g.add_argument("--clip_mode", default="per_param", choices=["per_param", "global"],
                   help="per_param reproduces the original (each tensor clipped to norm ≤ clip); "
                        "global clips the total norm")
    g.add_argument("--batch_size_per_gpu", type=int, default=128)
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--freeze_last_layer", type=int, default=3)
    g.add_argument("--lr", type=float, default=7.5e-5, help="peak lr for a total batch of 256 (scaled linearly)")
    g.add_argument("--warmup_epochs", type=int, default=50)
    g.add_argument("--min_lr", type=float, default=2e-6)
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd", "lars"])
    g.add_argument("--official_weight_decay", type=bool_flag, default=False,
                   help="decay cls_token/pos_embed/masked_embed/weight_g as the original did "
                        "(default: no decay on them)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the student, the teacher, the loss and the device-side augmentation")
    g.add_argument("--grad_checkpointing", action="store_true",
                   help="activation checkpointing in the student's blocks (less memory, ~30%% more compute; for ViT-L)")
    g.add_argument("--max_nonfinite_steps", type=int, default=10,
                   help="stop cleanly after this many consecutive non-finite losses (each such step is skipped)")

    g = p.add_argument_group("data")
    g.add_argument("--data_path", default="/path/to/train/")
    g.add_argument("--modality", default="Fundus", help="modality folder; with --scheme mix a comma list or 'all'")
    g.add_argument("--scheme", default="single", choices=["single", "mix"],
                   help="single: one modality; mix: one encoder over several modality folders, each image "
                        "normalised with its own modality statistics")
    g.add_argument("--modality_weights", default="uniform",
                   help="mix sampling: uniform (every image equal), balanced (every modality equal), or Fundus=2,OCT=1")
    g.add_argument("--input_size", type=int, default=224)
    g.add_argument("--global_crops_number", type=int, default=2)
    g.add_argument("--global_crops_scale", type=float, nargs=2, default=(0.32, 1.0))
    g.add_argument("--local_crops_number", type=int, default=0)
    g.add_argument("--local_crops_scale", type=float, nargs=2, default=(0.05, 0.4))
    g.add_argument("--local_crops_size", type=int, default=96)
    g.add_argument("--num_workers", type=int, default=10)
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
    g.add_argument("--output_dir", default=".")
    g.add_argument("--saveckp_freq", type=int, default=40)
    g.add_argument("--saveckp_iters", type=int, default=0, help="also write checkpoint.pth every K iterations (0: off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--load_from", default=None, help="resume file (relative to <output_dir>/<name> or absolute)")
    g.add_argument("--resume", default=None, help="'auto' resumes from <output_dir>/<name>/checkpoint.pth when present")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--log_freq", type=int, default=10, help="iterations between host-side metric reads")
    g.add_argument("--use_wandb", action="store_true", help="accepted for compatibility; visionfm logs to TensorBoard")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_distributed_arguments()
    p.add_config_argument()


def validate_pretrain_args(args: argparse.Namespace) -> argparse.Namespace:
    """Normalise list flags and reject inconsistent values with one clear message each."""
    from visionfm.errors import ConfigError

    args.pred_ratio = _float_list(
        list(args.pred_ratio) if isinstance(args.pred_ratio, (list, tuple)) else [args.pred_ratio]
    )
    args.pred_ratio_var = _float_list(
        list(args.pred_ratio_var) if isinstance(args.pred_ratio_var, (list, tuple)) else [args.pred_ratio_var]
    )
    if args.warmup_epochs > args.epochs:
        raise ConfigError(f"--warmup_epochs {args.warmup_epochs} exceeds --epochs {args.epochs}")
    if args.input_size % args.patch_size or args.local_crops_size % args.patch_size:
        raise ConfigError("--input_size and --local_crops_size must be multiples of --patch_size")
    if args.global_crops_number < 1:
        raise ConfigError("--global_crops_number must be ≥ 1")
    if args.batch_size_per_gpu < 1:
        raise ConfigError("--batch_size_per_gpu must be ≥ 1")
    if args.load_pretrain and not args.pretrain_path:
        raise ConfigError(
            "--load_pretrain needs --pretrain_path FILE: visionfm never downloads weights "
            "(the original fetched DINO ImageNet weights from the internet here)"
        )
    if args.use_wandb:
        import logging

        logging.getLogger(__name__).warning("--use_wandb is ignored: scalars go to TensorBoard (<run>/tf_logs)")
    return args
