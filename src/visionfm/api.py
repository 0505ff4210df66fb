"""The Python API of the training commands: the same runs, configs and outputs as the CLI.

>>> import visionfm
>>> result = visionfm.train("segmentation", data="data/seg", encoder="random", arch="vit_tiny",
...                         input_size=64, epochs=2, name="seg", output_dir="runs", device="cpu")
>>> result.metrics["dice_mean"], result.model_folder

Keyword options are the command's flags (``visionfm train-seg --help`` lists them, with the same
names and defaults, see :mod:`visionfm.config`); an unknown option is a
:class:`~visionfm.errors.ConfigError` that lists the valid ones.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfm.config import (
    CommandConfig,
    FinetuneConfig,
    PretrainConfig,
    TrainClsConfig,
    TrainForecastConfig,
    TrainLandmarkConfig,
    TrainMultiClsConfig,
    TrainRegConfig,
    TrainSegConfig,
)
from visionfm.errors import ConfigError, speaks_python

__all__ = ["train", "pretrain", "TrainResult", "TRAINERS"]

# task name -> (config class, "module:function" that runs it)
TRAINERS: dict[str, tuple[type[CommandConfig], str]] = {
    "classification": (TrainClsConfig, "visionfm.tasks.classification:run_train_cls"),
    "multilabel": (TrainMultiClsConfig, "visionfm.tasks.multilabel:run_train_multi_cls"),
    "regression": (TrainRegConfig, "visionfm.tasks.regression:run_train_reg"),
    "segmentation": (TrainSegConfig, "visionfm.tasks.segmentation:run_train_seg"),
    "landmark": (TrainLandmarkConfig, "visionfm.tasks.landmark:run_train_landmark"),
    "forecasting": (TrainForecastConfig, "visionfm.tasks.forecasting:run_train_forecast"),
    "finetune": (FinetuneConfig, "visionfm.tasks.finetune:run_finetune"),
}


@dataclass
class TrainResult:
    """What a training run left in its folder.

    Attributes:
        run_dir: ``<output_dir>/<name>``.
        metrics: the test-split metrics (the run's ``metrics.json``), or ``None`` when it wrote none.
        model_folder: ``<run>/model`` (load it with :func:`visionfm.from_pretrained`), or ``None``.
        config: the resolved configuration the run used.
    """

    run_dir: Path
    metrics: dict[str, Any] | None
    model_folder: Path | None
    config: CommandConfig

    def load(self) -> Any:
        """The trained model folder as a :class:`~visionfm.packaging.VisionFMModel`."""
        if self.model_folder is None:
            raise ConfigError(f"{self.run_dir}: this run wrote no model folder")
        from visionfm.packaging import from_pretrained

        return from_pretrained(self.model_folder)


def _run(fn_path: str, cfg: CommandConfig) -> None:
    module, _, name = fn_path.partition(":")
    code = getattr(importlib.import_module(module), name)(cfg)
    if code:
        raise ConfigError(f"{cfg.command} ended with exit code {code}")


def _result(cfg: CommandConfig) -> TrainResult:
    run_dir = Path(cfg.output_dir) / cfg.name
    metrics = None
    for candidate in (run_dir / "metrics.json", run_dir / "report" / "metrics.json"):
        if candidate.is_file():
            metrics = json.loads(candidate.read_text(encoding="utf-8"))
            break
    folder = run_dir / "model"
    return TrainResult(run_dir, metrics, folder if (folder / "config.json").is_file() else None, cfg)


@speaks_python
def train(task: str, data: str | Path | None = None, encoder: str | Path | None = None, **options: Any) -> TrainResult:
    """Train a decoder (or fine-tune) exactly as the matching ``visionfm`` command does.

    Args:
        task: one of :data:`TRAINERS` (``classification``, ``multilabel``, ``regression``,
            ``segmentation``, ``landmark``, ``forecasting``, ``finetune``).
        data: the ``--data_path``.
        encoder: the ``--pretrained_weights`` (a weights file, a model folder, or ``"random"``).
        **options: any other flag of the command, by its underscore name (``epochs=5``,
            ``batch_size_per_gpu=32``...). ``name`` defaults to the task name.

    Returns:
        A :class:`TrainResult` (run folder, test metrics, model folder).
    """
    if task not in TRAINERS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TRAINERS)}")
    cls, fn = TRAINERS[task]
    values = dict(options)
    values.setdefault("name", task)
    if data is not None:
        values["data_path"] = str(data)
    if encoder is not None:
        values["pretrained_weights"] = str(encoder)
    cfg = cls.from_mapping(values, where=f"visionfm.train({task!r})")
    _run(fn, cfg)
    return _result(cfg)


@speaks_python
def pretrain(data: str | Path, **options: Any) -> Path:
    """iBOT pretraining exactly as ``visionfm pretrain``; returns the run's ``checkpoint.pth``."""
    from visionfm.pretrain.config import validate_pretrain_args
    from visionfm.pretrain.trainer import run_pretrain

    values = dict(options)
    values.setdefault("name", "pretrain")
    values["data_path"] = str(data)
    run_dir, _ = run_pretrain(validate_pretrain_args(PretrainConfig.from_mapping(values, where="visionfm.pretrain()")))
    return run_dir / "checkpoint.pth"
