"""Run by test_ddp.py under torchrun (or alone): the engine's fit on fixed data; rank 0 saves the weights."""

import sys

import torch
from torch import nn

from visionfm.engine.distributed import cleanup_distributed, init_distributed
from visionfm.engine.trainer import FitConfig, TensorBatches, fit, loss_step


def main(out: str, per_process_batch: int) -> None:
    import os

    os.makedirs(out, exist_ok=True)
    env = init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] - x[:, 2] > 0).long()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))  # no BatchNorm: batch-size free
    batches = TensorBatches(x, y, per_process_batch, seed=3, rank=env.rank, world=env.world_size)
    fit(model, batches, loss_step(nn.functional.cross_entropy), lambda m: {"acc": 1.0}, selection_key="acc",
        higher_is_better=True, run_dir=out, cfg=FitConfig(epochs=3, lr=0.05, batch_size=per_process_batch, seed=3),
        env=env)
    if env.is_main:
        torch.save(model.state_dict(), f"{out}/weights.pt")
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
