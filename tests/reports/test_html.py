"""report.html: tables that wrap or scroll instead of being cut off; the segmentation Dice section."""

from __future__ import annotations

import re

import numpy as np

from visionfm.metrics import SegmentationMeter
from visionfm.reports import write_report


def _seg_metrics():
    target = np.zeros((8, 6, 6), int)
    target[:, 1:3, 1:3] = 1
    target[:3, 4:, 4:] = 2  # class 2 in 3 of 8 images, never predicted
    pred = np.zeros_like(target)
    pred[:, 1:3, 1:2] = 1
    meter = SegmentationMeter(3, class_names=["background", "vessel", "haemorrhage"])
    meter.update(pred, target)
    return meter.compute()


def test_tables_wrap_and_scroll(tmp_path):
    long = "a_very_long_metric_key_" * 8
    metrics = {"accuracy": 0.5, long: 0.25, "per_class": {f"class {i}": {long: 0.1 * i, "n": i} for i in range(12)}}
    page = write_report(tmp_path, "t", metrics, meta={"run": "/" + "deep/" * 40 + "run"}).read_text()
    css = re.search(r"<style>(.*)</style>", page, re.S).group(1)
    assert "overflow-wrap:anywhere" in css and "max-width:100%" in css
    assert re.search(r"\.scroll\{overflow-x:auto", css) and "@media (max-width:900px)" in css
    # every table sits in a horizontally scrollable wrapper
    assert page.count("<table") == page.count('<div class="scroll"><table') >= 3


def test_segmentation_section_shows_the_rule_pooled_dice_and_flags(tmp_path):
    metrics = _seg_metrics()
    row = metrics["per_class"]["haemorrhage"]
    assert row["n_images_predicted"] == 0 and row["dice"] == 5 / 8
    page = write_report(tmp_path, "seg", metrics).read_text()
    section = page.split("<h2>Dice per class: per image and pooled</h2>")[1].split("<h2>")[0]
    assert "Empty-vs-empty rule." in section and "counts <b>1.0</b>" in section
    assert "Dice, dataset (pooled pixels)" in section and "Dice, mean per image" in section
    hae = section.split("<th>haemorrhage</th>")[1].split("</tr>")[0]
    assert "never predicted" in hae and "per-image Dice 0.6250 comes only from empty-vs-empty images" in hae
    assert f"{metrics['per_class']['vessel']['dice_dataset']:.4f}" in section.split("<th>vessel</th>")[1]
    assert "never predicted" not in section.split("<th>vessel</th>")[1].split("</tr>")[0]
    # other tasks get no such section
    assert "Dice per class" not in write_report(tmp_path / "c", "cls", {"accuracy": 0.9}).read_text()
