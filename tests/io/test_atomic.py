"""Atomic writers: a write that fails half-way leaves the previous file byte-identical and no temporary."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch

from visionfm.io import atomic
from visionfm.io.atomic import atomic_path, save_json_atomic, save_safetensors_atomic, save_text_atomic, save_torch_atomic

OLD = b"the previous, complete file\n" * 64


class DiskFull(OSError):
    pass


def _old_file(tmp_path: pathlib.Path) -> pathlib.Path:
    dest = tmp_path / "out" / "target.bin"
    dest.parent.mkdir()
    dest.write_bytes(OLD)
    return dest


def _assert_untouched(dest: pathlib.Path) -> None:
    assert dest.read_bytes() == OLD
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temporary left behind


def _half_then_fail(path) -> None:
    """What a crash or a full disk does to a serializer: some bytes reach the file, then an error."""
    with open(path, "wb") as fh:
        fh.write(b"half of the new cont")
        fh.flush()
    raise DiskFull(28, "No space left on device")


def test_torch_save_failing_mid_write_keeps_old_file(tmp_path, monkeypatch):
    dest = _old_file(tmp_path)
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _half_then_fail(f))
    with pytest.raises(DiskFull):
        save_torch_atomic({"w": torch.ones(3)}, dest)
    _assert_untouched(dest)


def test_safetensors_failing_mid_write_keeps_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    dest = _old_file(tmp_path)
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, filename, *a, **k: _half_then_fail(filename))
    with pytest.raises(DiskFull):
        save_safetensors_atomic({"w": torch.ones(3)}, dest)
    _assert_untouched(dest)


@pytest.mark.parametrize("writer", ["text", "json"])
def test_text_and_json_failing_mid_write_keep_old_file(tmp_path, monkeypatch, writer):
    dest = _old_file(tmp_path)
    monkeypatch.setattr(pathlib.Path, "write_text", lambda self, *a, **k: _half_then_fail(self))
    monkeypatch.setattr(pathlib.Path, "write_bytes", lambda self, *a, **k: _half_then_fail(self))
    with pytest.raises(DiskFull):
        if writer == "text":
            save_text_atomic("new text", dest)
        else:
            save_json_atomic({"new": 1}, dest)
    _assert_untouched(dest)


def test_failing_replace_or_fsync_keeps_old_file(tmp_path, monkeypatch):
    dest = _old_file(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(atomic.os, "replace", lambda *a, **k: _raise(DiskFull(5, "I/O error")))
        with pytest.raises(DiskFull):
            save_text_atomic("complete new text", dest)
    _assert_untouched(dest)
    with monkeypatch.context() as m:
        m.setattr(atomic.os, "fsync", lambda *a, **k: _raise(DiskFull(28, "No space left on device")))
        with pytest.raises(DiskFull):
            save_torch_atomic({"w": torch.ones(3)}, dest)
    _assert_untouched(dest)


def _raise(exc):
    raise exc


def test_atomic_path_body_failing_keeps_old_file(tmp_path):
    dest = _old_file(tmp_path)
    with pytest.raises(KeyboardInterrupt):  # BaseException too: Ctrl-C mid-write
        with atomic_path(dest) as tmp:
            assert tmp != dest and tmp.parent == dest.parent  # same folder: os.replace stays atomic
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    _assert_untouched(dest)


def _mode(path: pathlib.Path) -> int:
    return path.stat().st_mode & 0o777


def _usual_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_successful_writes_replace_the_file(tmp_path):
    dest = _old_file(tmp_path)
    save_torch_atomic({"w": torch.arange(3)}, dest)
    assert torch.equal(torch.load(dest)["w"], torch.arange(3))
    assert _mode(dest) == _usual_mode()  # not mkstemp's 0600
    save_json_atomic({"a": [1, 2]}, dest)
    assert json.loads(dest.read_text()) == {"a": [1, 2]}
    assert _mode(dest) == _usual_mode()
    save_safetensors_atomic({"w": torch.ones(2)}, dest, metadata={"k": "v"})
    from safetensors import safe_open

    with safe_open(str(dest), "pt") as f:
        assert f.metadata() == {"k": "v"} and torch.equal(f.get_tensor("w"), torch.ones(2))
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    new = save_text_atomic("x", tmp_path / "new" / "deeper" / "file.txt")  # parents are created
    assert new.read_text() == "x"


def test_safetensors_write_has_the_usual_permissions(tmp_path):
    """safetensors' save_file puts a new 0600 file in place of the temporary; the mode is set after it."""
    dest = save_safetensors_atomic({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    assert _mode(dest) == _usual_mode()


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from visionfm.io.atomic import atomic_dir

    dest = tmp_path / "store"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["store"] and (dest / "old.txt").read_text() == "old"
    umask = os.umask(0o022)
    try:
        with atomic_dir(dest) as tmp:
            (tmp / "new.txt").write_text("new")
    finally:
        os.umask(umask)
    assert [p.name for p in dest.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["store"]
    assert dest.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
