"""Hugging Face repo ids (``org/name``, ``org/name@rev``, ``org/name:file``) as encoder weights and model folders.

Nothing touches the network: the tests build a huggingface_hub cache in a tmp folder by the library's own
layout (``models--org--name/{refs/<rev>, blobs/<sha>, snapshots/<commit>/<file> -> blob}``) and resolve offline.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from visionfm.cli.main import main as cli_main
from visionfm.errors import CheckpointError
from visionfm.io.hub import parse_hub_ref
from visionfm.models import build_encoder, load_encoder
from visionfm.models.export import export_encoder

SIZE = 32


def _commit(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path], revision: str = "main") -> Path:
    """Put ``files`` ({name in repo: local file}) into ``cache`` as huggingface_hub stores a downloaded snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = _commit(repo_id + revision)
    snap = repo / "snapshots" / commit
    for name, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / blob.name)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def encoder_and_files(tmp_path_factory):
    torch.manual_seed(7)
    enc = build_encoder("vit_tiny", img_size=SIZE, patch_size=16).eval()
    d = tmp_path_factory.mktemp("hub_src")
    pth = d / "VFM_Tiny_weights.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in enc.state_dict().items()}}, pth)
    export_encoder(pth, d / "export", modality="Fundus")
    return enc, pth, d / "export"


@pytest.fixture
def cache(tmp_path, monkeypatch, encoder_and_files):
    _, pth, export = encoder_and_files
    c = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_repo(c, "vfm-org/tiny-export", {n: export / n for n in ("config.json", "model.safetensors", "README.md")})
    cache_repo(c, "vfm-org/tiny-pth", {"VFM_Tiny_weights.pth": pth})
    cache_repo(c, "vfm-org/tiny-pth", {"weights/other.pth": pth}, revision="v2")
    return c


def _out(enc, x):
    with torch.no_grad():
        return enc(x)


def test_parse_hub_ref():
    assert parse_hub_ref("org/name") == parse_hub_ref(" org/name ")
    ref = parse_hub_ref("org/name@v1.0:sub/file.pth")
    assert (ref.repo_id, ref.revision, ref.filename) == ("org/name", "v1.0", "sub/file.pth")
    for not_a_ref in ("Fundus", "runs/ckpt.pth", "a/b/c", "/abs/path", "./x/y", "org/name.safetensors", ""):
        assert parse_hub_ref(not_a_ref) is None, not_a_ref


def test_an_export_repo_loads_offline(cache, encoder_and_files, tmp_path, capfd):
    enc, _, _ = encoder_and_files
    x = torch.randn(1, 3, SIZE, SIZE)
    got = load_encoder("vfm-org/tiny-export", arch=None, patch_size=None, img_size=SIZE)
    assert float((_out(got, x) - _out(enc, x)).abs().max()) == 0.0
    assert got.load_report.modality == "Fundus" and "models--vfm-org--tiny-export" in got.load_report.source
    out = tmp_path / "again.safetensors"
    assert cli_main(["export", "--pretrained_weights", "vfm-org/tiny-export", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["modality"] == "Fundus"


def test_a_single_checkpoint_repo_loads_offline(cache, encoder_and_files):
    enc, _, _ = encoder_and_files
    x = torch.randn(1, 3, SIZE, SIZE)
    for ref in ("vfm-org/tiny-pth", "vfm-org/tiny-pth:VFM_Tiny_weights.pth", "vfm-org/tiny-pth@v2",
                "vfm-org/tiny-pth@v2:weights/other.pth"):
        got = load_encoder(ref, arch="vit_tiny", img_size=SIZE)
        assert float((_out(got, x) - _out(enc, x)).abs().max()) == 0.0, ref


def test_a_local_path_wins(cache, encoder_and_files, tmp_path, monkeypatch):
    _, _, export = encoder_and_files
    shutil.copytree(export, tmp_path / "vfm-org" / "local-only")
    monkeypatch.chdir(tmp_path)
    assert load_encoder("vfm-org/local-only", arch=None, patch_size=None, img_size=SIZE).load_report.source == \
        "vfm-org/local-only"


def test_offline_and_not_cached_is_one_line(cache, tmp_path, capfd):
    with pytest.raises(CheckpointError) as err:
        load_encoder("vfm-org/not-cached", arch="vit_tiny")
    msg = str(err.value)
    assert "\n" not in msg and "'vfm-org/not-cached'" in msg and "offline" in msg and str(cache) in msg
    assert "hf download vfm-org/not-cached" in msg
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*not in the\s+cache"):
        load_encoder("vfm-org/tiny-export:model.safetensors@x")  # a file of that name is not cached
    with pytest.raises(CheckpointError, match=r"'vfm-org/tiny-pth'.*missing\.pth"):
        load_encoder("vfm-org/tiny-pth:missing.pth", arch="vit_tiny")
    code = cli_main(["extract", "--pretrained_weights", "vfm-org/not-cached", "--data_path", str(tmp_path / "d"),
                     "--dst_root", str(tmp_path / "o"), "--device", "cpu"])
    err_lines = [x for x in capfd.readouterr().err.splitlines() if x.strip()]
    assert code == 2 and "vfm-org/not-cached" in err_lines[-1] and str(cache) in err_lines[-1]


def test_model_folder_repo_from_pretrained(tmp_path, monkeypatch, encoder):
    from visionfm.models.heads import ClsHead
    from visionfm.packaging import VisionFMModel, from_pretrained, model_folder_from_training

    torch.manual_seed(1)
    head = ClsHead(192, 2)
    folder = model_folder_from_training(
        tmp_path / "m", encoder=encoder, head=head, task="classification", task_kind="multiclass",
        modality="OCT", input_size=SIZE, features={"type": "pooled", "n_last_blocks": 1, "avgpool": 0},
        head_type="cls", head_args={"embed_dim": 192, "num_classes": 2}, class_names=["a", "b"],
        weights_source="vfm-org/tiny-export")
    c = tmp_path / "elsewhere"
    cache_repo(c, "vfm-org/oct-cls", {n: folder / n for n in ("config.json", "model.safetensors", "README.md")})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # local_files_only alone keeps it offline
    model = VisionFMModel.from_pretrained("vfm-org/oct-cls", cache_dir=c, local_files_only=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    ref = from_pretrained(folder)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert "models--vfm-org--oct-cls" in model.source
    with pytest.raises(CheckpointError, match=r"'vfm-org/oct-cls'.*config\.json.*not in the\s+cache"):
        VisionFMModel.from_pretrained("vfm-org/oct-cls", cache_dir=c, local_files_only=True, revision="v9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    assert from_pretrained("vfm-org/oct-cls").config["class_names"] == ["a", "b"]


def test_the_model_card_is_hub_metadata(tmp_path, encoder):
    from huggingface_hub import ModelCard, metadata_load

    from visionfm.models.heads import ClsHead
    from visionfm.packaging import model_folder_from_training

    folder = model_folder_from_training(
        tmp_path / "m", encoder=encoder, head=ClsHead(192, 2), task="classification", task_kind="multiclass",
        modality="SlitLamp", input_size=SIZE, features={"type": "pooled", "n_last_blocks": 1, "avgpool": 0},
        head_type="cls", head_args={"embed_dim": 192, "num_classes": 2}, class_names=["a", "b"],
        weights_source="vfm-org/tiny-export")
    meta = metadata_load(folder / "README.md")
    assert meta["library_name"] == "pytorch" and meta["license"] == "cc-by-nc-4.0"
    assert {"visionfm", "ophthalmology", "slitlamp", "classification"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "image-classification" and meta["base_model"] == "vfm-org/tiny-export"
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "pytorch" and "# " in card.text
