"""The "vfm" classification / regression layout (reference §2.3).

::

    <root>/<dataset>/<split>_labels.txt      lines: rel/path.png;labels[;subject_id]
    <root>/<dataset>/<images…>

Differences from the original ``ClsImgs``, all deliberate: ``#`` comments and blank lines are
allowed (its README showed them but the parser crashed, item 13); a ``val`` split exists; datasets
are taken in sorted order and samples keep file order (no shuffling at construction); every malformed
line is one error naming file and line; a bad image fails or is skipped explicitly instead of being
replaced by a random one; an optional third field carries a subject id for multimodal fusion.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionfm.data.images import SampleDataset, list_subdirs, load_image, read_label_lines, resolve_split
from visionfm.errors import ConfigError, DataFormatError

__all__ = ["LabeledSample", "VFMDataset", "VFM_SPLITS", "available_splits", "find_vfm_datasets"]

VFM_SPLITS: tuple[str, ...] = ("training", "val", "test")


@dataclass
class LabeledSample:
    """One line of a ``<split>_labels.txt`` file, resolved."""

    path: Path
    labels: np.ndarray  # float32 [L]
    dataset: str
    rel_path: str
    subject: str | None
    line: int


def _label_file(dataset_dir: Path, split: str) -> Path:
    return dataset_dir / f"{split}_labels.txt"


def find_vfm_datasets(root: str | os.PathLike[str], datasets: Sequence[str] | None = None) -> list[Path]:
    """Dataset folders under ``root``: every non-hidden sub-directory (sorted), or those named.

    A ``root`` that itself holds ``<split>_labels.txt`` files is taken as a single dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError("dataset root is not a folder", root)
    if any(_label_file(root, s).is_file() for s in VFM_SPLITS):
        if datasets and list(datasets) != [root.name]:
            raise ConfigError(
                f"{root} is a single dataset (it holds *_labels.txt files); datasets={list(datasets)} "
                "cannot be selected inside it"
            )
        return [root]
    subdirs = list_subdirs(root)
    if datasets is None:
        if not subdirs:
            raise DataFormatError(
                "no dataset folders found; expected <root>/<dataset>/<split>_labels.txt", root
            )
        return subdirs
    by_name = {d.name: d for d in subdirs}
    unknown = [name for name in datasets if name not in by_name]
    if unknown:
        raise DataFormatError(
            f"dataset folder(s) {', '.join(unknown)} not found; available: "
            f"{', '.join(by_name) or 'none'}",
            root,
        )
    if not datasets:
        raise ConfigError("datasets is an empty list; leave it as None to use every dataset folder")
    return [by_name[name] for name in dict.fromkeys(datasets)]


def available_splits(root: str | os.PathLike[str], datasets: Sequence[str] | None = None) -> list[str]:
    """Splits (of training, val, test) for which EVERY selected dataset has a label file.

    Lets a caller validate on ``val`` when it exists and fall back to ``test`` otherwise.
    """
    dirs = find_vfm_datasets(root, datasets)
    return [s for s in VFM_SPLITS if all(_label_file(d, s).is_file() for d in dirs)]


def _parse_labels(text: str, path: Path, line: int) -> np.ndarray:
    values: list[float] = []
    for position, item in enumerate(text.split(","), start=1):
        item = item.strip()
        if not item:
            raise DataFormatError(f"label {position} is empty (stray comma?) in {text!r}", path, line)
        try:
            value = float(item)
        except ValueError:
            raise DataFormatError(
                f"label {position} is {item!r}, not a number; expected comma-separated numbers", path, line
            ) from None
        if not math.isfinite(value):
            raise DataFormatError(f"label {position} is {item!r}; labels must be finite numbers", path, line)
        values.append(value)
    return np.asarray(values, dtype=np.float32)


class VFMDataset(SampleDataset):
    """Images with label vectors from one or more vfm-layout datasets.

    Args:
        root: folder of dataset folders (or one dataset folder).
        split: ``training`` (alias ``train``), ``val`` (``validation``) or ``test``.
        transform: applied to the PIL image.
        num_labels: expected label count; for single-integer class labels, the number of classes
            (``1`` = binary: ids must be 0 or 1).
        datasets: names of the dataset folders to use (default: all, sorted).
        on_error: ``"fail"`` or ``"skip"`` for unreadable images.

    A sample is ``(image, labels float32 [L], extras)`` with extras ``img_path``, ``rel_path``
    (``<dataset>/<path as written>``), ``dataset`` and ``subject`` (``""`` when absent).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[[Any], Any] | None = None,
        num_labels: int | None = None,
        datasets: Sequence[str] | None = None,
        on_error: str = "fail",
    ) -> None:
        super().__init__(on_error)
        self.root = Path(root)
        self.split = resolve_split(split, VFM_SPLITS)
        self.transform = transform
        if num_labels is not None and (isinstance(num_labels, bool) or int(num_labels) < 1):
            raise ConfigError(f"num_labels must be a positive integer, got {num_labels!r}")
        self.expected_labels = None if num_labels is None else int(num_labels)
        self.samples: list[LabeledSample] = []
        self.label_files: dict[str, Path] = {}  # dataset name -> its label file, for messages
        self._first: tuple[Path, int, int] | None = None  # (file, line, label count) that set L
        for dataset_dir in find_vfm_datasets(self.root, datasets):
            self.samples.extend(self._read_dataset(dataset_dir))
        if not self.samples:
            raise DataFormatError(f"no samples in any {self.split}_labels.txt (only comments or blank lines)",
                                  self.root)
        self._labels = np.stack([s.labels for s in self.samples])
        self._check_class_ids()

    # -- construction ------------------------------------------------------------------------------

    def _read_dataset(self, dataset_dir: Path) -> list[LabeledSample]:
        label_file = _label_file(dataset_dir, self.split)
        if not label_file.is_file():
            present = [s for s in VFM_SPLITS if _label_file(dataset_dir, s).is_file()]
            raise DataFormatError(
                f"missing {label_file.name}; every dataset folder needs one for split {self.split!r} "
                f"(this one has: {', '.join(f'{s}_labels.txt' for s in present) or 'no label files'})",
                dataset_dir,
            )
        name = dataset_dir.name
        self.label_files[name] = label_file
        samples: list[LabeledSample] = []
        missing: list[tuple[int, str, Path]] = []
        for line, text in read_label_lines(label_file):
            fields = text.split(";")
            if len(fields) not in (2, 3):
                raise DataFormatError(
                    f"expected '<image path>;<labels>' or '<image path>;<labels>;<subject id>' "
                    f"(fields separated by ';'), found {len(fields)} field(s) in {text!r}",
                    label_file,
                    line,
                )
            rel = fields[0].strip()
            if not rel:
                raise DataFormatError("image path (first field) is empty", label_file, line)
            labels = _parse_labels(fields[1], label_file, line)
            self._check_count(labels, label_file, line)
            subject = fields[2].strip() if len(fields) == 3 else ""
            image_path = dataset_dir / rel
            if not image_path.is_file():
                missing.append((line, rel, image_path))
            samples.append(LabeledSample(image_path, labels, name, rel, subject or None, line))
        if missing:
            line, rel, image_path = missing[0]
            more = f" ({len(missing) - 1} more listed images are missing too)" if len(missing) > 1 else ""
            raise DataFormatError(f"image {rel!r} not found (looked for {image_path}){more}", label_file, line)
        return samples

    def _check_count(self, labels: np.ndarray, path: Path, line: int) -> None:
        count = len(labels)
        expected = self.expected_labels
        if expected is not None and count > 1 and count != expected:
            raise DataFormatError(f"expected {expected} labels (num_labels), found {count}", path, line)
        if expected is not None and expected > 1 and count == 1 and not float(labels[0]).is_integer():
            raise DataFormatError(
                f"expected {expected} labels (num_labels) or one integer class id, found the single value "
                f"{float(labels[0])!r}",
                path,
                line,
            )
        if self._first is None:
            self._first = (path, line, count)
        elif count != self._first[2]:
            first_path, first_line, first_count = self._first
            raise DataFormatError(
                f"expected {first_count} label(s) as on {first_path}:{first_line}, found {count}", path, line
            )

    def _check_class_ids(self) -> None:
        """Single-integer labels are class ids: with ``num_labels`` they must lie in range."""
        if self.expected_labels is None or self.label_kind != "class":
            return
        limit = max(self.expected_labels, 2)  # num_labels == 1 means binary: ids 0 and 1
        hint = "binary task: ids must be 0 or 1" if self.expected_labels == 1 else f"ids must be 0..{limit - 1}"
        for sample in self.samples:
            value = int(sample.labels[0])
            if not 0 <= value < limit:
                raise DataFormatError(
                    f"class id {value} is out of range for num_labels={self.expected_labels} ({hint})",
                    self.label_files[sample.dataset],
                    sample.line,
                )

    # -- access ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Any, torch.Tensor, dict[str, str]]:
        sample = self.samples[index]
        img = load_image(sample.path)
        if self.transform is not None:
            img = self.transform(img)
        extras = {
            "img_path": str(sample.path),
            "rel_path": f"{sample.dataset}/{sample.rel_path}",
            "dataset": sample.dataset,
            "subject": sample.subject or "",
        }
        return img, torch.from_numpy(sample.labels.copy()), extras

    @property
    def labels(self) -> np.ndarray:
        """All label vectors, float32 ``[N, L]`` in file order."""
        return self._labels

    @property
    def num_labels(self) -> int:
        """L, the label-vector length found in the files."""
        return int(self._labels.shape[1])

    @property
    def label_kind(self) -> str:
        """``"class"`` (one integer per row), ``"multihot"`` (0/1 vectors, L > 1) or ``"continuous"``."""
        values = self._labels
        if values.shape[1] == 1 and np.all(values == np.round(values)):
            return "class"
        if values.shape[1] > 1 and np.all((values == 0) | (values == 1)):
            return "multihot"
        return "continuous"

    @staticmethod
    def available_splits(root: str | os.PathLike[str], datasets: Sequence[str] | None = None) -> list[str]:
        """See :func:`available_splits`."""
        return available_splits(root, datasets)
