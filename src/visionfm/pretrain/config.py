"""Checks of a ``visionfm pretrain`` configuration (:class:`visionfm.config.PretrainConfig`; its
flags are defined in :mod:`visionfm.cli.pretrain`)."""

from __future__ import annotations

from visionfm.config import PretrainConfig

__all__ = ["validate_pretrain_args"]


def _float_list(values: list[float]) -> float | list[float]:
    """The original collapses a one-element list to a scalar (reference §4.3)."""
    return values[0] if len(values) == 1 else list(values)


def validate_pretrain_args(args: PretrainConfig) -> PretrainConfig:
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
