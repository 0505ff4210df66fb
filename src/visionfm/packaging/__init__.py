"""Model folders: a trained model (encoder + head + preprocessing + names + metrics) as one directory."""

from visionfm.packaging.card import LICENCE_NOTE, render_model_card
from visionfm.packaging.model_folder import (
    FORMAT_VERSION,
    HEADS,
    VisionFMModel,
    build_model,
    encoder_for_package,
    from_pretrained,
    model_folder_from_training,
    read_config,
    register_head,
    validate_config,
)

__all__ = [
    "FORMAT_VERSION",
    "HEADS",
    "LICENCE_NOTE",
    "VisionFMModel",
    "build_model",
    "encoder_for_package",
    "from_pretrained",
    "model_folder_from_training",
    "read_config",
    "register_head",
    "render_model_card",
    "validate_config",
]
