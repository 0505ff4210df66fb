"""Registry of known weight-file formats: each detects itself and converts to a bare ViT state dict.

Formats (checked in order):
    * ``visionfm-safetensors`` — our exported encoders (``visionfm export``): flat tensors + metadata.
    * ``ibot-training`` — official VisionFM / iBOT / DINO training checkpoints with ``teacher`` /
      ``student`` dicts whose keys carry ``module.`` / ``backbone.`` prefixes and ``head.*`` entries
      (our own pretraining checkpoints use the same layout).
    * ``visionfm-finetuned`` — the original fine-tuning script's ``checkpoint_best_finetune.pth``
      (``visionfm_state_dict`` + ``classifier_state_dict``).
    * ``retfound-mae`` — RETFound MAE checkpoints: encoder + decoder under ``model``.
    * ``bare-vit`` — a plain ViT state dict (official DINO/iBOT ViT files, ``torch.save(encoder.state_dict())``).

Converters are pure functions (dict in, dict out) so each is testable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from visionfm.errors import CheckpointError

__all__ = ["WeightFormat", "FORMATS", "detect_format", "select_state_dict", "clean_backbone_keys", "BACKBONE_PREFIXES"]

# Keys that belong to something other than the backbone; they are dropped (and counted) on load.
_NON_BACKBONE = ("head.", "decoder", "mask_token", "fc_norm.", "head_drop.", "classifier.", "channel_bn.")
BACKBONE_PREFIXES = ("module.", "backbone.", "_orig_mod.", "encoder.")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _looks_like_vit(sd: Mapping[str, Any]) -> bool:
    keys = [clean_key(k) for k in sd]
    return any(k == "pos_embed" for k in keys) and any(k.startswith("blocks.") for k in keys)


def clean_key(key: str) -> str:
    """Strip *leading* wrapper prefixes (the original replaced the substrings anywhere in the key)."""
    changed = True
    while changed:
        changed = False
        for prefix in BACKBONE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


@dataclass(frozen=True)
class WeightFormat:
    name: str
    description: str
    detect: Callable[[Any, Mapping[str, str]], bool]
    default_key: str | None  # sub-dict used when the caller's key does not apply


def _detect_safetensors(obj: Any, meta: Mapping[str, str]) -> bool:
    return bool(meta) and meta.get("format", "").startswith("visionfm")


def _detect_ibot(obj: Any, meta: Mapping[str, str]) -> bool:
    return isinstance(obj, Mapping) and ("teacher" in obj or "student" in obj) and not _is_tensor_dict(obj)


def _detect_finetuned(obj: Any, meta: Mapping[str, str]) -> bool:
    return isinstance(obj, Mapping) and "visionfm_state_dict" in obj


def _detect_retfound(obj: Any, meta: Mapping[str, str]) -> bool:
    return isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping)


def _detect_bare(obj: Any, meta: Mapping[str, str]) -> bool:
    return _is_tensor_dict(obj) and _looks_like_vit(obj)


FORMATS: list[WeightFormat] = [
    WeightFormat("visionfm-safetensors", "visionfm exported encoder (.safetensors)", _detect_safetensors, None),
    WeightFormat("ibot-training", "VisionFM/iBOT/DINO training checkpoint (teacher/student)", _detect_ibot, "teacher"),
    WeightFormat(
        "visionfm-finetuned",
        "original VisionFM fine-tuned classifier checkpoint",
        _detect_finetuned,
        "visionfm_state_dict",
    ),
    WeightFormat(
        "retfound-mae", "RETFound MAE checkpoint (encoder + decoder under 'model')", _detect_retfound, "model"
    ),
    WeightFormat("bare-vit", "plain ViT state dict (DINO/iBOT ViT file or torch.save(state_dict))", _detect_bare, None),
]


def detect_format(obj: Any, meta: Mapping[str, str] | None = None) -> WeightFormat | None:
    for fmt in FORMATS:
        if fmt.detect(obj, meta or {}):
            return fmt
    return None


def select_state_dict(
    obj: Any, fmt: WeightFormat | None, checkpoint_key: str | None, source: str
) -> tuple[dict, str | None]:
    """Pick the sub-dict that holds the backbone.

    ``checkpoint_key`` wins when it is a key of the file. A bare state dict needs no key (the
    default ``teacher`` is then simply not used). Otherwise a missing key is an error listing the
    keys that are present — never, as in the original, the whole file taken as a state dict.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors or of state dicts, found {type(obj).__name__}")
    if checkpoint_key and checkpoint_key in obj and isinstance(obj[checkpoint_key], Mapping):
        return dict(obj[checkpoint_key]), checkpoint_key
    if _is_tensor_dict(obj):
        return dict(obj), None
    keys = ", ".join(sorted(map(str, obj.keys())))
    hint = ""
    if fmt is not None and fmt.default_key and fmt.default_key in obj:
        hint = f" (this looks like a {fmt.description}; try --checkpoint_key {fmt.default_key})"
    raise CheckpointError(f"{source}: checkpoint key {checkpoint_key!r} not found; keys present: {keys}{hint}")


def clean_backbone_keys(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes and drop head/decoder entries. Returns (backbone dict, dropped keys)."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        k = clean_key(str(key))
        if not isinstance(value, torch.Tensor) or k.startswith(_NON_BACKBONE):
            dropped.append(str(key))
            continue
        out[k] = value
    return out, dropped
