"""Encoders, heads and checkpoint I/O."""

from visionfm.models.archs import ARCHS, ArchSpec, dense_block_ids, get_arch
from visionfm.models.encoder import VisionFMEncoder, build_encoder, resample_pos_embed
from visionfm.models.export import export_encoder, inspect_weights
from visionfm.models.loading import LoadReport, load_encoder, read_backbone_state_dict

__all__ = [
    "ARCHS",
    "ArchSpec",
    "LoadReport",
    "VisionFMEncoder",
    "build_encoder",
    "dense_block_ids",
    "export_encoder",
    "get_arch",
    "inspect_weights",
    "load_encoder",
    "read_backbone_state_dict",
    "resample_pos_embed",
]
