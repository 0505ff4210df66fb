"""The restricted unpickler: the original's feature dicts load under every protocol; anything needing another
global is refused, naming it and the file, before its payload runs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from visionfm.errors import DataFormatError
from visionfm.io import UnsafePickleError, load_restricted_pickle


def _original_dict(d: int = 6) -> dict:
    """The dict extract_features.py pickles (cls mode), plus the other builtin/numpy kinds it admits."""
    rng = np.random.default_rng(0)
    return {"img_name": "dataset_A/training/00000001.png", "feats_idx": [8, 9, 10, 11],
            "feats": [rng.standard_normal(d).astype(np.float32) for _ in range(4)],
            "labels": np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32),
            "img_path": "/data/FundusClassificationMulti/dataset_A/training/00000001.png",
            "extra": (np.float32(2.5), np.int64(3), np.zeros((2, 3), np.int64), b"", b"\x00\xff", {1, 2},
                      frozenset({"a"}), 1.5 + 2j, None, True, bytearray(b"xy"), np.zeros(0, np.float16))}


def _assert_equal(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_round_trips(tmp_path, protocol):
    obj = _original_dict()
    path = tmp_path / f"p{protocol}.pickle"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    _assert_equal(obj, load_restricted_pickle(path))


def test_numpy1_module_names_load(tmp_path):
    """Files written under numpy 1 name numpy.core.multiarray (numpy 2 moved it to numpy._core)."""
    obj = {"feats": [np.arange(4, dtype=np.float32)], "s": np.float32(1.5)}
    raw = pickle.dumps(obj, protocol=2)  # protocol 2 names globals as text lines
    old = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    path = tmp_path / "np1.pickle"
    path.write_bytes(old)
    _assert_equal(obj, load_restricted_pickle(path))


def _plant(marker: str) -> int:
    with open(marker, "w") as fh:
        fh.write("the payload ran")
    return 0


class _Planter:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_plant, (self.marker,))


class _Shell:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("trap, named", [(_Planter, f"{__name__}._plant"), (_Shell, f"{os.system.__module__}.system")])
def test_booby_trapped_pickle_is_refused_before_it_runs(tmp_path, protocol, trap, named):
    marker = tmp_path / "marker"
    obj = _original_dict()
    obj["labels"] = trap(str(marker))  # hidden inside the dict, after arrays that load fine
    path = tmp_path / "trap.pickle"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(UnsafePickleError) as err:
        load_restricted_pickle(path)
    msg = str(err.value)
    assert named in msg and str(path) in msg and "\n" not in msg
    assert not marker.exists()
    # the same bytes do run with the plain unpickler: the test would notice an inert trap
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("builtins", "getattr"), ("numpy", "load"),
                                          ("numpy.dtypes", "ObjectDType"), ("_codecs", "decode"),
                                          ("numpy.core.multiarray", "frombuffer"), ("copyreg", "_reconstructor")])
def test_globals_outside_the_list_are_refused(tmp_path, module, name):
    path = tmp_path / "g.pickle"
    path.write_bytes(b"c" + module.encode() + b"\n" + name.encode() + b"\n.")  # protocol 0 GLOBAL, then STOP
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        load_restricted_pickle(path)


def test_codecs_encode_only_latin1(tmp_path):
    path = tmp_path / "c.pickle"
    # _codecs.encode("x", "zlib_codec"): an admitted global with arguments it is not admitted for
    path.write_bytes(b"c_codecs\nencode\n(Vx\nVzlib_codec\ntR.")
    with pytest.raises(DataFormatError, match="latin1"):
        load_restricted_pickle(path)


@pytest.mark.parametrize("content, match", [(b"", "not a readable pickle"), (b"garbage\n", "not a readable pickle"),
                                            (pickle.dumps({"a": np.zeros(3)})[:-7], "not a readable pickle")])
def test_unreadable_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.pickle"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=match) as err:
        load_restricted_pickle(path)
    assert not isinstance(err.value, UnsafePickleError) and str(path) in str(err.value)
    with pytest.raises(DataFormatError, match="cannot read"):
        load_restricted_pickle(tmp_path / "missing.pickle")
