"""End to end in a real browser: headless Debian Chromium (Playwright with the system executable; no
browser is downloaded) against ``visionfm serve`` on a free loopback port."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import live_server

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
        shot = tmp_path / "serve_classification.png"
        page.screenshot(path=str(shot), full_page=True)
        img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
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
        page.screenshot(path=str(tmp_path / "serve_segmentation.png"), full_page=True)

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
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        msg = page.inner_text("#error")
        assert "Not a supported image" in msg and "text file" in msg and "Traceback" not in msg
        page.close()
    assert problems == [] or all("415" in p for p in problems), problems
