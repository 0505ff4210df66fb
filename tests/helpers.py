"""Small helpers shared by several test modules (test data writers, checkpoint walkers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch


def tensors_in(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a (nested) loaded file, by dotted key — independent of visionfm.io.finite, which
    the robustness tests check with it."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors_in(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors_in(v, f"{prefix}[{i}]")


def write_dicom(target: str | Path | BinaryIO, arr: np.ndarray, pi: str = "MONOCHROME2", frames: int = 1,
                pixel_data: bool = True, **attrs: Any) -> Any:
    """A Secondary Capture DICOM of ``arr`` (``[H, W]``, ``[H, W, 3]`` for RGB / YBR_FULL, ``[F, H, W(, 3)]`` for
    frames) at ``target`` (a path or a binary file object); bits from the array's dtype, ``attrs`` set last (e.g.
    ``BitsStored=12``). ``pixel_data=False`` leaves the pixels out (a broken file)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    rgb = pi in ("RGB", "YBR_FULL")  # three samples per pixel, interleaved
    shape = arr.shape[1:] if frames > 1 else arr.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = pi
    if rgb:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    out = str(target) if isinstance(target, (str, Path)) else target
    try:
        ds.save_as(out, enforce_file_format=True)
    except TypeError:  # pydicom 2
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(out, write_like_original=False)
    return target
