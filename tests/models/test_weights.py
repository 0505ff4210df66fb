"""``visionfm weights`` and official-name resolution, over a loopback HTTP server (nothing touches the network).

A tiny entry (vit_tiny, fp16, ~11 MB) is registered through ``VISIONFM_WEIGHTS_REGISTRY``; the official
table's Drive ids are only checked, never downloaded.
"""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import LoopbackFileServer
from visionfm.cli.main import main as cli_main
from visionfm.models import weights as W
from visionfm.models.encoder import VisionFMEncoder


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory):
    torch.manual_seed(0)
    enc = VisionFMEncoder("vit_tiny", 224, 16)
    teacher = {f"backbone.{k}": v.half() for k, v in enc.state_dict().items() if k != "masked_embed"}
    path = tmp_path_factory.mktemp("tiny") / "VFM_Tiny_weights.pth"
    torch.save({"teacher": teacher, "epoch": 1}, path)
    return path.read_bytes()


@pytest.fixture
def server(tiny_bytes):
    s = LoopbackFileServer(tiny_bytes, "VFM_Tiny_weights.pth")
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch, server):
    """VISIONFM_HOME in tmp, a 'Tiny' entry served by the loopback server, online (conftest sets offline)."""
    monkeypatch.setenv("VISIONFM_HOME", str(tmp_path / "home"))
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"Tiny": {"file": "VFM_Tiny_weights.pth", "url": server.url, "arch": "vit_tiny"}}))
    monkeypatch.setenv("VISIONFM_WEIGHTS_REGISTRY", str(reg))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VISIONFM_OFFLINE", raising=False)
    return tmp_path / "home" / "weights"


def _cli(capfd, *argv):
    try:
        code = cli_main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capfd.readouterr()
    return code, out, [x for x in err.splitlines() if x.strip()]


def test_the_official_table():
    assert list(W.OFFICIAL_WEIGHTS) == ["Fundus", "OCT", "FFA", "Ultrasound", "External", "SlitLamp", "MRI", "UBM"]
    for name, e in W.OFFICIAL_WEIGHTS.items():
        assert e.file == f"VFM_{name}_weights.pth"
        assert (e.arch, e.patch_size, e.checkpoint_key, e.licence) == ("vit_base", 16, "teacher", "CC BY-NC 4.0")
        assert e.source_url == f"https://drive.google.com/file/d/{e.drive_id}/view"
    assert W.OFFICIAL_WEIGHTS["SlitLamp"].drive_id == "1pemWDkGoZYlqLQ6ooFINktyk8xnv9wY_"
    for spelling, name in [("fundus", "Fundus"), ("CFP", "Fundus"), ("slit-lamp", "SlitLamp"),
                           ("B-Ultrasound", "Ultrasound"), ("vfm_oct_weights.pth", "OCT")]:
        assert W.lookup(spelling).name == name
    assert W.lookup("resnet50") is None


def test_fetch_path_list_and_corruption(home, server, capfd):
    code, out, err = _cli(capfd, "weights", "fetch", "tiny")
    assert code == 0, err
    path = home / "VFM_Tiny_weights.pth"
    assert out.strip() == str(path) and path.read_bytes() == server.payload
    record = json.loads((home / "VFM_Tiny_weights.pth.json").read_text())
    import hashlib

    assert record["sha256"] == hashlib.sha256(server.payload).hexdigest()
    assert not list(home.glob(".*part")), "the temporary file was renamed into place"

    assert _cli(capfd, "weights", "path", "Tiny")[:2] == (0, f"{path}\n")
    code, out, _ = _cli(capfd, "weights", "list", "--json")
    row = next(r for r in json.loads(out) if r["name"] == "Tiny")
    assert row["present"] and row["path"] == str(path) and row["sha256"] == record["sha256"]
    code, out, _ = _cli(capfd, "weights", "list")
    assert code == 0 and "CC BY-NC 4.0" in out and str(path) in out and "drive.google.com/file/d/" in out

    hits = server.hits
    assert _cli(capfd, "weights", "fetch", "Tiny")[0] == 0 and server.hits == hits  # present: checked only

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for cmd in ("path", "fetch"):
        code, _, err = _cli(capfd, "weights", cmd, "Tiny")
        assert code == 2 and len(err) == 1 and "sha256" in err[0] and "visionfm weights fetch Tiny" in err[0], err


def test_fetch_resumes_a_partial_download(home, server):
    home.mkdir(parents=True)
    half = len(server.payload) // 2
    (home / ".VFM_Tiny_weights.pth.part").write_bytes(server.payload[:half])
    path = W.fetch_weights("Tiny")
    assert server.ranges == [f"bytes={half}-"] and path.read_bytes() == server.payload


def test_a_file_that_does_not_load_is_refused(home, server, capfd):
    server.payload = b"not a checkpoint" * 100
    code, _, err = _cli(capfd, "weights", "fetch", "Tiny")
    assert code == 2 and len(err) == 1 and "does not load as Tiny weights" in err[0], err
    assert not (home / "VFM_Tiny_weights.pth").exists() and not (home / "VFM_Tiny_weights.pth.json").exists()


def test_offline_refuses_with_one_line(home, server, monkeypatch, capfd):
    monkeypatch.setenv("VISIONFM_OFFLINE", "1")
    code, _, err = _cli(capfd, "weights", "fetch", "Tiny")
    assert code == 2 and len(err) == 1 and server.hits == 0
    assert "offline" in err[0] and server.url in err[0] and str(home / "VFM_Tiny_weights.pth") in err[0]
    monkeypatch.delenv("VISIONFM_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _cli(capfd, "weights", "fetch", "Fundus")
    assert code == 2 and "https://drive.google.com/file/d/13uWm0a02dCWyARUcrCdHZIcEgRfBmVA4/view" in err[0]


def test_drive_entries_go_through_gdown(home, server, monkeypatch, tmp_path):
    import gdown

    calls = []

    def fake_download(id=None, output=None, resume=False, **kw):  # noqa: A002 (gdown's own name)
        calls.append((id, resume))
        Path(output).write_bytes(server.payload)
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"Drive": {"file": "VFM_Drive_weights.pth", "drive_id": "abc", "arch": "vit_tiny"}}))
    path = W.fetch_weights("Drive")
    assert calls == [("abc", True)] and path == home / "VFM_Drive_weights.pth" and server.hits == 0


def test_pretrained_weights_name_resolves_in_commands(home, server, tmp_path, capfd):
    assert W.fetch_weights("Tiny").is_file()
    out = tmp_path / "tiny.safetensors"
    code, _, err = _cli(capfd, "export", "--pretrained_weights", "TINY", "--out", str(out))
    assert code == 0, err
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["arch"] == "vit_tiny" and cfg["source_sha256"] == json.loads(
        (home / "VFM_Tiny_weights.pth.json").read_text())["sha256"]
    code, text, _ = _cli(capfd, "info", "Tiny")
    assert code == 0 and str(home / "VFM_Tiny_weights.pth") in text

    # a real path wins over a name
    (tmp_path / "Tiny").write_bytes(b"junk")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, _, err = _cli(capfd, "export", "--weights", "Tiny", "--out", str(tmp_path / "b.safetensors"))
    finally:
        os.chdir(cwd)
    assert code == 2 and "visionfm weights fetch" not in err[-1]


def test_an_absent_name_is_one_line_naming_fetch_and_url(home, tmp_path, capfd):
    from visionfm.models.loading import load_encoder, recorded_metadata

    code, _, err = _cli(capfd, "extract", "--pretrained_weights", "fundus", "--data_path", str(tmp_path / "d"),
                        "--dst_root", str(tmp_path / "out"), "--device", "cpu")
    assert code == 2, err
    line = err[-1]
    assert "visionfm weights fetch Fundus" in line
    assert "https://drive.google.com/file/d/13uWm0a02dCWyARUcrCdHZIcEgRfBmVA4/view" in line
    assert str(home / "VFM_Fundus_weights.pth") in line
    assert not (tmp_path / "out").exists()
    from visionfm.errors import CheckpointError

    for f in (load_encoder, recorded_metadata):
        with pytest.raises(CheckpointError, match="weights fetch SlitLamp"):
            f("Slit Lamp")


def test_official_names_record_their_modality(home, server, tmp_path):
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"UBM": {"file": "VFM_UBM_weights.pth", "url": server.url, "arch": "vit_tiny"}}))
    W.fetch_weights("ubm")
    from visionfm.models.loading import load_encoder, recorded_metadata

    assert recorded_metadata("UBM") == {"modality": "UBM"}
    enc = load_encoder("ultrasound biomicroscopy", arch=None, patch_size=None)
    assert enc.load_report.modality == "UBM" and enc.load_report.source == str(home / "VFM_UBM_weights.pth")


def test_bad_url_and_registry(home, monkeypatch, tmp_path, capfd):
    code, _, err = _cli(capfd, "weights", "fetch", "Tiny", "--url", "ftp://x/y")
    assert code == 2 and len(err) == 1 and "--url" in err[0]
    assert _cli(capfd, "weights", "path")[0] == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"X": {"file": "../x.pth", "url": "http://127.0.0.1/x"}}))
    monkeypatch.setenv("VISIONFM_WEIGHTS_REGISTRY", str(bad))
    code, _, err = _cli(capfd, "weights", "list")
    assert code == 2 and "bare file name" in err[0]
