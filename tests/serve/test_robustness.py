"""``visionfm serve`` under bad model folders, foreign Host headers and internal failures: a broken folder
never stops the server (it is listed with its problem, with and without preloading, and every other model
serves), requests for another Host name get 400, and no error reveals a server path or a traceback."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from visionfm.errors import ConfigError  # noqa: E402
from visionfm.serve.app import create_app, trusted_hosts  # noqa: E402
from visionfm.serve.redact import Redactor  # noqa: E402

SIZE = 32


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (120, 60, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k in tensors if k.startswith("head.") and tensors[k].is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(folder / "model.safetensors"))


def _truncate(folder: Path) -> None:
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


# name -> (how the good folder is broken, a fragment of the reported problem, detected when listed)
BROKEN = {
    "junk-weights": (lambda f: (f / "model.safetensors").write_bytes(b"not a safetensors file at all" * 10),
                     "not a readable safetensors file", True),
    "truncated-weights": (_truncate, "not a readable safetensors file", True),
    "short-class-names": (lambda f: _edit_config(f, class_names=["normal", "dr"]), "class_names lists 2", True),
    "long-class-names": (lambda f: _edit_config(f, class_names=["a", "b", "c", "d"]), "class_names lists 4", True),
    "bad-json": (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON", True),
    "config-is-a-list": (lambda f: (f / "config.json").write_text("[1, 2]"), "JSON object", True),
    "unknown-task": (lambda f: _edit_config(f, task="telepathy"), "unknown task", True),
    "unknown-arch": (lambda f: _edit_config(f, encoder={"arch": "vit_mega", "patch_size": 16}), "arch", True),
    "no-head-section": (lambda f: _edit_config(f, head=None), "no 'head' section", True),
    "weights-missing": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing", True),
    "config-missing": (lambda f: (f / "config.json").unlink(), "config.json is missing", True),
    "head-shape-mismatch": (lambda f: _edit_config(f, head={"type": "cls", "args": {"embed_dim": 192 * 4,
                                                                                     "num_classes": 5}},
                                                   class_names=list("abcde")), "does not match config.json", True),
    "wrong-input-size": (lambda f: _edit_config(f, preprocess={"input_size": 48, "interpolation": "bicubic",
                                                               "mean": [0.5] * 3, "std": [0.2] * 3}),
                         "does not match config.json", True),
    "nan-weights": (_nan_weights, "non-finite", False),  # only reading the tensors shows it: on load
}


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory, tiny_encoder) -> Path:
    from visionfm.models.heads import ClsHead
    from visionfm.packaging import model_folder_from_training

    root = tmp_path_factory.mktemp("broken_models")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model_folder_from_training(
            root / "good" / "model", encoder=tiny_encoder, head=ClsHead(192 * 4, 3).eval(), task="classification",
            task_kind="multiclass", modality="Fundus", input_size=SIZE,
            features={"type": "pooled", "n_last_blocks": 4, "avgpool": 0}, head_type="cls",
            head_args={"embed_dim": 192 * 4, "num_classes": 3}, class_names=["normal", "dr", "amd"], name="Good")
    for name, (breaker, _, _) in BROKEN.items():
        shutil.copytree(root / "good" / "model", root / name)
        breaker(root / name)
    return root


def _session(root: Path, preload: bool) -> dict:
    with TestClient(create_app(root, preload=preload), base_url="http://127.0.0.1") as c:
        first = c.get("/api/models").json()
        predictions = {mid: c.post("/api/predict", files={"file": ("eye.png", _png(), "image/png")},
                                   data={"model": mid}) for mid in ["good", *BROKEN]}
        after = c.get("/api/models").json()
        page = c.get("/")
    return {"first": first, "predictions": predictions, "after": after, "page": page}


@pytest.fixture(scope="module")
def served(broken_root) -> dict:
    return {True: _session(broken_root, preload=True), False: _session(broken_root, preload=False)}


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no_preload"])
def test_the_good_model_serves_beside_broken_ones(served, broken_root, preload):
    s = served[preload]
    listed = sorted(m["id"] for m in s["first"]["models"])
    assert listed == (["good"] if preload else ["good", "nan-weights"])  # NaN weights show only on loading
    assert s["first"]["demo_notice"] is None  # no fallback to the demo models while one model is good
    r = s["predictions"]["good"]
    assert r.status_code == 200, r.text
    assert [c["name"] for c in sorted(r.json()["classes"], key=lambda c: c["name"])] == ["amd", "dr", "normal"]
    assert s["page"].status_code == 200
    text = json.dumps(s["after"])
    assert str(broken_root) not in text and str(broken_root.resolve()) not in text and "Traceback" not in text


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no_preload"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_folder_is_reported_and_not_served(served, broken_root, case, preload):
    _, fragment, when_listed = BROKEN[case]
    s = served[preload]
    listed = {p["folder"]: p["error"] for p in s["first"]["problems"]}
    final = {p["folder"]: p["error"] for p in s["after"]["problems"]}
    if preload or when_listed:  # known before any request
        assert fragment in listed.get(case, ""), listed
        assert case not in [m["id"] for m in s["first"]["models"]]
    else:  # found on first use: 503 naming the problem, then listed like the others
        assert case in [m["id"] for m in s["first"]["models"]] and case not in listed
    assert fragment in final.get(case, ""), final
    assert case not in [m["id"] for m in s["after"]["models"]]
    r = s["predictions"][case]
    assert r.status_code in (404, 503), r.text
    assert r.status_code != 500 and str(broken_root) not in r.text and "Traceback" not in r.text
    if r.status_code == 503:
        assert fragment in r.json()["detail"]


def test_cli_reports_the_broken_folders_at_start_up(broken_root, capsys, monkeypatch):
    import uvicorn

    from visionfm.cli.main import main

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    assert main(["serve", "--models", str(broken_root), "--no_preload", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    assert "2 model(s): good, nan-weights" in err and "Traceback" not in err  # NaN weights: found on loading
    for case, (_, fragment, when_listed) in BROKEN.items():
        if when_listed:
            assert any(line.startswith(f"visionfm serve: not serving {case}: ") and fragment in line
                       for line in err.splitlines()), case
    assert started["port"] == 8123 and started["host"] == "127.0.0.1"


# -- Host header ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_app(tmp_path_factory):
    return create_app(tmp_path_factory.mktemp("empty"), host="192.168.7.9", allowed_hosts=["eye.lan", "*.example.org"])


@pytest.mark.parametrize("host, ok", [
    ("localhost", True), ("localhost:8000", True), ("127.0.0.1", True), ("127.0.0.1:8000", True),
    ("[::1]", True), ("[::1]:8000", True), ("LOCALHOST:80", True),
    ("192.168.7.9:8000", True),  # the bound address
    ("eye.lan", True), ("eye.lan:8000", True), ("a.example.org", True),  # --allowed_hosts
    ("evil.example.com", False), ("attacker.test:8000", False), ("127.0.0.1.nip.io", False),
    ("localhost.evil.test", False), ("example.org", False), ("eye.lan.evil", False), ("192.168.7.10", False),
    ("testserver", False), ("::1", False), ("", False),
])
def test_host_header_check(host_app, host, ok):
    with TestClient(host_app, base_url="http://127.0.0.1") as c:
        for method, path in (("get", "/api/models"), ("get", "/"), ("post", "/api/predict")):
            r = getattr(c, method)(path, headers={"Host": host})
            if ok:
                assert r.text != "Invalid host header" and r.status_code < 500, (host, path, r.status_code)
            else:
                assert r.status_code == 400 and r.text == "Invalid host header", (host, path, r.text)


def test_wildcard_bound_address_is_not_a_host_name(tmp_path):
    assert trusted_hosts("0.0.0.0") == ["localhost", "127.0.0.1", "::1", "[::1]"]
    assert trusted_hosts("::") == ["localhost", "127.0.0.1", "::1", "[::1]"]
    assert "fe80::1" in trusted_hosts("fe80::1") and "[fe80::1]" in trusted_hosts("fe80::1")
    with TestClient(create_app(tmp_path, host="0.0.0.0"), base_url="http://0.0.0.0") as c:
        assert c.get("/healthz").status_code == 400
    with TestClient(create_app(tmp_path, allowed_hosts=["*"]), base_url="http://anything.test") as c:
        assert c.get("/healthz").status_code == 200  # '*' turns the check off (warned about by the CLI)


@pytest.mark.parametrize("bad", ["ev*il.test", "*evil.test", "**"])
def test_bad_allowed_hosts_pattern_is_one_line(bad, capsys):
    from visionfm.cli.main import main

    with pytest.raises(ConfigError, match="--allowed_hosts"):
        trusted_hosts(None, [bad])
    assert main(["serve", "--allowed_hosts", "ok.lan", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allowed_hosts" in err[0] and "Traceback" not in err[0]


# -- errors to clients -----------------------------------------------------------------------------------


def test_internal_failure_answers_an_error_id_without_paths(broken_root, monkeypatch, caplog):
    import visionfm.serve.app as app_module

    secret = str(broken_root / "good" / "model" / "model.safetensors")

    def failing(*a, **k):
        raise RuntimeError(f"cannot map {secret}: bad luck\nTraceback (most recent call last): ...")

    monkeypatch.setattr(app_module, "run_model", failing)
    with TestClient(create_app(broken_root), base_url="http://127.0.0.1") as c, caplog.at_level(logging.ERROR):
        r = c.post("/api/predict", files={"file": ("eye.png", _png(), "image/png")}, data={"model": "good"})
    assert r.status_code == 500
    detail = r.json()["detail"]
    assert "error id" in detail and secret not in r.text and str(broken_root) not in r.text
    assert "Traceback" not in r.text and "RuntimeError" not in r.text
    ref = detail.split("error id ")[1].split(";")[0]
    assert any(ref in rec.getMessage() and rec.exc_info for rec in caplog.records)  # details stay server-side


def test_unexpected_error_in_any_route_is_json_without_traceback(tmp_path, monkeypatch):
    app = create_app(tmp_path)
    monkeypatch.setattr(app.state.registry, "list", lambda: 1 / 0)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        r = c.get("/api/models")
    assert r.status_code == 500 and "error id" in r.json()["detail"]
    assert "ZeroDivisionError" not in r.text and "Traceback" not in r.text


@pytest.mark.parametrize("message, expected, leaked", [
    ("/srv/models/dr/model: config.json is not valid JSON", "dr: config.json is not valid JSON", "/srv/"),
    ("the PNG file could not be read: /proc/self/fd/7: truncated", "the upload: truncated", "/proc"),
    ("[Errno 13] Permission denied: '/etc/visionfm/key.pem'", "'key.pem'", "/etc"),
    ("x (/usr/lib/python3/site.py, line 3)", "site.py", "/usr"),
    ("C:\\Users\\bob\\weights.pth is bad", "weights.pth is bad", "Users"),
    ("first line\nTraceback (most recent call last):\n  File \"/usr/x.py\"", "first line", "Traceback"),
    ("see /api/models and http://127.0.0.1:8000/api/predict; 3/4 done", "see /api/models", "<path>"),
])
def test_redactor(message, expected, leaked):
    out = Redactor({"/srv/models/dr/model": "dr", "/srv/models": "models"})(message)
    assert expected in out and leaked not in out, out


def test_a_model_failing_its_warm_up_is_reported_not_fatal(broken_root, monkeypatch, caplog):
    import visionfm.serve.app as app_module

    def failing(model, *a, **k):
        raise IndexError(f"list index out of range in {broken_root}")

    monkeypatch.setattr(app_module, "run_model", failing)
    with caplog.at_level(logging.ERROR), \
            TestClient(create_app(broken_root, preload=True), base_url="http://127.0.0.1") as c:
        body = c.get("/api/models").json()
        r = c.post("/api/predict", files={"file": ("eye.png", _png(), "image/png")}, data={"model": "good"})
    assert body["models"] == []  # the server started; the one good folder failed its warm-up
    good = [p for p in body["problems"] if p["folder"] == "good"]
    assert good and good[0]["id"] == "good" and "IndexError; error id" in good[0]["error"]
    assert str(broken_root) not in json.dumps(body)
    assert r.status_code == 503 and "not available" in r.json()["detail"]
    ref = good[0]["error"].split("error id ")[1].split(",")[0]
    assert any(ref in rec.getMessage() and rec.exc_info for rec in caplog.records)
