"""One typed configuration per command (design §2.4): field names, types and defaults are those of the
command's flags (the original's spellings and defaults).

The command line builds these in :mod:`visionfm.cli` from the parsed flags (``--config file.yaml``
and flags merged there); the Python API (:func:`visionfm.train`) builds them from keyword arguments.
Everything below the CLI receives a config or plain values, never an ``argparse.Namespace``. A test
checks that every command's flags and its config's fields stay the same set with the same defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from visionfm.errors import ConfigError

__all__ = [
    "CommandConfig",
    "PretrainConfig",
    "TrainClsConfig",
    "StoreDecoderConfig",
    "DenseDecoderConfig",
    "TrainMultiClsConfig",
    "TrainRegConfig",
    "TrainSegConfig",
    "TrainLandmarkConfig",
    "TrainForecastConfig",
    "FinetuneConfig",
    "FINETUNE_RECIPES",
    "EvaluateConfig",
    "CONFIGS",
]

C = TypeVar("C", bound="CommandConfig")


@dataclass
class CommandConfig:
    """Base of the command configs: conversion from/to plain mappings with clear errors."""

    command: ClassVar[str] = ""

    def run_dir(self) -> Path:
        """Where the command writes: ``<output_dir>/<name>``, or ``<output_dir>`` itself when it has no name
        (the original's fine-tuning and forecasting scripts wrote there)."""
        name = getattr(self, "name", None)
        out = Path(getattr(self, "output_dir", "."))
        return out / name if name else out

    def run_name(self) -> str:
        """The run's name in titles and file names: ``name``, else the output folder's name."""
        name = getattr(self, "name", None)
        return str(name) if name else (Path(getattr(self, "output_dir", ".")).resolve().name or "run")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls: type[C], values: Mapping[str, Any], where: str = "",
                     sources: Mapping[str, str] | None = None) -> C:
        """Build from ``{field: value}``; an unknown key or a missing required field is a
        :class:`~visionfm.errors.ConfigError` naming ``where`` and listing the valid names. Every value
        is checked (type, range, choices) by :func:`visionfm.config.checks.check_values`; ``sources``
        names the ``--config`` file a value came from."""
        names = cls.field_names()
        unknown = sorted(k for k in values if k not in names)
        prefix = f"{where}: " if where else ""
        if unknown:
            raise ConfigError(f"{prefix}unknown option(s) {', '.join(unknown)} for '{cls.command}'; "
                              f"valid: {', '.join(sorted(names))}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{prefix}'{cls.command}' needs {', '.join(missing)}")
        from visionfm.config.checks import check_values

        try:
            checked = check_values(cls.command, values, typing.get_type_hints(cls), sources)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
        return cls(**checked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@dataclass
class PretrainConfig(CommandConfig):
    """``visionfm pretrain``."""

    command: ClassVar[str] = "pretrain"
    name: str
    arch: str = "vit_base"
    patch_size: int = 16
    out_dim: int = 8192
    patch_out_dim: int = 8192
    shared_head: bool = False
    shared_head_teacher: bool = True
    norm_last_layer: bool = True
    momentum_teacher: float = 0.996
    norm_in_head: str | None = None
    act_in_head: str = "gelu"
    use_masked_im_modeling: bool = True
    drop_path: float = 0.1
    use_flash: bool = False
    load_pretrain: bool = False
    pretrain_path: str | None = None
    pred_ratio: list[float] = field(default_factory=lambda: [0.3])
    pred_ratio_var: list[float] = field(default_factory=lambda: [0.0])
    pred_shape: str = "block"
    pred_start_epoch: int = 0
    lambda1: float = 1.0
    lambda2: float = 1.0
    warmup_teacher_temp: float = 0.07
    teacher_temp: float = 0.04
    warmup_teacher_patch_temp: float = 0.04
    teacher_patch_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    use_fp16: bool = True
    precision: str = "auto"
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    clip_mode: str = "per_param"
    batch_size_per_gpu: int = 128
    epochs: int = 100
    freeze_last_layer: int = 3
    lr: float = 7.5e-05
    warmup_epochs: int = 50
    min_lr: float = 2e-06
    optimizer: str = "adamw"
    official_weight_decay: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    fsdp: bool = False
    max_nonfinite_steps: int = 10
    data_path: str | None = None  # required on the command line
    modality: str = "Fundus"
    scheme: str = "single"
    modality_weights: str = "uniform"
    input_size: int = 224
    global_crops_number: int = 2
    global_crops_scale: tuple[float, float] | list[float] = (0.32, 1.0)
    local_crops_number: int = 0
    local_crops_scale: tuple[float, float] | list[float] = (0.05, 0.4)
    local_crops_size: int = 96
    num_workers: int = 10
    on_corrupt: str = "fail"
    augment_on: str = "auto"
    decode: str = "reduced"
    output_dir: str = "."
    saveckp_freq: int = 40
    saveckp_iters: int = 0
    seed: int = 0
    load_from: str | None = None
    resume: str | None = None
    overwrite: bool = False
    device: str = "auto"
    log_freq: int = 10
    use_wandb: bool = False
    no_progress: bool = False


@dataclass
class TrainClsConfig(CommandConfig):
    """``visionfm train-cls``."""

    command: ClassVar[str] = "train-cls"
    name: str
    n_last_blocks: int = 4
    avgpool_patchtokens: int = 0
    arch: str | None = None  # None: inferred from the weights (random: vit_base)
    input_size: int = 224
    patch_size: int | None = None  # None: inferred from the weights (random: 16)
    pretrained_weights: str | None = None
    checkpoint_key: str = "teacher"
    modality: str | None = None  # None: what the weights/stores record, else Fundus
    epochs: int = 100
    lr: float = 0.001
    batch_size_per_gpu: int = 512
    data_path: str | None = None  # required on the command line unless features is given
    dataset_format: str = "vfm"
    seed: int = 0
    num_workers: int = 10
    val_freq: int = 1
    output_dir: str = "./results"
    num_labels: int = 5
    load_from: str | None = None
    test: bool = False
    head: str = "cls"
    bn_momentum: float = 0.1
    features: str | None = None
    task: str = "auto"
    class_names: list[str] | None = None
    ordinal: bool = False
    amp: bool = True
    report_n_boot: int = 1000
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False


@dataclass
class StoreDecoderConfig(CommandConfig):
    """Fields shared by the decoders trained on several feature stores (``train-multi-cls``, ``train-reg``)."""

    name: str
    datasets: list[str]
    epochs: int = 100
    lr: float = 0.001
    batch_size_per_gpu: int = 128
    data_path: str | None = None  # required on the command line
    seed: int = 0
    num_workers: int = 10
    val_freq: int = 1
    output_dir: str = "."
    num_labels: int = 13
    load_from: str | None = None
    test: bool = False
    embed_dim: int | None = None
    fusion: str = "pooled"
    subject_map: str | None = None
    bn_momentum: float = 0.1
    report_n_boot: int = 1000
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    optimizer: str = "sgd"


@dataclass
class TrainMultiClsConfig(StoreDecoderConfig):
    """``visionfm train-multi-cls``."""

    command: ClassVar[str] = "train-multi-cls"
    label_layout: str = "visionfm13"


@dataclass
class TrainRegConfig(StoreDecoderConfig):
    """``visionfm train-reg``."""

    command: ClassVar[str] = "train-reg"
    epochs: int = 500
    output_dir: str = "./results"
    num_labels: int = 38
    optimizer: str = "adamw"
    targets_json: list[str] | None = None
    lr_scaling: str = "none"  # the original: the raw --lr ("linear": x batch*world/256)
    scheduler: str = "constant"  # the original: constant ("cosine": per epoch to 0)


@dataclass
class DenseDecoderConfig(CommandConfig):
    """Fields shared by the dense decoders (``train-seg``, ``train-landmark``)."""

    name: str
    arch: str | None = None  # None: inferred from the weights (random: vit_base)
    input_size: int = 224
    patch_size: int | None = None  # None: inferred from the weights (random: 16)
    pretrained_weights: str | None = None
    checkpoint_key: str = "teacher"
    epochs: int = 100
    lr: float = 0.001
    batch_size_per_gpu: int = 128
    seed: int = 0
    num_workers: int = 10
    val_freq: int = 1
    data_path: str = "./dataset/seg_random/VesselSegmentation"
    modality: str | None = None  # None: what the weights record, else Fundus (landmark: UBM)
    head_type: str = "unetr"
    output_dir: str = "./results"
    num_labels: int = 4
    load_from: str | None = None
    block_ids: list[int] | None = None
    no_augment: bool = False
    scheduler: str = "cosine"
    weight_decay: float = 0.05
    n_overlays: int = 8
    cache_max_gb: float = 8.0
    amp: bool = True
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False


@dataclass
class TrainSegConfig(DenseDecoderConfig):
    """``visionfm train-seg``."""

    command: ClassVar[str] = "train-seg"
    class_names: list[str] | None = None


@dataclass
class TrainLandmarkConfig(DenseDecoderConfig):
    """``visionfm train-landmark``."""

    command: ClassVar[str] = "train-landmark"
    data_path: str | None = None  # required on the command line
    output_dir: str = "."
    num_labels: int = 3
    landmark_names: list[str] | None = None
    sigma: float = 2.0
    affine_p: float = 0.5


@dataclass
class TrainForecastConfig(CommandConfig):
    """``visionfm train-forecast``."""

    command: ClassVar[str] = "train-forecast"
    data_path: str
    name: str | None = None
    n_last_blocks: int = 4
    avgpool_patchtokens: int = 0
    epochs: int = 500
    lr: float = 0.001
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    batch_size_per_gpu: int = 128
    seed: int = 0
    num_workers: int = 10
    val_freq: int = 1
    output_dir: str = "."
    num_labels: int = 1
    load_from: str | None = None
    embed_dim: int | None = None
    modality: str | None = None  # None: what the weights record, else Fundus
    pos_weight: float = 10.0
    max_len: int = 6500
    arch: str | None = None  # None: inferred from the weights (random: vit_base)
    patch_size: int | None = None  # None: inferred from the weights (random: 16)
    input_size: int = 224
    pretrained_weights: str | None = None
    checkpoint_key: str = "teacher"
    threshold: float = 0.5
    specificity: float = 0.9
    interval_buckets: str = "365,1095"
    selection: str = "auroc"
    standardize: bool = True
    dropout: float = 0.0
    scheduler: str = "cosine"
    amp: bool = True
    report_n_boot: int = 1000
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False


# The two fine-tuning recipes of ``visionfm finetune --recipe`` (docs/forecasting-and-finetuning.md lists
# them as one table). ``visionfm`` is the original script's recipe (reference §5.8); ``retfound`` is
# RETFound's main_finetune.py defaults (layer decay, drop path, RandAugment, random erasing, smoothing,
# per-iteration warm-up + cosine, no decay on 1-d tensors, mixed precision). A flag given explicitly wins.
FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "visionfm": {"layer_decay": 1.0, "weight_decay_all": True, "scheduler": "cosine", "warmup_epochs": 0,
                 "min_lr": 0.0, "drop_path": 0.0, "smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "randaug": "",
                 "reprob": 0.0, "crop_interpolation": "bilinear", "amp": False, "drop_last": False,
                 "class_order_preset": "auto"},
    "retfound": {"layer_decay": 0.75, "weight_decay_all": False, "scheduler": "warmup_cosine", "warmup_epochs": 10,
                 "min_lr": 1e-6, "drop_path": 0.1, "smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0,
                 "randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "crop_interpolation": "bicubic", "amp": True,
                 "drop_last": True, "class_order_preset": "alphabetical"},
}


@dataclass
class FinetuneConfig(CommandConfig):
    """``visionfm finetune``. Fields left ``None`` take their value from ``recipe``
    (:data:`FINETUNE_RECIPES`) in :meth:`resolved`."""

    command: ClassVar[str] = "finetune"
    data_path: str
    name: str | None = None
    recipe: str = "visionfm"
    n_last_blocks: int = 4
    avgpool_patchtokens: int = 0
    arch: str | None = None
    input_size: int = 224
    patch_size: int | None = None
    pretrained_weights: str | None = None
    checkpoint_key: str = "teacher"
    epochs: int = 100
    lr: float = 0.001
    encoder_lr_scale: float = 0.1
    layer_decay: float | None = None
    weight_decay_all: bool | None = None
    scheduler: str | None = None
    min_lr: float | None = None
    warmup_epochs: float | None = None
    weight_decay: float = 0.05
    clip_grad: float = 0.0
    drop_path: float | None = None
    accum_iter: int = 1
    amp: bool | None = None
    min_crop_scale: float = 0.08
    crop_interpolation: str | None = None
    randaug: str | None = None
    mixup: float | None = None
    cutmix: float | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float | None = None
    reprob: float | None = None
    head: str = "cls"
    bn_momentum: float = 0.1
    batch_size_per_gpu: int = 128
    drop_last: bool | None = None
    seed: int = 0
    modality: str = "Fundus"
    task: str = ""
    extra: str = ""
    num_workers: int = 10
    val_freq: int = 1
    output_dir: str = "."
    num_labels: int | None = None
    load_from: str | None = None
    class_order: str | None = None
    class_order_preset: str | None = None
    report_n_boot: int = 1000
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False

    def resolved(self) -> FinetuneConfig:
        """A copy with every ``None`` recipe field filled from :data:`FINETUNE_RECIPES` [``recipe``]
        (``class_order_preset`` only when ``class_order`` is not given either)."""
        if self.recipe not in FINETUNE_RECIPES:
            raise ConfigError(f"--recipe {self.recipe!r}: expected one of {', '.join(FINETUNE_RECIPES)}")
        fill = {}
        for key, value in FINETUNE_RECIPES[self.recipe].items():
            if getattr(self, key) is None and not (key == "class_order_preset" and self.class_order):
                fill[key] = value
        return self.replace(**fill)


@dataclass
class EvaluateConfig(CommandConfig):
    """``visionfm evaluate``."""

    command: ClassVar[str] = "evaluate"
    data_path: str
    name: str | None = None
    load_from: str | None = None
    model: str | None = None
    split: str = "test"
    arch: str | None = None
    input_size: int = 224
    patch_size: int | None = None
    n_last_blocks: int = 4
    avgpool_patchtokens: int = 0
    num_labels: int | None = None
    checkpoint_key: str = "visionfm_state_dict"
    modality: str = "Fundus"
    task: str = ""
    extra: str = ""
    class_order: str | None = None
    class_order_preset: str | None = None
    batch_size_per_gpu: int = 128
    num_workers: int = 10
    amp: bool = False
    seed: int = 0
    output_dir: str = "."
    report_n_boot: int = 1000
    device: str = "auto"


CONFIGS: dict[str, type[CommandConfig]] = {c.command: c for c in (
    PretrainConfig, TrainClsConfig, TrainMultiClsConfig, TrainRegConfig, TrainSegConfig, TrainLandmarkConfig,
    TrainForecastConfig, FinetuneConfig, EvaluateConfig)}
