"""A toy task exactly as docs/extending.md builds it: image brightness regression on a frozen encoder.

Everything task-specific is in this one module (config, flags, training, packaged-model behaviour);
the engine, model folders, ``predict`` and the web app work with it unchanged.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from visionfm.cli.options import VFMArgumentParser, to_config
from visionfm.config import CommandConfig
from visionfm.engine.task import Display, Task, register_task


@register_task
class Brightness(Task):
    """Mean brightness of the image, in [0, 1]: one pooled-feature output."""

    name = "toy_brightness"
    features = "pooled"
    selection_key = "mae"
    higher_is_better = False

    def output_names(self, cfg: Any) -> list[str]:
        return ["brightness"]

    def postprocess(self, cfg: Any, outputs: torch.Tensor, sizes: Any) -> dict[str, Any]:
        return {"values": outputs[:, 0].numpy().astype(np.float64)}

    def record(self, cfg: Any, pred: Any, i: int, names: Any) -> dict[str, Any]:
        return {"brightness": float(pred["values"][i])}

    def display(self, cfg: Any, record: Any, pred: Any, names: Any, units: Any) -> Display:
        return Display(summary={"values": [{"name": "brightness", "value": record["brightness"], "unit": None}]})

    def card_task_line(self, cfg: Any) -> str:
        return "image brightness regression (toy example)"


@dataclass
class TrainBrightnessConfig(CommandConfig):
    command: ClassVar[str] = "train-brightness"
    name: str
    data_path: str
    pretrained_weights: str = "random"
    arch: str = "vit_tiny"
    input_size: int = 32
    epochs: int = 30
    lr: float = 0.01
    output_dir: str = "."
    device: str = "cpu"
    seed: int = 0


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", required=True)
    p.add_argument("--data_path", required=True, help="folder with images and labels.csv (file,brightness)")
    p.add_argument("--pretrained_weights", default="random")
    p.add_argument("--arch", default="vit_tiny")
    p.add_argument("--input_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--output_dir", default=".")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    return train_brightness(to_config(TrainBrightnessConfig, args))


def train_brightness(cfg: TrainBrightnessConfig) -> int:
    from visionfm import load_encoder
    from visionfm.engine.distributed import init_distributed, seed_everything
    from visionfm.engine.features import eval_transform
    from visionfm.engine.logging import RunLogger
    from visionfm.engine.trainer import FitConfig, TensorBatches, fit, load_decoder_checkpoint, loss_step
    from visionfm.inference.io import read_image
    from visionfm.models.heads import LinearHead
    from visionfm.models.pooling import pooled_features
    from visionfm.packaging import model_folder_from_training

    env = init_distributed(cfg.device)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.output_dir) / cfg.name
    encoder = load_encoder(cfg.pretrained_weights, cfg.arch, "teacher", 16, cfg.input_size).eval()
    tf = eval_transform(cfg.input_size, "Fundus")
    with open(Path(cfg.data_path) / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    images = torch.stack([tf(read_image(Path(cfg.data_path) / f)) for f, _ in rows])
    y = torch.tensor([[float(v)] for _, v in rows])
    with torch.no_grad():
        x = pooled_features(encoder, images, 1, 0)
    head = LinearHead(x.shape[1], 1)
    half = len(x) // 2

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, Any]:
        return {"mae": float((m(x[half:]) - y[half:]).abs().mean())}

    fit(head, TensorBatches(x[:half], y[:half], 8, cfg.seed), loss_step(nn.functional.mse_loss), evaluate,
        selection_key="mae", higher_is_better=False, run_dir=run_dir, cfg=FitConfig(epochs=cfg.epochs, lr=cfg.lr),
        env=env, run_logger=RunLogger(run_dir, tensorboard=False), identity=cfg.to_dict())
    head.load_state_dict(load_decoder_checkpoint(run_dir / "checkpoint_best")[0])
    model_folder_from_training(
        run_dir / "model", encoder=encoder, head=head, task="toy_brightness", modality="Fundus",
        input_size=cfg.input_size, interpolation="bilinear", features={"type": "pooled", "n_last_blocks": 1,
                                                                       "avgpool": 0},
        head_type="linear", head_args={"embed_dim": int(x.shape[1]), "num_classes": 1},
        metrics=evaluate(head.eval()), name=cfg.name)
    return 0
