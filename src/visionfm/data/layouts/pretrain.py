"""Unlabelled images for pretraining: ``<root>/<ModalityFolder>/**/<image>`` (reference §2.2).

The original globbed one folder non-recursively with no extension filter, accepted only the
misspelling ``Silt-Lamp`` (so slit-lamp could never be pretrained), and its retry could index past
the end. Folder names here go through :func:`canonical_modality`, so ``SlitLamp``, ``Silt-Lamp``,
``SiltLamp`` and ``UltraSound`` all work, and several modalities can be mixed with per-image
modality names so the transform can normalise each image with its own statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from visionfm.data.images import SampleDataset, list_images, list_subdirs, load_image, read_jpeg
from visionfm.data.modalities import MODALITY_NAMES, canonical_modality
from visionfm.errors import ConfigError, DataFormatError

__all__ = ["PretrainImages"]

PretrainTransform = Callable[[Image.Image, str], Any]


def _canonical_or_none(name: str) -> str | None:
    try:
        return canonical_modality(name)
    except ValueError:
        return None


class PretrainImages(SampleDataset):
    """Images of one or more modalities, each sample tagged with its canonical modality name.

    Args:
        root: folder holding one sub-folder per modality (any accepted spelling of the name).
        modalities: canonical or alias names; a single string is accepted too.
        transform: called as ``transform(image, modality)``; without it a sample is ``(image, modality)``.
        on_error: ``"fail"`` or ``"skip"`` (see :class:`SampleDataset`).
        recursive: also collect images in nested folders (hidden files and folders are ignored).
        min_pixels: decode JPEGs at the smallest DCT scale that keeps this many pixels (0: full size).
        defer_jpeg: return RGB/grayscale JPEGs undecoded (:class:`EncodedJPEG`, for GPU decoding);
            other files are decoded as usual.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        modalities: Sequence[str] | str,
        transform: PretrainTransform | None = None,
        on_error: str = "fail",
        recursive: bool = True,
        min_pixels: int = 0,
        defer_jpeg: bool = False,
    ) -> None:
        super().__init__(on_error)
        self.min_pixels = int(min_pixels)
        self.defer_jpeg = bool(defer_jpeg)
        self.root = Path(root)
        self.transform = transform
        if isinstance(modalities, str):
            modalities = [modalities]
        try:
            wanted = list(dict.fromkeys(canonical_modality(m) for m in modalities))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not wanted:
            raise ConfigError(f"no modality requested; choose from {', '.join(MODALITY_NAMES)}")
        self.modalities: list[str] = wanted

        if not self.root.is_dir():
            raise DataFormatError("pretraining root is not a folder", self.root)
        subdirs = list_subdirs(self.root)
        existing = ", ".join(d.name for d in subdirs) or "none"
        self.samples: list[tuple[Path, str]] = []
        self.folders: dict[str, list[Path]] = {}
        for modality in wanted:
            folders = [d for d in subdirs if _canonical_or_none(d.name) == modality]
            if not folders:
                raise DataFormatError(
                    f"no folder for modality {modality!r} (folder names match any accepted spelling, "
                    f"e.g. 'Silt-Lamp' or 'UltraSound'); sub-folders found: {existing}",
                    self.root,
                )
            found = [(p, modality) for folder in folders for p in list_images(folder, recursive=recursive)]
            if not found:
                where = ", ".join(f.name for f in folders)
                raise DataFormatError(
                    f"modality folder(s) {where} contain no images "
                    f"({'searched recursively' if recursive else 'top level only'}; extensions "
                    f"jpg, jpeg, png, tif, tiff, bmp, webp); sub-folders found: {existing}",
                    self.root,
                )
            self.folders[modality] = folders
            self.samples.extend(found)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> Any:
        path, modality = self.samples[index]
        img = (read_jpeg(path) if self.defer_jpeg else None) or load_image(path, self.min_pixels)
        return self.transform(img, modality) if self.transform is not None else (img, modality)

    def modality_counts(self) -> dict[str, int]:
        """Number of images per requested modality, in request order."""
        counts = dict.fromkeys(self.modalities, 0)
        for _, modality in self.samples:
            counts[modality] += 1
        return counts

    def sample_weights(self, weighting: str | Mapping[str, float] = "uniform") -> list[float]:
        """Per-sample weights for ``torch.utils.data.WeightedRandomSampler``.

        ``"uniform"``: every image equally likely (large modalities dominate);
        ``"balanced"``: every modality gets the same total weight;
        a mapping ``{modality: total weight}``: each modality's share, split evenly over its images.
        The mapping must name every loaded modality (use 0 to leave one out); aliases are accepted.
        """
        counts = self.modality_counts()
        if isinstance(weighting, str):
            if weighting == "uniform":
                return [1.0] * len(self.samples)
            if weighting == "balanced":
                totals = dict.fromkeys(counts, 1.0)
            else:
                raise ConfigError(f"weighting must be 'uniform', 'balanced' or a mapping, got {weighting!r}")
        else:
            totals = {}
            for key, value in weighting.items():
                modality = _canonical_or_none(str(key))
                if modality is None or modality not in counts:
                    raise ConfigError(
                        f"modality weight given for {key!r}, which is not among the loaded modalities "
                        f"({', '.join(counts)})"
                    )
                weight = float(value)
                if not weight >= 0.0 or weight == float("inf"):
                    raise ConfigError(f"modality weight for {key!r} must be a finite number >= 0, got {value!r}")
                totals[modality] = weight
            missing = [m for m in counts if m not in totals]
            if missing:
                raise ConfigError(
                    f"no weight given for modality {', '.join(missing)}; give every loaded modality a "
                    "weight (0 leaves it out)"
                )
            if not any(totals.values()):
                raise ConfigError("every modality weight is 0; at least one must be positive")
        per_image = {m: totals[m] / counts[m] for m in counts}
        return [per_image[modality] for _, modality in self.samples]
