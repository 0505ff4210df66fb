"""``visionfm serve``: a local web app and JSON API over trained model folders (see ``docs/serve.md``).

``create_app`` needs the optional web dependencies (FastAPI, uvicorn, python-multipart); they are imported
only when the app is built, so ``import visionfm.serve`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ModelRegistry"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from visionfm.serve.app import create_app

        return create_app
    if name == "ModelRegistry":
        from visionfm.serve.registry import ModelRegistry

        return ModelRegistry
    raise AttributeError(f"module 'visionfm.serve' has no attribute {name!r}")
