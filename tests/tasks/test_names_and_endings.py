"""Names flow from the command line (or a classes.txt) to every output; every command ends with one summary.

A class name given to train-cls appears in the report, the model card, predict's table and the web app's
answer; a classes.txt beside the labels travels through extract to a --features run; --ordinal selects on
quadratic kappa; the ending summary names the task, the metrics with their CIs, the selection metric and
the epoch (1-based, as log.txt) and where the report, model folder and log are; a collapsed model is flagged.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest

from tests.tasks.test_features import EXTRACT, run_cli, write_vfm

COMMON = ["--arch", "vit_tiny", "--input_size", "32", "--patch_size", "16", "--modality", "Fundus",
          "--batch_size_per_gpu", "16", "--num_workers", "0", "--device", "cpu"]
GRADES = ["no DR", "mild NPDR", "severe NPDR"]
CHROMIUM = "/usr/bin/chromium"


def _summary_block(out: str, command: str) -> list[str]:
    lines = out.splitlines()
    start = max(i for i, x in enumerate(lines) if x.startswith(f"visionfm {command}: "))
    return lines[start:]


@pytest.mark.xdist_group("serve_live")  # a live server: not beside the serve load test
def test_class_names_reach_report_card_predict_table_and_web_page(tmp_path, capsys):
    data = write_vfm(tmp_path / "data", n_train=24, n_test=12, n_val=6, n_classes=3)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("train-cls", "--name", "named", "--pretrained_weights", "random", "--data_path", str(data),
                   "--num_labels", "3", "--class_names", *GRADES, "--output_dir", str(out), "--epochs", "8",
                   "--lr", "0.05", "--report_n_boot", "50", *COMMON) == 0
    run = out / "named"
    summary = _summary_block(capsys.readouterr().out, "train-cls")
    # the summary: task, key metrics with 95 % CIs, the selection metric by name with its 1-based epoch, paths
    assert summary[0].startswith("visionfm train-cls: multiclass classification, 12 test samples")
    assert re.search(r"accuracy \d\.\d{3} \(95% CI \d\.\d{3}-\d\.\d{3}\)", summary[1]), summary[1]
    chosen = re.search(r"chosen +epoch (\d+) of 8 by f1_macro on val = (\d\.\d{3})", "\n".join(summary))
    assert chosen, summary
    best = json.loads((run / "checkpoint_best.json").read_text())
    assert int(chosen.group(1)) == best["epoch"] and 1 <= best["epoch"] <= 8
    log_epochs = [x["epoch"] for x in map(json.loads, (run / "log.txt").read_text().splitlines()) if "train_loss" in x]
    assert log_epochs == list(range(1, 9))  # log.txt numbers epochs from 1, as the console
    paths = dict(re.findall(r"^  (report|model|log) +(\S+)$", "\n".join(summary), re.M))
    assert paths == {"report": str(run / "report" / "report.html"), "model": str(run / "model"),
                     "log": str(run / "log.txt")}
    # the names in the report, the model card and the model's config
    html = (run / "report" / "report.html").read_text()
    assert all(n in html for n in GRADES)
    with open(run / "report" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["true_name"] for r in rows} == set(GRADES) and "score_mild NPDR" in rows[0]
    assert all(n in (run / "model" / "README.md").read_text() for n in GRADES)
    assert json.loads((run / "model" / "config.json").read_text())["class_names"] == GRADES
    # predict's table
    pred = tmp_path / "pred"
    assert run_cli("predict", "--model", str(run / "model"), "--input", str(data / "dataset_A" / "test"),
                   "--output_dir", str(pred), "--no_attention", "--device", "cpu") == 0
    with open(pred / "predictions.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 12 and {r["prediction"] for r in table} <= set(GRADES), table[0]
    assert "probability_mild NPDR" in table[0] or any("mild NPDR" in k for k in table[0]), table[0]
    # the web app's answer for an upload
    from fastapi.testclient import TestClient

    from visionfm.serve.app import create_app

    client = TestClient(create_app(run / "model", device="cpu"), base_url="http://127.0.0.1")
    models = client.get("/api/models").json()["models"]
    img = next((data / "dataset_A" / "test").glob("*.png"))
    resp = client.post("/api/predict", data={"model": models[0]["id"]},
                       files={"file": (img.name, img.read_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text
    assert any(n in resp.text for n in GRADES), resp.text[:500]
    # and the web app's page, in a real browser
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: the page check needs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    from tests.serve.conftest import live_server

    with live_server(create_app(run / "model", device="cpu", preload=True)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("#model-select option", state="attached")
        page.set_input_files("#file-input", str(img))
        page.wait_for_selector("#class-bars li", timeout=60_000)
        shown = page.eval_on_selector_all("#class-bars li .bar-name", "els => els.map(e => e.textContent)")
        assert sorted(shown) == sorted(GRADES)
        assert page.inner_text("#headline").removeprefix("Most likely: ") in GRADES
        browser.close()


def test_a_wrong_number_of_class_names_is_one_line(tmp_path, capsys):
    data = write_vfm(tmp_path / "data", n_train=6, n_test=3, n_classes=3)
    rc = run_cli("train-cls", "--name", "x", "--pretrained_weights", "random", "--data_path", str(data),
                 "--num_labels", "3", "--class_names", "a", "b", "--output_dir", str(tmp_path / "out"),
                 "--epochs", "1", *COMMON)
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]  # (stderr also has progress bars)
    assert rc == 2 and len(err) == 1 and "--class_names: 2 name(s) given for the 3 classes" in err[0], err
    assert not (tmp_path / "out" / "x" / "model").exists()


def test_classes_txt_travels_through_extract_to_a_features_run_and_ordinal_selects_on_kappa(tmp_path, capsys):
    data = write_vfm(tmp_path / "data", n_train=24, n_test=12, n_val=6, n_classes=3)
    (data / "classes.txt").write_text("# DR grades, line = label\n" + "\n".join(GRADES) + "\n")
    feats = tmp_path / "feats"
    assert run_cli("extract", "--pretrained_weights", "random", "--data_path", str(data), "--dst_root", str(feats),
                   *EXTRACT) == 0
    assert (feats / "dataset_A" / "classes.txt").read_text().split("\n")[:3] == GRADES
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("train-cls", "--name", "ord", "--features", str(feats), "--num_labels", "3", "--ordinal",
                   "--output_dir", str(out), "--epochs", "6", "--lr", "0.05", "--report_n_boot", "0",
                   *COMMON) == 0
    run = out / "ord"
    summary = "\n".join(_summary_block(capsys.readouterr().out, "train-cls"))
    assert re.search(r"chosen +epoch \d+ of 6 by quadratic_weighted_kappa on val", summary), summary
    m = json.loads((run / "report" / "metrics.json").read_text())
    assert m["class_names"] == GRADES and {"quadratic_kappa", "linear_kappa"} <= set(m["ordinal"])
    html = (run / "report" / "report.html").read_text()
    assert "<h2>Ordinal grades</h2>" in html and "Confusion matrix by grade distance" in html
    best = json.loads((run / "checkpoint_best.json").read_text())
    assert best["selection_metric"] == "quadratic_weighted_kappa"
    assert best["val_metrics"]["selection"] == best["val_metrics"]["quadratic_weighted_kappa"]
    # --ordinal on a binary task is refused
    rc = run_cli("train-cls", "--name", "bin", "--features", str(feats), "--num_labels", "1", "--ordinal",
                 "--task", "multiclass", "--output_dir", str(out), "--epochs", "1", *COMMON)
    assert rc == 2


def test_a_names_file_that_disagrees_with_the_task_names_the_file(tmp_path):
    from visionfm.data.names import resolve_names
    from visionfm.errors import DataFormatError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "classes.txt").write_text("x\ny\n")
    with pytest.raises(DataFormatError, match=r"a/classes.txt: 2 name\(s\) for the 3 classes"):
        resolve_names(None, tmp_path, 3, option="class_names", default=["0", "1", "2"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "classes.txt").write_text("x\nz\n")
    with pytest.raises(DataFormatError, match=r"b/classes.txt: lists \['x', 'z'\], but .*a/classes.txt"):
        resolve_names(None, tmp_path, 2, option="class_names", default=["0", "1"])
    (tmp_path / "b" / "classes.txt").write_text("x\nx\n")
    with pytest.raises(DataFormatError, match=r"b/classes.txt:2: name 'x' repeats line 1"):
        resolve_names(None, tmp_path, 2, option="class_names", datasets=["b"], default=["0", "1"])
    assert resolve_names(["p", "q"], tmp_path, 2, option="class_names") == ["p", "q"]  # the option wins


def test_collapsed_classifier_is_flagged_in_summary_and_report(tmp_path):
    from visionfm.reports import evaluate_classification_run
    from visionfm.reports.summary import format_summary

    y = np.array([0, 1, 2, 0, 1, 2, 0, 0])
    scores = np.tile([0.7, 0.2, 0.1], (8, 1))  # always "no DR"
    m = evaluate_classification_run(tmp_path, y, scores, "multiclass", GRADES, n_boot=0)
    assert m["collapse"]["collapsed"] and "'no DR'" in m["collapse"]["reason"]
    assert "Collapsed model" in (tmp_path / "report.html").read_text()
    assert "WARNING  collapsed model: the model predicts one class ('no DR') for all 8 samples" in \
        format_summary("train-cls", m)
    healthy = evaluate_classification_run(tmp_path / "ok", y, np.eye(3)[y] * 0.8 + 0.05, "multiclass", GRADES,
                                          n_boot=0)
    assert not healthy["collapse"]["collapsed"] and "Collapsed" not in (tmp_path / "ok" / "report.html").read_text()


def test_constant_regression_and_never_predicted_segment_are_collapses():
    from visionfm.metrics.collapse import regression_collapse, segmentation_collapse

    t = np.array([[1.0, 2.0], [3.0, 5.0], [5.0, 1.0]])
    p = np.array([[3.0, 2.0], [3.0, 4.0], [3.0, 1.5]])
    r = regression_collapse(t, p, ["age [y]", "bmi"])
    assert r["collapsed"] and r["constant_targets"] == ["age [y]"]
    assert not regression_collapse(t, t + 0.1, ["a", "b"])["collapsed"]
    seg = {"class_names": ["background", "lesion", "vessel"], "per_class": {
        "background": {"n_images_predicted": 4, "n_images_with_class": 4},
        "lesion": {"n_images_predicted": 0, "n_images_with_class": 2},
        "vessel": {"n_images_predicted": 3, "n_images_with_class": 3}}}
    s = segmentation_collapse(seg)
    assert s["collapsed"] and s["never_predicted"] == ["lesion"]


def test_summary_of_an_evaluated_checkpoint_and_of_a_never_defined_selection():
    from visionfm.reports.summary import format_summary

    m = {"task": "binary", "n_samples": 10, "auroc": 0.9, "ci": {"auroc": {"low": 0.8, "high": 0.95, "level": 0.95}}}
    ev = format_summary("evaluate", m, selection={"metric": "auroc", "epoch": 4}, paths={"report": "r.html"})
    assert "auroc 0.900 (95% CI 0.800-0.950)" in ev and "evaluated the checkpoint of epoch 4" in ev
    assert "never defined" not in ev and "report   r.html" in ev
    never = format_summary("finetune", m, selection={"metric": "auroc", "value": None, "epoch": 3, "epochs": 3})
    assert "chosen   epoch 3 of 3 by auroc (never defined: the last epoch was kept)" in never


def test_summary_from_report_reads_the_reports_metrics_with_their_cis(tmp_path):
    from visionfm.reports.summary import summary_from_report

    (tmp_path / "metrics.json").write_text(json.dumps(
        {"task": "regression", "n_samples": 9, "mae_mean": 1.5, "ci": {"mae_mean": {"low": 1.0, "high": 2.0}}}))
    (tmp_path / "report.html").write_text("<html></html>")
    out = summary_from_report("train-reg", tmp_path, {"mae_mean": 9.9}, selection=None, paths={"log": "log.txt"})
    assert "mae_mean 1.500 (95% CI 1.000-2.000)" in out and f"report   {tmp_path / 'report.html'}" in out
    bare = summary_from_report("train-reg", tmp_path / "none", {"task": "regression", "mae_mean": 9.9},
                               selection=None, paths={})
    assert "mae_mean 9.900" in bare and "CI" not in bare  # no report written: the headline numbers
