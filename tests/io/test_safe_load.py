"""The safe-loading allow-list (:mod:`visionfm.io.safe_load`): checkpoints holding numeric numpy arrays,
dtypes and scalars load — written by numpy 2 (``numpy._core``) or numpy 1 (``numpy.core``) — and every
other global is still refused before it can run, also when it hides next to (or inside) numpy arrays."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch

from visionfm.errors import UnsafeCheckpointError
from visionfm.io.safe_load import load_checkpoint_file

NUMERIC = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
           "float16", "float32", "float64", "complex64", "complex128", "longdouble"]


def _as_numpy1(src, dst) -> None:
    """``src`` re-written with the global names numpy 1 writes (``numpy.core.*`` instead of ``numpy._core.*``)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.", b"numpy.core.")
            zout.writestr(info, data)


@pytest.mark.parametrize("numpy1", [False, True], ids=["numpy2-names", "numpy1-names"])
def test_numeric_arrays_dtypes_and_scalars_load(tmp_path, numpy1):
    arrays = {d: (np.arange(6).reshape(2, 3) % 2).astype(d) for d in NUMERIC}
    content = {"teacher": {"w": torch.ones(2)}, "best_f1": np.float64(0.75), "epoch": 3,
               **{f"stats_{d}": a for d, a in arrays.items()},
               **{f"fortran_{d}": np.asfortranarray(a) for d, a in arrays.items()},
               **{f"dtype_{d}": a.dtype for d, a in arrays.items()},
               **{f"scalar_{d}": a.reshape(-1)[1] for d, a in arrays.items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    if numpy1:
        _as_numpy1(path, tmp_path / "old.pth")
        path = tmp_path / "old.pth"
        assert b"numpy.core.multiarray" in zipfile.ZipFile(path).read("ckpt/data.pkl")
    got, meta = load_checkpoint_file(path)
    assert meta == {} and set(got) == set(content)
    assert torch.equal(got["teacher"]["w"], torch.ones(2))
    assert got["best_f1"] == 0.75 and got["epoch"] == 3
    for d, arr in arrays.items():
        for key in (f"stats_{d}", f"fortran_{d}"):
            assert isinstance(got[key], np.ndarray) and got[key].dtype == arr.dtype, key
            np.testing.assert_array_equal(got[key], arr)
        assert got[f"fortran_{d}"].flags.f_contiguous
        assert got[f"dtype_{d}"] == arr.dtype and got[f"scalar_{d}"] == arr.reshape(-1)[1]


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _NumpyLoad:
    """``numpy.load`` is a numpy global too, but not an admitted one (it could unpickle another file)."""

    def __reduce__(self):
        return (np.load, ("/nonexistent.npy",))


@pytest.mark.parametrize("numpy1", [False, True], ids=["numpy2-names", "numpy1-names"])
@pytest.mark.parametrize("case", ["beside-arrays", "inside-object-array", "numpy-load", "object-dtype-class"])
def test_everything_else_is_still_refused_and_never_runs(tmp_path, case, numpy1):
    marker = tmp_path / "pwned"
    payload = {
        "beside-arrays": lambda: {"stats": np.zeros(3, np.float32), "evil": _System(marker)},
        "inside-object-array": lambda: {"stats": np.array([_System(marker), 1], dtype=object)},
        "numpy-load": lambda: {"stats": np.zeros(2), "evil": _NumpyLoad()},
        "object-dtype-class": lambda: {"cls": type(np.dtype(object))},
    }[case]()
    path = tmp_path / "evil.pth"
    torch.save(payload, path)
    if numpy1:
        _as_numpy1(path, tmp_path / "evil_old.pth")
        path = tmp_path / "evil_old.pth"
    expected = {"beside-arrays": "system", "inside-object-array": "ObjectDType", "numpy-load": "load",
                "object-dtype-class": "ObjectDType"}[case]
    with pytest.raises(UnsafeCheckpointError, match=rf"refused to load .*{expected}"):
        load_checkpoint_file(path)
    assert not marker.exists()
