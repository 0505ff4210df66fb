"""A task is one registered :class:`~visionfm.engine.task.Task` class: a toy task defined here is packaged,
reloaded, predicted (``visionfm predict``'s files), shown by the web app and described by the model card
with no edits to packaging, inference, serve or the card."""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import visionfm
from visionfm.engine import task as task_registry
from visionfm.engine.task import Display, Task, get_task, register_task, task_names
from visionfm.errors import CheckpointError, ConfigError
from visionfm.packaging import (
    from_pretrained,
    model_folder_from_training,
    validate_config,
)

SIZE = 32
BUILT_IN = ("classification", "forecasting", "landmark", "regression", "segmentation")


class ToyQuality(Task):
    """An image-quality score: one output of a pooled head, read through a sigmoid."""

    name = "toy_quality"
    features = "pooled"

    def validate_config(self, cfg: Mapping[str, Any], bad: Callable[[str], Exception]) -> None:
        super().validate_config(cfg, bad)
        if cfg["head"].get("args", {}).get("num_classes") != 1:
            raise bad("a toy_quality model has exactly one output")

    def postprocess(self, cfg: Mapping[str, Any], outputs: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        return {"quality": torch.sigmoid(outputs.reshape(outputs.shape[0], -1)[:, 0]).numpy()}

    def record(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, names: Sequence[str]) -> dict[str, Any]:
        score = float(pred["quality"][i])
        return {"quality_score": score, "acceptable": score >= 0.5}

    def display(self, cfg: Mapping[str, Any], record: Mapping[str, Any], pred: Mapping[str, Any],
                names: Sequence[str], units: Sequence[str | None]) -> Display:
        return Display(summary={"quality": [{"name": names[0], "score": record["quality_score"],
                                             "acceptable": record["acceptable"]}]})

    def card_task_line(self, cfg: Mapping[str, Any]) -> str:
        return "toy image-quality score (sigmoid of one output)"


@pytest.fixture(scope="module")
def toy_task():
    register_task(ToyQuality)
    yield get_task("toy_quality")
    task_registry._REGISTRY.pop("toy_quality", None)  # the other tests see the built-in tasks only


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory, toy_task) -> Path:
    from visionfm.models import build_encoder
    from visionfm.models.heads.cls import LinearHead

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        encoder = build_encoder("vit_tiny", img_size=SIZE, patch_size=16)
        head = LinearHead(192, 1).eval()
    return model_folder_from_training(
        tmp_path_factory.mktemp("toy") / "quality", encoder=encoder, head=head, task="toy_quality",
        modality="Fundus", input_size=SIZE, features={"type": "pooled", "n_last_blocks": 1, "avgpool": 0},
        head_type="linear", head_args={"embed_dim": 192, "num_classes": 1}, class_names=["image quality"],
        name="Toy quality (test)")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 52, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((36, 36, 3), 120, np.uint8)).save(folder / "b.png")
    return folder


def test_built_in_tasks_live_in_the_module_named_after_them():
    names = task_names()
    assert set(BUILT_IN) <= set(names)
    for name in BUILT_IN:
        assert type(get_task(name)).__module__ == f"visionfm.tasks.{name}"
    assert task_names(needs_days=True) == ["forecasting"]


def test_unknown_task_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'nope'; known tasks: ") as err:
        get_task("nope")
    assert all(name in str(err.value) for name in BUILT_IN)
    with pytest.raises(ConfigError, match="non-empty string"):
        get_task("")
    cfg = json.loads(json.dumps({"format_version": 1, "task": "nope"}))
    with pytest.raises(CheckpointError, match="unknown task 'nope'; expected one of ") as err:
        validate_config(cfg, str(tmp_path / "folder"))
    assert str(tmp_path / "folder") in str(err.value) and "segmentation" in str(err.value)


def test_toy_task_model_folder_round_trip(toy_folder, toy_task):
    cfg = json.loads((toy_folder / "config.json").read_text())
    assert cfg["task"] == "toy_quality" and cfg["class_names"] == ["image quality"]
    card = (toy_folder / "README.md").read_text()
    assert "toy image-quality score (sigmoid of one output)" in card and "- toy_quality" in card
    model = from_pretrained(toy_folder)
    assert model.task_plugin is toy_task and model.output_names == ["image quality"]
    x = torch.randn(3, 3, SIZE, SIZE)
    p = model.predict(x)
    with torch.no_grad():
        want = torch.sigmoid(model.head(model.features(x))[:, 0]).numpy()
    assert p["quality"].shape == (3,) and np.allclose(p["quality"], want)
    # the task's own check runs when the folder is read
    cfg["head"]["args"]["num_classes"] = 2
    with pytest.raises(CheckpointError, match="exactly one output"):
        validate_config(cfg, str(toy_folder))


def test_toy_task_predict_writes_its_records(toy_folder, images, tmp_path):
    from visionfm.inference.predictor import run_predict

    out = tmp_path / "pred"
    summary = run_predict(toy_folder, images, out, attention=True)
    assert summary["task"] == "toy_quality" and summary["n_records"] == 2
    assert summary["output_names"] == ["image quality"]
    records = json.loads((out / "predictions.json").read_text())["predictions"]
    assert [r["image"] for r in records] == ["a.png", "b.png"]
    for r in records:
        assert 0.0 <= r["quality_score"] <= 1.0 and r["acceptable"] == (r["quality_score"] >= 0.5)
        assert (out / r["attention_map"]).is_file()
        assert "mask" not in r and "overlay" not in r
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["quality_score"]) for r in rows] == pytest.approx([r["quality_score"] for r in records])
    with pytest.raises(ConfigError, match="only applies to forecasting"):
        run_predict(toy_folder, images, tmp_path / "days", days=[30])


def test_toy_task_in_the_web_app(toy_folder, images):
    from visionfm.inference.predictor import Predictor
    from visionfm.serve.inference import check_days, render_result, run_model
    from visionfm.serve.registry import ModelRegistry

    reg = ModelRegistry(toy_folder.parent, demo_when_empty=False)
    (entry,) = reg.entries.values()
    public = entry.public()
    assert public["task"] == "toy_quality" and public["output_names"] == ["image quality"]
    assert "units" not in public and not entry.needs_days and check_days(entry, None) is None
    with pytest.raises(ConfigError, match="only applies to forecasting"):
        check_days(entry, 10.0)
    model = reg.get(entry.id)
    image = Image.open(images / "a.png").convert("RGB")
    raw = run_model(model, image, attention=True)
    record = Predictor(model).records(["a.png"], [image], raw.pred)[0]
    result = render_result(entry, record, raw, image, overlay=True)
    assert result["quality"] == [{"name": "image quality", "score": record["quality_score"],
                                  "acceptable": record["acceptable"]}]
    assert "classes" not in result and result["layers"]["mask"] is None
    assert result["layers"]["attention"].startswith("data:image/png;base64,")
    assert result["overlay_png"].startswith("data:image/png;base64,")
    assert result["display_size"] == {"width": 52, "height": 40}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", ["packaging", "inference", "serve", "reports"])
def test_lower_layers_do_not_import_the_tasks(package):
    """packaging / inference / serve ask the registry (visionfm.engine.task); none imports visionfm.tasks."""
    root = Path(visionfm.__file__).parent / package
    bad = {f"{p.name}: {m}" for p in root.rglob("*.py") for m in _imports(p)
           if m == "visionfm.tasks" or m.startswith("visionfm.tasks.")}
    assert not bad
