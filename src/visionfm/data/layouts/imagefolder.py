"""ImageNet / RETFound layout: ``<root>/{train,val,test}/<class folder>/<images>`` (reference §2.4, §2.8).

Classes are alphabetical by default (torchvision ``ImageFolder``). The RETFound benchmark scripts
instead hard-coded a class order per benchmark and picked it by a substring test on the path (so any
path containing "Retina" became the Retina benchmark); released fine-tuned weights depend on those
orders, so they are kept in :data:`RETFOUND_CLASS_ORDERS`, selected by explicit name and passed as
``class_order``. The original listed files with no extension filter; only images are read here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visionfm.data.images import SampleDataset, list_images, list_subdirs, load_image, resolve_split
from visionfm.errors import ConfigError, DataFormatError

__all__ = [
    "IMAGEFOLDER_SPLITS",
    "ImageFolderDataset",
    "RETFOUND_CLASS_ORDERS",
    "available_splits",
    "retfound_class_order",
]

IMAGEFOLDER_SPLITS: tuple[str, ...] = ("train", "val", "test")

_DR5_LOWER = ("anodr", "bmilddr", "cmoderatedr", "dseveredr", "eproliferativedr")

# Label order 0..C-1 of each RETFound benchmark, as hard-coded by the original (reference §2.8).
RETFOUND_CLASS_ORDERS: dict[str, tuple[str, ...]] = {
    "PAPILA": ("anormal", "bsuspectglaucoma", "cglaucoma"),
    "Glaucoma_fundus": ("anormal_control", "bearly_glaucoma", "cadvanced_glaucoma"),
    "Retina": ("anormal", "bcataract", "cglaucoma", "ddretina_disease"),
    "OCTID": ("ANormal", "ARMD", "CSR", "Diabetic_retinopathy", "Macular_Hole"),
    # Interleaved exactly as written in the original source; do not sort.
    "JSIEC": (
        "0.0.Normal", "20.Massive hard exudates", "0.1.Tessellated fundus", "21.Yellow-white spots-flecks",
        "0.2.Large optic cup", "22.Cotton-wool spots", "0.3.DR1", "23.Vessel tortuosity", "1.0.DR2",
        "24.Chorioretinal atrophy-coloboma", "1.1.DR3", "25.Preretinal hemorrhage", "10.0.Possible glaucoma",
        "26.Fibrosis", "10.1.Optic atrophy", "27.Laser Spots", "11.Severe hypertensive retinopathy",
        "28.Silicon oil in eye", "12.Disc swelling and elevation", "29.0.Blur fundus without PDR",
        "13.Dragged Disc", "29.1.Blur fundus with suspected PDR", "14.Congenital disc abnormality", "3.RAO",
        "15.0.Retinitis pigmentosa", "4.Rhegmatogenous RD", "15.1.Bietti crystalline dystrophy", "5.0.CSCR",
        "16.Peripheral retinal degeneration and break", "5.1.VKH disease", "17.Myelinated nerve fiber",
        "6.Maculopathy", "18.Vitreous particles", "7.ERM", "19.Fundus neoplasm", "8.MH", "2.0.BRVO",
        "9.Pathological myopia", "2.1.CRVO",
    ),  # fmt: skip
    "IDRiD": ("anoDR", "bmildDR", "cmoderateDR", "dsevereDR", "eproDR"),
    "MESSIDOR2": _DR5_LOWER,
    "APTOS2019": _DR5_LOWER,
}


def retfound_class_order(benchmark: str) -> list[str]:
    """Class-folder order of a RETFound benchmark, by exact (case-insensitive) name — never by substring."""
    for name, order in RETFOUND_CLASS_ORDERS.items():
        if name.lower() == benchmark.strip().lower():
            return list(order)
    raise ConfigError(f"unknown RETFound benchmark {benchmark!r}; known: {', '.join(RETFOUND_CLASS_ORDERS)}")


def available_splits(root: str | os.PathLike[str]) -> list[str]:
    """Which of train, val, test exist as folders under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError("dataset root is not a folder", root)
    return [s for s in IMAGEFOLDER_SPLITS if (root / s).is_dir()]


class ImageFolderDataset(SampleDataset):
    """Class-per-folder images. A sample is ``(image, class index, {"img_path", "rel_path"})``.

    Args:
        root: folder holding ``train``/``val``/``test``.
        split: ``train`` (alias ``training``), ``val`` or ``test``.
        class_order: class-folder names in label order (default: alphabetical). Every class folder in
            the split must be listed; a listed class may be absent from a split (no samples of it).
        transform: applied to the PIL image.
        on_error: ``"fail"`` or ``"skip"``.

    Images are collected recursively inside each class folder; ``rel_path`` is relative to ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        class_order: Sequence[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
        on_error: str = "fail",
    ) -> None:
        super().__init__(on_error)
        self.root = Path(root)
        self.split = resolve_split(split, IMAGEFOLDER_SPLITS)
        self.transform = transform
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            present = available_splits(self.root)
            raise DataFormatError(
                f"split folder {self.split!r} not found; splits present: {', '.join(present) or 'none'}",
                self.root,
            )
        folders = {d.name: d for d in list_subdirs(split_dir)}
        if class_order is None:
            if not folders:
                raise DataFormatError("no class folders found; expected <split>/<class>/<images>", split_dir)
            classes = sorted(folders)
        else:
            classes = [str(c) for c in class_order]
            if not classes:
                raise ConfigError("class_order is empty")
            repeated = sorted({c for c in classes if classes.count(c) > 1})
            if repeated:
                raise ConfigError(f"class_order names {', '.join(repeated)} more than once")
            extra = [name for name in folders if name not in classes]
            if extra:
                raise DataFormatError(
                    f"class folder(s) not in class_order: {', '.join(extra)}; class_order is "
                    f"{', '.join(classes)}",
                    split_dir,
                )
        self.classes: list[str] = classes
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(classes)}
        self.samples: list[tuple[Path, int]] = []
        for index, name in enumerate(classes):
            if name in folders:
                self.samples.extend((p, index) for p in list_images(folders[name]))
        if not self.samples:
            raise DataFormatError(
                "no images in any class folder (extensions jpg, jpeg, png, tif, tiff, bmp, webp)", split_dir
            )
        self.targets: list[int] = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Any, int, dict[str, str]]:
        path, label = self.samples[index]
        img = load_image(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, label, {"img_path": str(path), "rel_path": path.relative_to(self.root).as_posix()}

    @staticmethod
    def available_splits(root: str | os.PathLike[str]) -> list[str]:
        """See :func:`available_splits`."""
        return available_splits(root)
