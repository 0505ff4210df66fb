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
    """Normalise list flags and reject inconsistent combinations with one clear message each.

    Each value on its own (types, ranges, choices) was checked when the config was built
    (:mod:`visionfm.config.checks`); what is checked here relates several of them, before any model
    is built or anything written."""
    from visionfm.errors import ConfigError
    from visionfm.pretrain.masking import MaskRatioSampler

    args.pred_ratio = _float_list(
        list(args.pred_ratio) if isinstance(args.pred_ratio, (list, tuple)) else [args.pred_ratio]
    )
    args.pred_ratio_var = _float_list(
        list(args.pred_ratio_var) if isinstance(args.pred_ratio_var, (list, tuple)) else [args.pred_ratio_var]
    )
    try:  # the masking's own rules (ratio ≥ var, ratio + var ≤ 1, matching lengths), as one line
        MaskRatioSampler(args.pred_ratio, args.pred_ratio_var, args.pred_start_epoch)
    except ValueError as exc:
        raise ConfigError(f"--pred_ratio/--pred_ratio_var: {exc}") from None
    if args.warmup_epochs > args.epochs:
        raise ConfigError(f"--warmup_epochs: expected an integer in [0, --epochs {args.epochs}], "
                          f"got {args.warmup_epochs}")
    if args.local_crops_number > 0 and args.local_crops_size % args.patch_size:
        raise ConfigError(f"--local_crops_size: expected a positive multiple of --patch_size {args.patch_size}, "
                          f"got {args.local_crops_size}")
    for name in ("global_crops_scale", "local_crops_scale"):
        lo, hi = getattr(args, name)
        if lo > hi:
            raise ConfigError(f"--{name}: expected MIN MAX with MIN ≤ MAX, got {lo} {hi}")
    if args.shared_head != args.shared_head_teacher and args.out_dim != args.patch_out_dim:
        # the teacher starts as a copy of the student: a head shared on one side only has K patch prototypes
        # there and K2 on the other (the original fails with "size mismatch for head.last_layer2")
        who = "teacher" if args.shared_head_teacher else "student"
        raise ConfigError(
            f"--patch_out_dim {args.patch_out_dim} differs from --out_dim {args.out_dim}, but only the {who} "
            f"shares its head's last layer between CLS and patch tokens (--shared_head "
            f"{str(args.shared_head).lower()}, --shared_head_teacher {str(args.shared_head_teacher).lower()}), so "
            f"the teacher cannot copy the student's head: set --patch_out_dim {args.out_dim}, or --shared_head "
            "and --shared_head_teacher to the same value"
        )
    if args.load_pretrain:
        resolve_pretrain_path(args)
    if args.use_wandb:
        import logging

        logging.getLogger(__name__).warning("--use_wandb is ignored: scalars go to TensorBoard (<run>/tf_logs)")
    return args
