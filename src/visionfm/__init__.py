"""visionfm: ophthalmic foundation models — encoders, iBOT pretraining and clinical decoders."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder", "build_encoder", "VisionFMEncoder", "from_pretrained", "VisionFMModel",
           "train", "pretrain"]


def __getattr__(name: str):
    # Lazy so that ``import visionfm`` (and the CLI's --help) does not import torch.
    if name in {"load_encoder", "build_encoder", "VisionFMEncoder"}:
        from visionfm import models

        return getattr(models, name)
    if name in {"from_pretrained", "VisionFMModel"}:
        from visionfm import packaging

        return getattr(packaging, name)
    if name in {"train", "pretrain"}:
        from visionfm import api

        return getattr(api, name)
    raise AttributeError(f"module 'visionfm' has no attribute {name!r}")
