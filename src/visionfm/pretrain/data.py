"""Pretraining input pipeline: a resumable, deterministic sampler and the crop/mask dataset.

Every sample's augmentation is seeded from ``(seed, epoch, index)`` instead of a worker's running
generator. The crops an image gets therefore do not depend on the number of workers, on which
worker served it, or on whether the run was interrupted and resumed — which is what makes
``--resume auto`` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableSampler", "PretrainCropDataset", "collate_crops", "loader_generator"]


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator a pretraining ``DataLoader`` draws its per-iterator base seed from.

    Every ``iter(DataLoader)`` draws one number (the workers' base seed) from its generator, by default
    the global one. Drawn from the global generator, it would shift every later global draw (drop
    path, ...) by one whenever a resume creates the epoch's iterator after restoring the checkpoint's
    RNG state at a point the uninterrupted run had already drawn it: a dedicated generator seeded by
    ``(seed, epoch)`` keeps the global stream the same with and without a resume.
    """
    return torch.Generator().manual_seed((int(seed) * 1_000_033 + int(epoch)) % (2**63))


class ResumableSampler(Sampler[tuple[int, int]]):
    """Per-rank sampler yielding ``(epoch, index)``; can start mid-epoch.

    Each epoch draws one global order from ``seed + epoch`` (a permutation, or weighted draws with
    replacement when ``weights`` are given), trims it to a multiple of ``world_size * batch_size``
    (drop_last, as the original) and deals it round-robin to ranks.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.n = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world = world_size
        self.seed = seed
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.epoch = 0
        self.start_iter = 0
        if self.iters_per_epoch == 0:  # a ConfigError (a ValueError): one line on the command line
            from visionfm.errors import ConfigError

            raise ConfigError(
                f"--batch_size_per_gpu {batch_size}: {num_samples} images cannot fill one batch per process × "
                f"{world_size} processes (every pretraining batch is full); lower --batch_size_per_gpu or add images"
            )

    @property
    def iters_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        self.epoch = epoch
        self.start_iter = start_iter

    def _global_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = self.iters_per_epoch * self.batch_size * self.world
        mine = self._global_order()[:total][self.rank :: self.world]
        for idx in mine[self.start_iter * self.batch_size :].tolist():
            yield self.epoch, idx

    def __len__(self) -> int:
        return (self.iters_per_epoch - self.start_iter) * self.batch_size


class PretrainCropDataset(Dataset):
    """Wraps an image dataset returning ``(PIL image, modality)``; yields what the views callable
    returns: ``(crops, masks)`` for :class:`IBOTAugmentation` (the PIL path), a
    :class:`~visionfm.pretrain.views.ViewSample` for :class:`~visionfm.pretrain.views.GeometricViews`
    (the device path)."""

    def __init__(self, images: Dataset, augmentation: Any, seed: int) -> None:
        self.images = images
        self.aug = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        img, modality = self.images[index]
        sample_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        self.aug.epoch = epoch  # pred_start_epoch decides the mask ratio
        with torch.random.fork_rng(devices=[]):
            # only the CPU generator: torch.manual_seed would also queue (lazy) accelerator seeding,
            # formatting a stack trace per call
            torch.default_generator.manual_seed(sample_seed)
            return self.aug(img, modality, rng=np.random.default_rng(sample_seed))


def collate_crops(batch):
    """``[(crops, masks)] * B`` → ``(list of [B,3,S,S] per crop, list of bool [B,H,W] per crop)``."""
    n = len(batch[0][0])
    crops = [torch.stack([b[0][i] for b in batch]) for i in range(n)]
    masks = [torch.stack([b[1][i] for b in batch]) for i in range(n)]
    return crops, masks

