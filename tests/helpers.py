"""Small helpers shared by several test modules (test data writers, checkpoint walkers)."""

from __future__ import annotations

import http.server
import threading
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


class LoopbackFileServer:
    """One file served over HTTP on 127.0.0.1 (honouring ``Range: bytes=N-``), for download tests without network.

    ``hits`` counts requests, ``ranges`` lists the Range headers received; ``url`` ends in ``filename``.
    """

    def __init__(self, payload: bytes, filename: str) -> None:
        self.payload, self.ranges, self.hits = payload, [], 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.hits += 1
                body, status = server.payload, 200
                rng = self.headers.get("Range")
                if rng:
                    server.ranges.append(rng)
                    start = int(rng.split("=")[1].split("-")[0])
                    body, status = server.payload[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{filename}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
