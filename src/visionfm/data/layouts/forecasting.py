"""Glaucoma-progression forecasting layout (reference §2.7, §5.7).

``<root>/<split>_labels.txt`` (the README's name) or ``<root>/<split>.txt`` (what the original code
read); when both exist ``<split>_labels.txt`` wins and the other is ignored with a warning. Each line
is ``path, label, days``. The original split on exactly ``", "``, opened paths relative to the
working directory, and did not check that ``days`` fit the positional encoding (``max_len``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionfm.data.images import SampleDataset, load_image, read_label_lines, resolve_split
from visionfm.errors import ConfigError, DataFormatError

__all__ = ["FORECAST_SPLITS", "ForecastSample", "ForecastingDataset", "forecasting_label_file"]

logger = logging.getLogger("visionfm.data")

FORECAST_SPLITS: tuple[str, ...] = ("training", "val", "test")


@dataclass(frozen=True)
class ForecastSample:
    path: Path
    label: int  # 0 = no progression, 1 = progression
    days: int  # interval in days; indexes the positional encoding
    rel_path: str  # as written in the label file
    line: int


def forecasting_label_file(root: str | os.PathLike[str], split: str) -> Path:
    """``<split>_labels.txt`` if present, else ``<split>.txt``; DataFormatError when neither exists."""
    root = Path(root)
    preferred, legacy = root / f"{split}_labels.txt", root / f"{split}.txt"
    if preferred.is_file():
        if legacy.is_file():
            logger.warning("%s: both %s and %s exist; using %s", root, preferred.name, legacy.name, preferred.name)
        return preferred
    if legacy.is_file():
        return legacy
    raise DataFormatError(f"no label file for split {split!r}: expected {preferred.name} or {legacy.name}", root)


def _parse_int(text: str, what: str, path: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataFormatError(f"{what} must be an integer, got {text!r}", path, line) from None


class ForecastingDataset(SampleDataset):
    """Images with a binary progression label and a time interval in days.

    Args:
        root: folder holding the label files.
        split: ``training`` (alias ``train``), ``val`` or ``test``.
        transform: applied to the PIL image.
        max_days: length of the day positional encoding; every ``days`` must be below it.
        on_error: ``"fail"`` or ``"skip"`` for unreadable images.

    Image paths are resolved relative to ``root`` first, then as written (absolute or relative to
    the working directory, as the original did). A sample is ``(image, label float32 [],
    days int64 [], extras {"img_path", "rel_path"})``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[[Any], Any] | None = None,
        max_days: int | None = None,
        on_error: str = "fail",
    ) -> None:
        super().__init__(on_error)
        if max_days is not None and (isinstance(max_days, bool) or int(max_days) < 1):
            raise ConfigError(f"max_days must be a positive integer, got {max_days!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataFormatError("forecasting root is not a folder", self.root)
        self.split = resolve_split(split, FORECAST_SPLITS)
        self.transform = transform
        self.max_days = None if max_days is None else int(max_days)
        self.label_file = forecasting_label_file(self.root, self.split)
        lines = read_label_lines(self.label_file)
        self.samples: list[ForecastSample] = [self._parse(number, text) for number, text in lines]
        if not self.samples:
            raise DataFormatError("no samples (only comments or blank lines)", self.label_file)

    def _parse(self, line: int, text: str) -> ForecastSample:
        path = self.label_file
        fields = [f.strip() for f in text.rsplit(",", 2)]  # rsplit: commas inside the path survive
        if len(fields) != 3 or not fields[0]:
            raise DataFormatError(f"expected '<image path>, <label 0/1>, <days>', got {text!r}", path, line)
        rel, label_text, days_text = fields
        label = _parse_int(label_text, "label", path, line)
        if label not in (0, 1):
            raise DataFormatError(f"label must be 0 or 1, got {label}", path, line)
        days = _parse_int(days_text, "days", path, line)
        if days < 0:
            raise DataFormatError(f"days must be >= 0, got {days}", path, line)
        if self.max_days is not None and days >= self.max_days:
            raise DataFormatError(
                f"days {days} does not fit the positional encoding: it must be < max_days={self.max_days}",
                path,
                line,
            )
        under_root, as_written = self.root / rel, Path(rel)
        if under_root.is_file():
            resolved = under_root
        elif as_written.is_file():
            resolved = as_written
        else:
            tried = str(under_root) if as_written.is_absolute() or under_root == as_written else (
                f"{under_root} or {as_written.absolute()}")
            raise DataFormatError(f"image {rel!r} not found (looked for {tried})", path, line)
        return ForecastSample(resolved, label, days, rel, line)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, str]]:
        sample = self.samples[index]
        img = load_image(sample.path)
        if self.transform is not None:
            img = self.transform(img)
        label = torch.tensor(float(sample.label), dtype=torch.float32)
        days = torch.tensor(sample.days, dtype=torch.int64)
        return img, label, days, {"img_path": str(sample.path), "rel_path": sample.rel_path}

    @property
    def labels(self) -> np.ndarray:
        """0/1 labels, int64 ``[N]`` in file order."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def days(self) -> np.ndarray:
        """Intervals in days, int64 ``[N]`` in file order."""
        return np.array([s.days for s in self.samples], dtype=np.int64)
