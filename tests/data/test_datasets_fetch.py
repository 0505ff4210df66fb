"""``visionfm datasets`` over a loopback HTTP server: a small synthetic archive in the vfm layouts.

The archive holds ``MultiModalCls/{IDRiD,OCTID}`` (vfm labels) and ``VesselSegmentation/DRIVE`` (image/label
pairs) written with :func:`visionfm.data.synth.generate`, zipped; nothing touches the network.
"""

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.helpers import LoopbackFileServer
from visionfm.cli.main import main as cli_main
from visionfm.data import fetch as F
from visionfm.errors import DataFormatError
from visionfm.io.archive import safe_extract


@pytest.fixture(scope="module")
def archive_bytes(tmp_path_factory):
    from visionfm.data.synth import generate

    tmp = tmp_path_factory.mktemp("synth")
    generate("multi_cls", tmp / "cls", num=3, img_size=32, seed=0)
    generate("segmentation", tmp / "seg", num=2, img_size=32, seed=0, num_classes=2)
    tree = tmp / "tree"
    shutil.copytree(tmp / "cls" / "FundusClassificationMulti" / "dataset_A", tree / "MultiModalCls" / "IDRiD")
    shutil.copytree(tmp / "cls" / "OCTClassificationMulti" / "dataset_A", tree / "MultiModalCls" / "OCTID")
    shutil.copytree(tmp / "seg" / "VesselSegmentation" / "dataset_A", tree / "VesselSegmentation" / "DRIVE")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tree).as_posix())
    return buf.getvalue()


@pytest.fixture
def server(archive_bytes):
    s = LoopbackFileServer(archive_bytes, "processed.zip")
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch, server):
    monkeypatch.setenv("VISIONFM_HOME", str(tmp_path / "home"))
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"tiny-processed": {"file": "tiny.zip", "url": server.url}}))
    monkeypatch.setenv("VISIONFM_DATASETS_REGISTRY", str(reg))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VISIONFM_OFFLINE", raising=False)
    return tmp_path / "home" / "datasets"


def _cli(capfd, *argv):
    try:
        code = cli_main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capfd.readouterr()
    return code, out.splitlines(), [x for x in err.splitlines() if x.strip()]


def test_the_official_entry():
    e = F.DATASETS["visionfm-processed"]
    assert e.drive_id == "1QShoYrkhZetF41vmFuf6ds3I1W05YONk"
    assert e.source_url == "https://drive.google.com/file/d/1QShoYrkhZetF41vmFuf6ds3I1W05YONk/view"


def test_fetch_extracts_checks_and_records(home, server, capfd):
    code, out, err = _cli(capfd, "datasets", "fetch", "tiny-processed")
    assert code == 0, err
    dest = home / "tiny-processed"
    assert out[-1] == str(dest)
    found = [x for x in out if x.startswith("found ")]
    assert len(found) == 3 and not [x for x in out if x.startswith("problem")], out
    assert any("MultiModalCls/IDRiD: vfm" in x and "training 3" in x and "test 3" in x for x in found), found
    assert any("MultiModalCls/OCTID: vfm" in x for x in found)
    assert any("VesselSegmentation/DRIVE: segmentation" in x and "training 2" in x for x in found), found
    assert (dest / "MultiModalCls" / "IDRiD" / "training_labels.txt").is_file()
    record = json.loads((home / "tiny.zip.json").read_text())
    assert record["sha256"] == hashlib.sha256(server.payload).hexdigest()
    assert not list(home.glob(".*part")) and not list(home.glob(".*extract"))

    hits = server.hits
    code, out, _ = _cli(capfd, "datasets", "path", "tiny-processed")
    assert code == 0 and out[-1] == str(dest) and server.hits == hits
    code, out, _ = _cli(capfd, "datasets", "list", "--json")
    row = next(r for r in json.loads("\n".join(out)) if r["name"] == "tiny-processed")
    assert row["downloaded"] and row["extracted"] and row["sha256"] == record["sha256"]

    # a corrupted archive is refused from then on
    data = bytearray((home / "tiny.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (home / "tiny.zip").write_bytes(bytes(data))
    for cmd in ("path", "fetch"):
        code, _, err = _cli(capfd, "datasets", cmd, "tiny-processed")
        assert code == 2 and len(err) == 1 and "sha256" in err[0] and "datasets fetch tiny-processed" in err[0], err


def test_a_changed_upstream_file_is_refused(home, server, archive_bytes):
    F.fetch_dataset("tiny-processed")
    (home / "tiny.zip").unlink()
    shutil.rmtree(home / "tiny-processed")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x/training_labels.txt", "a.png;1\n")
    server.payload = buf.getvalue()
    with pytest.raises(DataFormatError, match="recorded in"):
        F.fetch_dataset("tiny-processed")
    assert not (home / "tiny-processed").exists()


def test_layout_problems_are_one_line_each(home, server, capfd):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Cls/A/training_labels.txt", "training/missing.png;1\n")
        zf.writestr("Cls/B/test_labels.txt", "only-one-field\n")
    server.payload = buf.getvalue()
    code, out, err = _cli(capfd, "datasets", "fetch", "tiny-processed", "--url", server.url)
    assert code == 0, err
    problems = [x for x in out if x.startswith("problem: ")]
    assert len(problems) == 2, out
    assert "Cls/A: training:" in problems[0] and "missing.png" in problems[0]
    assert "Cls/B: test:" in problems[1] and "field" in problems[1]


def test_not_an_archive_and_offline(home, server, monkeypatch, capfd):
    server.payload = b"<html>quota exceeded</html>"
    code, _, err = _cli(capfd, "datasets", "fetch", "tiny-processed")
    assert code == 2 and len(err) == 1 and "not a zip or tar archive" in err[0]
    assert not list(home.glob("*.zip")) and not list(home.glob(".*part"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hits = server.hits
    code, _, err = _cli(capfd, "datasets", "fetch", "visionfm-processed")
    assert code == 2 and len(err) == 1 and server.hits == hits
    assert "https://drive.google.com/file/d/1QShoYrkhZetF41vmFuf6ds3I1W05YONk/view" in err[0]
    assert str(home / "visionfm-processed.zip") in err[0]
    code, _, err = _cli(capfd, "datasets", "path", "visionfm-processed")
    assert code == 2 and "visionfm datasets fetch visionfm-processed" in err[0]


def test_drive_entries_go_through_gdown(home, archive_bytes, monkeypatch):
    import gdown

    calls = []

    def fake_download(id=None, output=None, resume=False, **kw):  # noqa: A002 (gdown's own name)
        calls.append((id, resume))
        Path(output).write_bytes(archive_bytes)
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    report = F.fetch_dataset("visionfm-processed")
    assert calls == [("1QShoYrkhZetF41vmFuf6ds3I1W05YONk", True)]
    assert report.path == home / "visionfm-processed" and len(report.found) == 3 and not report.problems


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["zip-dotdot", "zip-absolute", "tar-dotdot", "tar-symlink", "tar-hardlink"])
def test_unsafe_archives_are_refused(kind, tmp_path):
    arc = tmp_path / "a.bin"
    if kind.startswith("zip"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("ok.txt", "x")
            zf.writestr("../evil.txt" if kind == "zip-dotdot" else "/etc/evil.txt", "x")
        arc.write_bytes(buf.getvalue())
    else:
        info = tarfile.TarInfo("a/../../evil.txt" if kind == "tar-dotdot" else "link")
        if kind == "tar-symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "tar-hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "ok.txt"
        else:
            info.size = 1
        arc.write_bytes(_tar_with(info, b"x" if kind == "tar-dotdot" else b""))
    with pytest.raises(DataFormatError, match="refusing"):
        safe_extract(arc, tmp_path / "out", DataFormatError)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary folder left


def test_tar_archives_extract(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("d/file.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    (tmp_path / "a.tgz").write_bytes(buf.getvalue())
    assert safe_extract(tmp_path / "a.tgz", tmp_path / "out", DataFormatError) == 1
    assert (tmp_path / "out" / "d" / "file.txt").read_text() == "hello"
