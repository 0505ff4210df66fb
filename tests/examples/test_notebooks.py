"""Every notebook in examples/ runs top to bottom (nbclient, the venv's python3 kernel, CPU) and prints a
real result."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def _number(text: str, label: str) -> float:
    m = re.search(re.escape(label) + r"\s*([-+0-9.eE]+)", text)
    assert m, f"{label!r} not printed; output was:\n{text[-2000:]}"
    return float(m.group(1))


def test_notebooks_are_committed_clean():
    assert len(NOTEBOOKS) == 5, NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(EXAMPLES / name, as_version=4)
        nbformat.validate(nb)
        assert nb.nbformat == 4 and nb.cells[0].cell_type == "markdown"
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    env = {"VISIONFM_EXAMPLE_FAST": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path)}  # the notebook's temporary folder lands in this test's own tmp dir
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = _text(nb)
    work = Path(re.search(r"working folder: (\S+)", text).group(1))
    assert work.is_relative_to(tmp_path) and work.is_dir()
    if name.startswith("01"):
        assert 0.0 <= _number(text, "probe accuracy:") <= 1.0
        assert (work / "VFM_Fundus_random.pth").is_file()
    elif name.startswith("02"):
        report = Path(re.search(r"report: (\S+)", text).group(1))
        assert report.is_file() and report.stat().st_size > 0 and "metrics:" in text
    elif name.startswith("03"):
        assert 0.0 <= _number(text, "dice_mean:") <= 1.0 and "selected on: val" in text
    elif name.startswith("04"):
        assert _number(text, "predictions:") == 12 and _number(text, "attention maps:") >= 1
    elif name.startswith("05"):
        assert (work / "runs" / "gf" / "model" / "config.json").is_file()
        assert 0.0 <= _number(text, "test AUROC:") <= 1.0
