"""Layers point down only: cli → tasks / pretrain / serve → engine / packaging / inference →
models / data / metrics / reports → io / errors / config. Every import statement in src/visionfm
(module level and inside functions) is checked; an upward or sideways-forbidden import fails."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "visionfm"

RANK = {
    "cli": 5, "api": 5, "__init__": 5, "__main__": 5,
    "tasks": 4, "pretrain": 4, "serve": 4,
    "engine": 3, "packaging": 3, "inference": 3,
    "models": 2, "data": 2, "metrics": 2, "reports": 2,
    "io": 1, "errors": 1, "config": 1,
}
# Peers of one layer that must stay independent of each other.
FORBIDDEN_PEERS = {("tasks", "pretrain"), ("pretrain", "tasks"), ("serve", "tasks"), ("serve", "pretrain"),
                   ("tasks", "serve"), ("pretrain", "serve")}


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.ImportFrom) and node.level > 1:  # level 1 stays inside the package
            raise AssertionError(f"{path}:{node.lineno}: relative import out of the package; use visionfm.<package>")


def violations():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        assert here in RANK, f"{rel}: package {here!r} has no layer in this test; add it to RANK"
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "visionfm" or len(parts) == 1:
                continue
            there = parts[1]
            if there == here:
                continue
            assert there in RANK, f"{rel}:{line}: imports unknown package visionfm.{there}"
            if RANK[there] > RANK[here] or (here, there) in FORBIDDEN_PEERS:
                bad.append(f"{rel}:{line}: {here} (layer {RANK[here]}) imports {module} (layer {RANK[there]})")
    return bad


def test_no_upward_imports():
    assert violations() == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a models module importing a task is reported."""
    pkg = tmp_path / "visionfm"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "bad.py").write_text("def f():\n    from visionfm.tasks.segmentation import PALETTE\n")
    import sys

    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    assert violations() == ["models/bad.py:2: models (layer 2) imports visionfm.tasks.segmentation (layer 4)"]
