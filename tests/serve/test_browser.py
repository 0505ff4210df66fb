"""End to end in a real browser: headless Debian Chromium (Playwright with the system executable; no
browser is downloaded) against ``visionfm serve`` on a free loopback port."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import live_server

#: where the screenshots go besides the test's temporary folder (docs/img copies are made from these)
SHOT_DIR = os.environ.get("VISIONFM_SCREENSHOT_DIR")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
    pytest.mark.xdist_group("serve_live"),  # not at the same time as the load test
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _retina_path() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / "retina.jpg"


def _shot(page, tmp_path: Path, name: str) -> np.ndarray:
    """A full-page screenshot (into ``tmp_path``, and ``$VISIONFM_SCREENSHOT_DIR`` when set), as an array."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if SHOT_DIR:
        Path(SHOT_DIR).mkdir(parents=True, exist_ok=True)
        (Path(SHOT_DIR) / name).write_bytes(path.read_bytes())
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _error_shown_once(page) -> str:
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    msg = page.inner_text("#error")
    body = page.inner_text("body").lower()
    assert body.count("not a supported image") == 1, body  # one message, once, on the whole page
    assert msg.count("not a supported image") == 1 and "text file" in msg and "Traceback" not in msg
    assert not msg.lower().startswith("error") and msg[0].isupper(), msg
    return msg


def _stale_results_gone(page) -> None:
    """Nothing of the previous result is left: photo, overlays, markers, findings, downloads."""
    assert page.is_hidden("#stage") and page.is_visible("#placeholder")
    for layer in ("#layer-image", "#layer-attention", "#layer-mask"):
        assert page.eval_on_selector(layer, "e => e.hasAttribute('src')") is False, layer
    assert page.eval_on_selector("#layer-points", "e => e.childElementCount") == 0
    assert page.query_selector_all("#results li, #results table, #headline") == []
    assert page.is_hidden("#downloads") and page.is_hidden("#layer-controls")
    assert page.inner_text("#timing") == ""


def test_upload_retina_and_see_the_result(browser, tmp_path):
    from visionfm.serve.app import create_app
    from visionfm.serve.registry import DEMO_CLASSES

    empty = tmp_path / "models"
    empty.mkdir()
    app = create_app(empty, preload=True)  # no model folder: the demo models
    with live_server(app) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_selector("#model-select option[value=demo-classification]", state="attached")
        assert "Fundus" in page.inner_text("#model-info")
        assert page.is_visible("#demo-notice")

        page.set_input_files("#file-input", str(_retina_path()))  # a real upload through the file chooser
        page.wait_for_selector("#class-bars li", timeout=60_000)
        names = page.eval_on_selector_all("#class-bars li", "els => els.map(e => e.dataset.class)")
        assert sorted(names) == sorted(DEMO_CLASSES)
        assert page.inner_text("#headline").startswith("Most likely: ")
        assert "retina.jpg" in page.inner_text("#status")
        # the overlay (attention map) is drawn over the photo
        assert page.is_visible("#layer-image") and page.is_visible("#layer-attention")
        assert page.eval_on_selector("#layer-attention", "e => e.complete && e.naturalWidth") > 0
        assert page.eval_on_selector("#layer-image", "e => e.complete && e.naturalWidth") == 768
        img = _shot(page, tmp_path, "serve_demo_classification.png")
        assert img.shape[0] >= 800 and img.std() > 20  # not blank
        assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 500  # the photo and heat map, not flat UI
        page.uncheck("#show-attention")
        assert page.is_hidden("#layer-attention")

        # segmentation: a coloured overlay with a toggle and an opacity control
        page.select_option("#model-select", "demo-segmentation")
        page.wait_for_selector("#seg-legend li", timeout=60_000)
        assert page.is_visible("#layer-mask")
        page.fill("#opacity-mask", "20")
        page.dispatch_event("#opacity-mask", "input")
        assert page.eval_on_selector("#layer-mask", "e => e.style.opacity") == "0.2"
        page.uncheck("#show-mask")
        assert page.is_hidden("#layer-mask")
        page.check("#show-mask")
        _shot(page, tmp_path, "serve_demo_segmentation.png")

        # downloads: a PNG of what is shown and the JSON result
        with page.expect_download() as dl:
            page.click("#download-json")
        data = Path(dl.value.path()).read_text()
        assert '"segmentation"' in data and "data:image" not in data
        with page.expect_download() as dl:
            page.click("#download-png")
        assert Image.open(dl.value.path()).size == (768, 768)

        # a renamed non-image gets a clear message in the page, not a stack trace
        fake = tmp_path / "notes.jpg"
        fake.write_text("this is not an image")
        page.set_input_files("#file-input", str(fake))
        _error_shown_once(page)
        _stale_results_gone(page)  # the segmentation result is gone with the failed upload
        page.close()
    assert problems == [] or all("415" in p for p in problems), problems


def _analyse(page, model: str, path: Path, ready: str) -> None:
    """Choose ``model`` and upload ``path``; wait until no request runs and ``ready`` is on the page (the
    model change starts a request with the previous file, the upload queues one with the new file)."""
    page.select_option("#model-select", model)
    page.set_input_files("#file-input", str(path))
    page.wait_for_function("sel => document.getElementById('busy').hidden && document.querySelector(sel)", arg=ready,
                           timeout=60_000)


def test_every_task_with_trained_model_folders(browser, models_dir, tmp_path):
    """Classification (class names, metrics with 95 % CIs, the selection metric, the model card without
    script injection), segmentation, landmarks (markers drawn and named), regression, and a failed upload
    (one message; nothing of the previous result left)."""
    from tests.serve.conftest import DR_METRICS
    from visionfm.serve.app import create_app

    app = create_app(models_dir, preload=True)
    with live_server(app) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_selector("#model-select option[value=fovea]", state="attached")
        assert page.is_hidden("#demo-notice")
        retina = _retina_path()

        # classification: the class names, the model's evaluation and its card
        _analyse(page, "dr", retina, "#class-bars li")
        names = page.eval_on_selector_all("#class-bars li .bar-name", "els => els.map(e => e.textContent)")
        assert sorted(names) == ["amd", "dr", "normal"]
        assert page.inner_text("#headline").removeprefix("Most likely: ") in names
        rows = page.eval_on_selector_all(
            "#metrics-table tbody tr", "rs => rs.map(r => [r.dataset.metric, ...[...r.cells].map(c => c.textContent)])")
        assert rows[0][0] == "f1_macro" and "selection" in rows[0][1]  # the selection metric first, marked
        by_key = {r[0]: r[2:] for r in rows}
        assert by_key["f1_macro"] == ["0.713", "0.601–0.803"]
        assert by_key["auroc_macro"] == ["0.902", "0.841–0.953"] and by_key["n_images"] == ["48", ""]
        assert set(by_key) == {k for k in DR_METRICS if k != "ci"}
        assert "95 % CI" in page.inner_text("#metrics-table thead")
        note = page.inner_text("#selection-note")
        assert "macro F1" in note and "val split" in note and "higher is better" in note
        assert page.is_visible("#model-card-body")
        card = page.inner_text("#model-card-body")
        assert "DR grading (test)" in card and "<script>window.__pwned = 1</script>" in card  # shown as text
        assert page.evaluate("() => window.__pwned") is None  # ... and never run
        assert page.query_selector_all("#model-card-body script, #model-card-body img") == []
        assert page.inner_text("#model-card-body strong").strip() != ""  # **bold** rendered
        assert page.query_selector_all("#model-card-body table tr")  # the card's tables as tables
        img = _shot(page, tmp_path, "serve_classification.png")
        assert img.std() > 20

        # segmentation: a legend with the class names and a mask layer
        _analyse(page, "seg", retina, "#seg-legend li")
        legend = page.eval_on_selector_all("#seg-legend li span:nth-child(2)", "els => els.map(e => e.textContent)")
        assert legend == ["disc", "cup"] and page.is_visible("#layer-mask")
        assert page.is_hidden("#class-bars")  # the classification result is gone
        assert page.inner_text("#model-metrics").strip().endswith("No metrics recorded for this model.")
        _shot(page, tmp_path, "serve_segmentation.png")

        # landmarks: named markers drawn over the photo, in the listed colours
        _analyse(page, "fovea", retina, "#landmark-list li")
        assert page.is_visible("#layer-points")
        assert page.eval_on_selector("#layer-points", "e => getComputedStyle(e).display") != "none"
        markers = page.eval_on_selector_all("#layer-points g.marker", """gs => gs.map(g => {
            const b = g.getBoundingClientRect();
            return {name: g.dataset.name, w: b.width, h: b.height, label: g.querySelector('text').textContent,
                    shown: getComputedStyle(g).display !== 'none' && getComputedStyle(g).visibility !== 'hidden'};
        })""")
        assert [m["name"] for m in markers] == ["fovea", "disc centre"]
        assert all(m["w"] > 5 and m["h"] > 5 and m["shown"] and m["label"] == m["name"] for m in markers), markers
        stage = page.eval_on_selector(
            "#layer-image", "e => { const b = e.getBoundingClientRect(); return [b.x, b.y, b.right, b.bottom]; }")
        for g in page.query_selector_all("#layer-points g.marker circle"):
            b = g.bounding_box()
            cx, cy = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
            assert stage[0] - 1 <= cx <= stage[2] + 1 and stage[1] - 1 <= cy <= stage[3] + 1  # on the photo
        listed = page.eval_on_selector_all("#landmark-list li span:nth-child(2)", "els => els.map(e => e.textContent)")
        assert listed == ["fovea", "disc centre"]
        assert "mre_px" in page.inner_text("#metrics-table")
        assert "lower is better, 2.950" in page.inner_text("#selection-note")
        img = _shot(page, tmp_path, "serve_landmarks.png")
        page.uncheck("#show-points")
        assert page.is_hidden("#layer-points")
        page.check("#show-points")
        assert page.is_visible("#layer-points")
        # the PNG download draws the markers too (it differs from the photo alone)
        with page.expect_download() as dl:
            page.click("#download-png")
        with_pts = np.asarray(Image.open(dl.value.path()).convert("RGB"), dtype=np.float64)
        page.uncheck("#show-points")
        with page.expect_download() as dl:
            page.click("#download-png")
        without = np.asarray(Image.open(dl.value.path()).convert("RGB"), dtype=np.float64)
        assert with_pts.shape == without.shape and np.abs(with_pts - without).max() > 100
        page.check("#show-points")

        # a landmark model without recorded names: numbered from 1
        _analyse(page, "points", retina, "#landmark-list li")
        labels = page.eval_on_selector_all("#layer-points g.marker text", "els => els.map(e => e.textContent)")
        assert labels == ["landmark 1", "landmark 2"]

        # regression: values with their units
        _analyse(page, "biomarkers", retina, "#values-table tbody tr")
        cells = page.eval_on_selector_all("#values-table tbody tr",
                                          "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        assert [(c[0], c[2]) for c in cells] == [("cup-to-disc ratio", "ratio"), ("vessel density", "%")]
        assert page.query_selector_all("#landmark-list, #layer-points g") == []  # no stale markers
        _shot(page, tmp_path, "serve_regression.png")
        # a file chosen while a request runs is the one analysed; the earlier result is never shown
        small = tmp_path / "small.png"
        Image.new("RGB", (64, 48), (120, 60, 30)).save(small)
        page.set_input_files("#file-input", str(retina))
        page.set_input_files("#file-input", str(small))
        page.wait_for_function(
            "() => document.getElementById('busy').hidden && document.querySelector('#values-table')", timeout=60_000)
        assert page.inner_text("#status") == "Done: small.png (PNG, 64×48)"

        # a failed upload after a landmark result: one message, and the old image and findings are gone
        _analyse(page, "fovea", retina, "#layer-points g.marker")
        fake = tmp_path / "notes.png"
        fake.write_text("these are my notes, not an image")
        page.set_input_files("#file-input", str(fake))
        msg = _error_shown_once(page)
        assert "notes.png" in page.inner_text("#status")
        _stale_results_gone(page)
        _shot(page, tmp_path, "serve_error.png")
        # the next good upload clears the message and shows a result again
        page.set_input_files("#file-input", str(retina))
        page.wait_for_selector("#layer-points g.marker", timeout=60_000)
        assert page.is_hidden("#error") and msg
        page.close()
    assert problems == [] or all("415" in p for p in problems), problems
