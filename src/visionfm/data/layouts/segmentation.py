"""Segmentation layout: ``<root>/<dataset>/<split>/{images,labels}/`` (reference §2.5).

The original derived the label path with ``img_path.replace('images', 'labels')`` (which rewrites
every "images" in the whole path), so a ``.jpg`` image never found its ``.png`` label, and it
converted masks through RGB, losing palette indices (item 14). Here the label is the file in
``labels/`` with the SAME STEM and any image extension (``.png`` preferred), and masks are read by
:func:`load_mask`, which keeps class ids. The folder discovery is shared with the landmark layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from visionfm.data.images import SampleDataset, list_images, list_subdirs, load_image, load_mask, resolve_split
from visionfm.errors import ConfigError, DataFormatError

__all__ = [
    "MASK_SUFFIXES",
    "PairedSample",
    "SEG_SPLITS",
    "SegmentationDataset",
    "check_mask_ids",
    "find_paired_samples",
]

SEG_SPLITS: tuple[str, ...] = ("training", "val", "test")
# Preferred first: PNG is lossless. JPEG labels are found (so the error names them) but refused: lossy
# compression alters class ids along every edge (11.5 % of a synthetic mask's pixels in issue 13).
MASK_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp", ".webp", ".jpg", ".jpeg")
LOSSY_MASK_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")


@dataclass(frozen=True)
class PairedSample:
    """An image and its label file (mask or landmark array)."""

    image: Path
    label: Path
    dataset: str
    rel_path: str  # "<dataset>/<split>/images/<file>"


def find_paired_samples(
    root: str | os.PathLike[str],
    split: str,
    label_suffixes: Sequence[str],
    datasets: Sequence[str] | None = None,
) -> list[PairedSample]:
    """Pair ``<dataset>/<split>/images/<stem>.*`` with ``labels/<stem><suffix>``.

    ``root`` may hold dataset folders, or be one dataset folder itself (``<root>/<split>/images``).
    A missing label is reported at construction, naming the image. ``label_suffixes`` are tried in order.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError("dataset root is not a folder", root)
    if (root / split / "images").is_dir():
        if datasets and list(datasets) != [root.name]:
            raise ConfigError(f"{root} is a single dataset (it holds {split}/images); datasets cannot be selected")
        dataset_dirs = [root]
    else:
        subdirs = {d.name: d for d in list_subdirs(root)}
        if datasets is None:
            dataset_dirs = list(subdirs.values())
        else:
            unknown = [name for name in datasets if name not in subdirs]
            if unknown:
                raise DataFormatError(
                    f"dataset folder(s) {', '.join(unknown)} not found; available: {', '.join(subdirs) or 'none'}",
                    root,
                )
            dataset_dirs = [subdirs[name] for name in dict.fromkeys(datasets)]
        if not dataset_dirs:
            raise DataFormatError(f"no dataset folders found; expected <root>/<dataset>/{split}/images", root)
    suffixes = [s.lower() for s in label_suffixes]
    samples: list[PairedSample] = []
    for dataset_dir in dataset_dirs:
        split_dir = dataset_dir / split
        images_dir, labels_dir = split_dir / "images", split_dir / "labels"
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise DataFormatError(f"missing folder {folder.name}/ (expected {split}/images and {split}/labels)",
                                      split_dir if split_dir.is_dir() else dataset_dir)
        labels: dict[str, dict[str, Path]] = {}
        for entry in labels_dir.iterdir():
            if entry.is_file() and entry.suffix.lower() in suffixes:
                labels.setdefault(entry.stem, {}).setdefault(entry.suffix.lower(), entry)
        images = list_images(images_dir, recursive=False)
        if not images:
            raise DataFormatError("no images (extensions jpg, jpeg, png, tif, tiff, bmp, webp)", images_dir)
        missing: list[Path] = []
        for image in images:
            candidates = labels.get(image.stem, {})
            label = next((candidates[s] for s in suffixes if s in candidates), None)
            if label is None:
                missing.append(image)
                continue
            rel = f"{dataset_dir.name}/{split}/images/{image.name}"
            samples.append(PairedSample(image, label, dataset_dir.name, rel))
        if missing:
            more = f" ({len(missing) - 1} more images have no label either)" if len(missing) > 1 else ""
            raise DataFormatError(
                f"no label for image {missing[0].name}: expected {labels_dir}/{missing[0].stem} with extension "
                f"{' or '.join(suffixes)}{more}",
                missing[0],
            )
    return samples


def check_mask_ids(mask: np.ndarray, num_labels: int, path: Path) -> np.ndarray:
    """Validate class ids; binary (num_labels 1 or 2) masks stored as {0, 255} become {0, 1}."""
    if mask.size == 0:
        raise DataFormatError("mask is empty", path)
    low, high = int(mask.min()), int(mask.max())
    if num_labels <= 2 and high == 255 and np.all((mask == 0) | (mask == 255)):
        return (mask == 255).astype(np.int64)
    limit = max(num_labels, 2)  # num_labels == 1 is binary (sigmoid): ids 0 and 1
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        hint = "binary masks must hold 0/1 (or 0/255)" if num_labels <= 2 else f"ids must be 0..{limit - 1}"
        raise DataFormatError(f"mask contains class id {bad}, out of range for num_labels={num_labels} ({hint})",
                              path)
    return mask


class PairedDataset(SampleDataset):
    """The shared part of the paired readers (``<dataset>/<split>/images`` + ``labels``): the split, the
    sample list, the joint transform, and the positive output count (named ``count_name`` in errors)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        count_name: str,
        count: int,
        label_suffixes: Sequence[str],
        joint_transform: Callable[[Any, Any], tuple[Any, Any]] | None,
        datasets: Sequence[str] | None,
        on_error: str,
    ) -> None:
        super().__init__(on_error)
        if isinstance(count, bool) or int(count) < 1:
            raise ConfigError(f"{count_name} must be a positive integer, got {count!r}")
        self.root = Path(root)
        self.split = resolve_split(split, SEG_SPLITS)
        self.count = int(count)
        self.joint_transform = joint_transform
        self.samples: list[PairedSample] = find_paired_samples(self.root, self.split, tuple(label_suffixes), datasets)

    def __len__(self) -> int:
        return len(self.samples)


class SegmentationDataset(PairedDataset):
    """Images with class-id masks.

    Args:
        root: folder of dataset folders, or one dataset folder.
        split: ``training`` (alias ``train``), ``val`` or ``test``.
        num_labels: number of classes; ``1`` means binary (sigmoid), masks {0,1} or {0,255}.
        joint_transform: called as ``joint_transform(image, mask)``; must return ``(image, mask)``.
        datasets: dataset folder names to use (default all, sorted).
        on_error: ``"fail"`` or ``"skip"`` for unreadable images/masks and bad mask contents.

    A sample is ``(image, mask, extras)``: a PIL RGB image and an int64 ``[H, W]`` tensor of class
    ids, wrapped as ``torchvision.tv_tensors.Mask`` so torchvision v2 transforms treat it as a mask
    (nearest interpolation). Extras: ``img_path``, ``label_path``, ``rel_path``, ``dataset``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        num_labels: int,
        joint_transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        datasets: Sequence[str] | None = None,
        on_error: str = "fail",
    ) -> None:
        super().__init__(root, split, "num_labels", num_labels, MASK_SUFFIXES, joint_transform, datasets, on_error)
        self.num_labels = self.count
        lossy = [s.label for s in self.samples if s.label.suffix.lower() in LOSSY_MASK_SUFFIXES]
        if lossy:  # refused up front, whatever on_error says: every JPEG mask is wrong along its edges
            more = f" ({len(lossy) - 1} more JPEG masks)" if len(lossy) > 1 else ""
            raise DataFormatError(f"mask is a JPEG file{more}; lossy compression changes class ids along every "
                                  "edge — store masks as PNG (one integer class id per pixel)", lossy[0])

    def _load(self, index: int) -> tuple[Any, Any, dict[str, str]]:
        sample = self.samples[index]
        image = load_image(sample.image)
        mask = load_mask(sample.label)
        if mask.shape != (image.height, image.width):
            raise DataFormatError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {sample.image} is "
                f"{image.width}x{image.height}",
                sample.label,
            )
        mask = check_mask_ids(mask, self.num_labels, sample.label)
        target: Any = tv_tensors.Mask(torch.from_numpy(mask))
        if self.joint_transform is not None:
            image, target = self.joint_transform(image, target)
        extras = {
            "img_path": str(sample.image),
            "label_path": str(sample.label),
            "rel_path": sample.rel_path,
            "dataset": sample.dataset,
        }
        return image, target, extras
