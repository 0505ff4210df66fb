"""Checks of a ``visionfm pretrain`` configuration (:class:`visionfm.config.PretrainConfig`; its
flags are defined in :mod:`visionfm.cli.pretrain`)."""

from __future__ import annotations

from pathlib import Path

from visionfm.config import PretrainConfig

__all__ = ["validate_pretrain_args", "DINO_URL", "DINO_WEIGHTS", "dino_weights_dir", "resolve_pretrain_path"]

#: ``--load_pretrain`` without ``--pretrain_path``: the DINO ImageNet backbones the original downloaded
#: (reference §1.4), by (arch, patch size); the file name is the URL's last part.
DINO_URL = "https://dl.fbaipublicfiles.com/dino/"
DINO_WEIGHTS = {
    ("vit_small", 16): "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    ("vit_small", 8): "dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    ("vit_base", 16): "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    ("vit_base", 8): "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
}


def _float_list(values: list[float]) -> float | list[float]:
    """The original collapses a one-element list to a scalar (reference §4.3)."""
    return values[0] if len(values) == 1 else list(values)


def dino_weights_dir() -> Path:
    """Where ``--load_pretrain`` looks for the DINO file: torch hub's checkpoint folder
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), where the
    original's download stored it. visionfm never downloads."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_pretrain_path(args: PretrainConfig) -> str:
    """The file ``--load_pretrain`` initialises both backbones from: ``--pretrain_path``, else the
    local copy of the DINO ImageNet file the original downloaded for this ``--arch``/``--patch_size``."""
    from visionfm.errors import ConfigError

    if args.pretrain_path:
        return args.pretrain_path
    rel = DINO_WEIGHTS.get((args.arch, args.patch_size))
    if rel is None:
        raise ConfigError(
            f"--load_pretrain without --pretrain_path: DINO ImageNet weights exist only for vit_small and "
            f"vit_base with patch 16 or 8, not --arch {args.arch} --patch_size {args.patch_size}; "
            "pass --pretrain_path FILE"
        )
    name = rel.rsplit("/", 1)[-1]
    path = dino_weights_dir() / name
    if not path.is_file():
        raise ConfigError(
            f"--load_pretrain without --pretrain_path needs {name} (DINO ImageNet {args.arch}/{args.patch_size}): "
            f"place it at {path} (download {DINO_URL}{rel}) or pass --pretrain_path FILE; visionfm never downloads"
        )
    return str(path)


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
    if args.load_pretrain:
        resolve_pretrain_path(args)
    if args.use_wandb:
        import logging

        logging.getLogger(__name__).warning("--use_wandb is ignored: scalars go to TensorBoard (<run>/tf_logs)")
    return args
