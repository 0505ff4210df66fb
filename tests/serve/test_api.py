"""``visionfm serve`` JSON API: models by id, predictions for every task, and every refusal with a clear
message (oversized, non-image, damaged, too many pixels, unknown model, bad parameters)."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_dicom
from tests.serve.conftest import retina_bytes

pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from visionfm.serve.app import create_app  # noqa: E402
from visionfm.serve.registry import DEMO_LABEL, ModelRegistry, split_unit  # noqa: E402


@pytest.fixture(scope="module")
def client(models_dir):
    with TestClient(create_app(models_dir, max_upload_mb=1), base_url="http://127.0.0.1") as c:
        yield c


def _image(data_url: str) -> Image.Image:
    head, b64 = data_url.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _png(size=(40, 30), colour=(120, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _dicom_bytes() -> bytes:
    ramp = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (48, 1))
    return write_dicom(io.BytesIO(), ramp, BitsStored=12, HighBit=11, WindowCenter=1024, WindowWidth=2048).getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _post(client, data: bytes, model: str = "dr", name: str = "eye.png", **fields):
    return client.post("/api/predict", files={"file": (name, data, "application/octet-stream")},
                       data={"model": model, **fields})


def test_health_models_and_openapi(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["models"] == 6
    body = client.get("/api/models").json()
    ids = {m["id"]: m for m in body["models"]}
    assert set(ids) == {"dr", "findings", "biomarkers", "seg", "fovea", "points"}
    assert ids["dr"]["name"] == "DR grading (test)" and ids["dr"]["modality"] == "Fundus"
    assert ids["dr"]["output_names"] == ["normal", "dr", "amd"] and ids["dr"]["task_kind"] == "multiclass"
    assert ids["biomarkers"]["output_names"] == ["cup-to-disc ratio", "vessel density"]
    assert ids["biomarkers"]["units"] == ["ratio", "%"]
    assert body["max_upload_mb"] == 1 and body["demo_notice"] is None
    assert [p["folder"] for p in body["problems"]] == ["broken"]  # reported, not served
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/models", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "VisionFM" in page.text and "Content-Security-Policy" in page.headers
    assert client.get("/static/app.js").status_code == 200


def test_models_list_metrics_intervals_selection_and_card(client, models_dir):
    ids = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    dr = ids["dr"]
    assert dr["metrics"]["f1_macro"] == pytest.approx(0.7134) and dr["metrics"]["n_images"] == 48
    assert "ci" not in dr["metrics"]  # the intervals come from metrics.json, separately
    assert dr["metrics_ci"]["f1_macro"] == {"low": pytest.approx(0.6012), "high": pytest.approx(0.8033),
                                            "level": 0.95}
    assert set(dr["metrics_ci"]) == {"f1_macro", "auroc_macro"}
    assert dr["selection"] == {"key": "selection", "label": "macro F1", "metric": "f1_macro", "split": "val",
                               "value": None, "higher_is_better": True}
    assert dr["evaluated_on"].startswith("the test split")
    assert dr["card"].startswith("# DR grading (test)")  # the front matter is dropped
    assert "<script>" in dr["card"]  # served as text; the page never inserts it as HTML
    assert "dr-images" in dr["card"] and str(models_dir) not in dr["card"]  # no server path in the card
    assert str(models_dir.resolve()) not in dr["card"]
    fovea = ids["fovea"]
    assert fovea["selection"]["key"] == "mre_px" and fovea["selection"]["metric"] == "mre_px"
    assert fovea["selection"]["value"] == pytest.approx(2.95) and fovea["selection"]["higher_is_better"] is False
    assert fovea["metrics_ci"] == {}
    assert ids["points"]["output_names"] == ["landmark 1", "landmark 2"]  # no names recorded: numbered from 1


def test_landmarks_take_the_listed_names(client):
    r = _post(client, _png((50, 40)), model="points", attention="false")
    assert r.status_code == 200, r.text
    assert [p["name"] for p in r.json()["landmarks"]] == ["landmark 1", "landmark 2"]


def test_a_class_shown_by_its_index_takes_its_name():
    from types import SimpleNamespace

    from visionfm.serve.inference import _named

    one = SimpleNamespace(task="classification", task_kind="binary", output_names=["referable dr"])
    out = _named(one, {"classes": [{"name": "1", "probability": 0.7}, {"name": "not 1", "probability": 0.3}]})
    assert [c["name"] for c in out["classes"]] == ["referable dr", "not referable dr"]
    digits = SimpleNamespace(task="classification", task_kind="multiclass", output_names=["2", "1", "0"])
    out = _named(digits, {"classes": [{"name": "2"}, {"name": "0"}]})
    assert [c["name"] for c in out["classes"]] == ["2", "0"]  # real class names are never re-mapped


def test_predict_real_fundus_photo(client):
    r = _post(client, retina_bytes(), name="retina.jpg")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"]["id"] == "dr" and out["image"] == {"filename": "retina.jpg", "format": "JPEG",
                                                           "width": 1411, "height": 1411}
    probs = [c["probability"] for c in out["classes"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert {c["name"] for c in out["classes"]} == {"normal", "dr", "amd"}
    assert out["prediction"]["prediction"] == out["classes"][0]["name"]
    assert [c["positive"] for c in out["classes"]] == [True, False, False]
    assert _image(out["layers"]["image"]).size == (768, 768)
    att = np.asarray(_image(out["layers"]["attention"]).convert("RGBA"), dtype=np.float64)
    assert att[..., :3].std() > 10 and att[..., 3].max() > 200  # a heat map, varying over the image
    overlay = np.asarray(_image(out["overlay_png"]).convert("RGB"), dtype=np.float64)
    assert overlay.shape == (768, 768, 3) and overlay.std() > 10
    assert out["timing_ms"]["total"] > 0 and "not a medical device" in out["notice"]


@pytest.mark.parametrize("model", ["findings", "biomarkers", "seg", "fovea"])
def test_predict_each_task(client, model):
    r = _post(client, _png((50, 40)), model=model, attention="false")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["layers"]["attention"] is None
    if model == "findings":  # multi-label: one probability per finding, independent
        assert len(out["classes"]) == 3 and out["model"]["task_kind"] == "multilabel"
        assert set(out["prediction"]["labels"]) == {"drusen", "haemorrhage", "exudate"}
    elif model == "biomarkers":
        assert [(v["name"], v["unit"]) for v in out["values"]] == [("cup-to-disc ratio", "ratio"),
                                                                  ("vessel density", "%")]
        assert all(np.isfinite(v["value"]) for v in out["values"])
    elif model == "seg":
        mask = _image(out["layers"]["mask"])
        assert mask.size == (50, 40) and mask.mode == "P" and mask.info.get("transparency") == 0
        assert [s["name"] for s in out["segmentation"]] == ["disc", "cup"]
        total = sum(s["fraction"] for s in out["segmentation"]) + out["prediction"]["class_fraction"]["background"]
        assert abs(total - 1) < 1e-6
    else:
        assert [p["name"] for p in out["landmarks"]] == ["fovea", "disc centre"]
        assert all(0 <= p["x"] < 50 and 0 <= p["y"] < 40 for p in out["landmarks"])
        assert _image(out["overlay_png"]).size == (50, 40)


def test_dicom_upload(client):
    r = _post(client, _dicom_bytes(), name="scan.dcm")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image"]["format"] == "DICOM" and (out["image"]["width"], out["image"]["height"]) == (64, 48)
    assert len(out["classes"]) == 3


def test_raw_body_upload(client):
    r = client.post("/api/predict?model=dr&filename=eye.png&overlay=false", content=_png(),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["filename"] == "eye.png" and r.json()["overlay_png"] is None


def test_oversized_upload_is_413(client):
    r = _post(client, b"\xff\xd8\xff" + b"\0" * 1_200_000, name="big.jpg")
    assert r.status_code == 413 and "1 MB" in r.json()["detail"]


def test_too_many_pixels_is_refused_before_decoding(client):
    r = _post(client, _png_header_only(9000, 9000), name="bomb.png")
    assert r.status_code == 413 and "81.0 megapixels" in r.json()["detail"]
    r = _post(client, _png_header_only(40000, 40000), name="bomb.png")  # PIL's own guard, also before decoding
    assert r.status_code == 413 and "too large" in r.json()["detail"]


@pytest.mark.parametrize("data, name, fragment", [
    (b"patient,age\nA,63\n", "notes.jpg", "looks like a text file"),
    (b"%PDF-1.7\n\x00\x01binary", "report.png", "PDF"),
    (b"", "empty.png", "empty"),
])
def test_non_image_is_refused_with_a_message(client, data, name, fragment):
    r = _post(client, data, name=name)
    assert r.status_code in (400, 415)
    assert fragment in r.json()["detail"] and "Traceback" not in r.text


def test_damaged_image_is_400(client):
    r = _post(client, retina_bytes()[:2000], name="cut.jpg")
    assert r.status_code == 400 and "could not be read" in r.json()["detail"]


def test_unknown_model_is_404(client):
    r = _post(client, _png(), model="../../etc/passwd")
    assert r.status_code == 404 and "unknown model" in r.json()["detail"] and "dr" in r.json()["detail"]
    assert client.get("/api/examples/nothing").status_code == 404


def test_bad_requests(client):
    assert client.post("/api/predict", data={"model": "dr"}).status_code in (400, 415)
    r = client.post("/api/predict", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = _post(client, _png(), model="")
    assert r.status_code == 422 and "choose a model" in r.json()["detail"]
    r = _post(client, _png(), days="30")
    assert r.status_code == 422 and "forecasting" in r.json()["detail"]
    r = _post(client, _png(), attention="maybe")
    assert r.status_code == 422


def test_examples_are_served(client):
    ex = client.get("/api/examples").json()["examples"]
    assert "retina" in [e["id"] for e in ex]
    for e in ex:
        r = client.get(e["url"])
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size[0] > 100


def test_demo_models_when_folder_is_empty(tmp_path):
    with TestClient(create_app(tmp_path), base_url="http://localhost") as c:
        body = c.get("/api/models").json()
        assert [m["id"] for m in body["models"]] == ["demo-classification", "demo-segmentation"]
        assert all(m["demo"] and DEMO_LABEL in m["name"] for m in body["models"])
        assert DEMO_LABEL[len("demo model "):] in body["demo_notice"]
        r = _post(c, retina_bytes(), model="demo-classification", name="retina.jpg", attention="false",
                  overlay="false")
        assert r.status_code == 200, r.text
        assert r.json()["model"]["demo"] and "meaningless" in r.json()["notice"]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_each_model_is_loaded_once(models_dir, monkeypatch):
    import visionfm.packaging as packaging

    calls = []
    real = packaging.from_pretrained

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(packaging, "from_pretrained", counting)
    reg = ModelRegistry(models_dir)
    got = []
    threads = [threading.Thread(target=lambda: got.append(reg.get("dr"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(m is got[0] for m in got)


def test_split_unit():
    assert split_unit("IOP [mmHg]") == ("IOP", "mmHg")
    assert split_unit("axial length (mm)") == ("axial length", "mm")
    assert split_unit("score") == ("score", None)


def test_cli_refuses_a_missing_folder(tmp_path, capsys):
    from visionfm.cli.main import main

    assert main(["serve", "--models", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
