"""docs/extending.md's toy task: one module plus one CLI entry is a whole task — it trains through the
engine, is packaged as a model folder, predicted by ``visionfm predict`` and shown by the web app."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionfm.cli.main as cli

SRC = Path(__file__).resolve().parents[2] / "src" / "visionfm"


def _images(folder: Path, levels, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, level in enumerate(levels):
        img = np.clip(level * 255 + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        rows.append(f"{i:03d}.png,{img.mean() / 255:.6f}")
    if labels:
        (folder / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    _images(root / "data", np.random.default_rng(1).uniform(0.05, 0.95, 48))
    # The task's one CLI entry (in cli/main.py it is one line of the COMMANDS table).
    cli.COMMANDS["train-brightness"] = ("tests.tasks.toy_task", "train the toy brightness task")
    try:
        code = cli.main(["train-brightness", "--name", "b", "--data_path", str(root / "data"),
                         "--output_dir", str(root / "runs")])
    finally:
        del cli.COMMANDS["train-brightness"]
    assert code == 0
    return root


def test_toy_task_trains_packages_and_predicts(toy_run, tmp_path):
    from visionfm.inference.predictor import run_predict
    from visionfm.packaging import from_pretrained

    folder = toy_run / "runs" / "b" / "model"
    model = from_pretrained(folder)
    assert model.task == "toy_brightness"
    assert "image brightness regression (toy example)" in (folder / "README.md").read_text()
    log = [json.loads(x) for x in (toy_run / "runs" / "b" / "log.txt").read_text().splitlines()]
    assert log[-1]["best_mae"] < 0.1 and log[-1]["best_mae"] <= log[0]["val_mae"]  # it learned something
    _images(tmp_path / "new", [0.1, 0.9], seed=5, labels=False)
    run_predict(folder, tmp_path / "new", tmp_path / "out", attention=False)
    recs = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    dark, bright = sorted(recs, key=lambda r: r["image"])
    assert bright["brightness"] - dark["brightness"] > 0.4
    assert "brightness" in (tmp_path / "out" / "predictions.csv").read_text().splitlines()[0]


def test_toy_task_in_the_web_app(toy_run):
    from visionfm.inference.io import read_image
    from visionfm.packaging import from_pretrained
    from visionfm.serve.inference import run_model

    model = from_pretrained(toy_run / "runs" / "b" / "model")
    raw = run_model(model, read_image(toy_run / "data" / "000.png"), attention=True)
    assert raw.pred["values"].shape == (1,) and raw.attention is not None


def test_no_shared_module_names_the_toy_task():
    """Nothing outside the toy module had to be edited for it."""
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "toy_brightness" not in text and "toy_task" not in text, path
