"""``load_encoder``: any known weights file → a :class:`VisionFMEncoder`, loudly.

Never falls back to random weights: a missing file, a wrong checkpoint key, a file for another
architecture or missing backbone tensors are errors that say what the file holds.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from visionfm.errors import CheckpointError, speaks_python
from visionfm.io.safe_load import file_sha256, is_safetensors_file, load_checkpoint_file
from visionfm.models.archs import arch_from_shapes, get_arch
from visionfm.models.encoder import VisionFMEncoder, resample_pos_embed
from visionfm.models.formats import clean_backbone_keys, detect_format, select_state_dict

__all__ = [
    "load_encoder",
    "LoadReport",
    "infer_backbone_spec",
    "read_backbone_state_dict",
    "recorded_metadata",
    "RANDOM",
    "RANDOM_ARCH",
    "RANDOM_PATCH",
]

log = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_ARCH, RANDOM_PATCH = "vit_base", 16  # a random encoder when no --arch / --patch_size is given
_OPTIONAL_KEYS = {"masked_embed"}  # teacher checkpoints have no mask token; it starts at zeros


@dataclass
class LoadReport:
    """What was loaded, kept on ``encoder.load_report`` (and the identity a feature store records)."""

    source: str
    format: str
    checkpoint_key: str | None
    arch: str
    patch_size: int
    img_size: int
    sha256: str | None = None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: int = 0
    pos_embed_resized: bool = False
    modality: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def infer_backbone_spec(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Infer width, depth, patch size and native grid of a backbone state dict."""
    spec: dict[str, Any] = {}
    if "patch_embed.proj.weight" in sd:
        w = sd["patch_embed.proj.weight"]
        spec["embed_dim"] = int(w.shape[0])
        spec["patch_size"] = int(w.shape[-1])
    elif "cls_token" in sd:
        spec["embed_dim"] = int(sd["cls_token"].shape[-1])
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    spec["depth"] = (max(blocks) + 1) if blocks else 0
    if "pos_embed" in sd:
        n = int(sd["pos_embed"].shape[1]) - 1
        side = int(round(n ** 0.5))
        spec["grid"] = side if side * side == n else None
    spec["arch"] = arch_from_shapes(spec.get("embed_dim", -1), spec["depth"])
    return spec


def _describe(spec: Mapping[str, Any]) -> str:
    name = spec.get("arch") or f"ViT (D={spec.get('embed_dim')}, {spec.get('depth')} blocks)"
    ps = spec.get("patch_size")
    grid = spec.get("grid")
    extra = f"/{ps}" if ps else ""
    if grid and ps:
        extra += f" at {grid * ps} px"
    return name + extra


def _resolve(weights: Any) -> tuple[Any, str | None]:
    """``weights`` with an official weights name (``Fundus``...) replaced by its verified local file
    (:func:`visionfm.models.weights.resolve_weights`; a real path wins), and that file's modality (else None)."""
    from visionfm.models.weights import resolve_weights

    resolved = resolve_weights(weights)
    if resolved is weights:
        return weights, None
    from visionfm.data.modalities import canonical_modality

    try:
        return resolved, canonical_modality(str(weights))
    except ValueError:
        return resolved, None


def recorded_metadata(weights: str | os.PathLike[str] | None) -> dict[str, Any]:
    """What a weights file records about its encoder (arch, patch size, modality...), read without its tensors.

    Our model folders (``config.json``'s ``encoder`` section, plus the folder's ``modality``) and
    safetensors exports (header metadata) record it; ``.pth`` files and ``random`` record nothing (``{}``).
    """
    if weights is None or str(weights) in ("", RANDOM):
        return {}
    weights, official = _resolve(weights)
    if official:  # an official file (a .pth, which records nothing): its modality is known from its name
        return {"modality": official}
    path = Path(weights)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            return {}
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config}: not valid JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{config}: expected a JSON object")
        if cfg.get("format") == "visionfm-encoder" and (path / "model.safetensors").is_file():
            return recorded_metadata(path / "model.safetensors")  # an export folder: its header metadata
        enc = dict(cfg.get("encoder") or {})
        if not enc.get("modality") and cfg.get("modality"):
            enc["modality"] = cfg["modality"]
        return enc
    if path.is_file() and is_safetensors_file(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                return dict(fh.metadata() or {})
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return {}


def _is_export_folder(config: Path) -> bool:
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config}: not valid JSON ({exc})") from None
    return isinstance(cfg, dict) and cfg.get("format") == "visionfm-encoder"


def read_backbone_state_dict(
    weights: str | os.PathLike[str], checkpoint_key: str | None = "teacher"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Safely read ``weights`` and return ``(backbone_state_dict, info)``.

    ``info`` holds the detected format, the key used, dropped key count and, for our own
    safetensors exports, their metadata (arch, patch size, image size, modality). An official weights
    name (``Fundus``...) reads its local file.
    """
    weights, _ = _resolve(weights)
    path = Path(weights)
    if path.is_dir():
        config = path / "config.json"
        model = path / "model.safetensors"
        if config.is_file() and model.is_file() and _is_export_folder(config):
            path = model  # an encoder export folder (`visionfm export --out folder`): a safetensors export
        elif config.is_file() and model.is_file():
            raw, meta = load_checkpoint_file(model)
            enc = {k[len("encoder."):]: v for k, v in raw.items() if k.startswith("encoder.")}
            if not enc:
                raise CheckpointError(f"{model}: model folder holds no 'encoder.*' tensors")
            info = {
                "format": "visionfm-model-folder", "checkpoint_key": None, "dropped": 0, "meta": recorded_metadata(path)
            }
            return enc, info
    raw, meta = load_checkpoint_file(path)
    fmt = detect_format(raw, meta)
    if fmt is not None and fmt.name == "visionfm-safetensors":
        sd, key = dict(raw), None
    else:
        sd, key = select_state_dict(raw, fmt, checkpoint_key, str(path))
        if fmt is None or fmt.name == "bare-vit":
            fmt = detect_format(sd, {}) or fmt
    backbone, dropped = clean_backbone_keys(sd)
    if not backbone:
        raise CheckpointError(f"{path}: no backbone tensors found under key {key!r}")
    info = {
        "format": fmt.name if fmt else "unknown",
        "checkpoint_key": key,
        "dropped": len(dropped),
        "meta": dict(meta),
    }
    return backbone, info


@speaks_python
def load_encoder(
    weights: str | os.PathLike[str] | None,
    arch: str | None = None,
    checkpoint_key: str | None = "teacher",
    patch_size: int | None = None,
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    masked_im_modeling: bool = True,
    hash_file: bool = True,
) -> VisionFMEncoder:
    """Build an encoder and load ``weights`` into it.

    Args:
        weights: a weights file (official VisionFM ``.pth``, RETFound, DINO/iBOT, ours,
            ``.safetensors``), a visionfm model folder or export folder, the name of an official file
            (``"Fundus"``, resolved by :mod:`visionfm.models.weights`; a real path wins), or a Hugging Face Hub
            repository ``"org/name"`` (``"org/name@revision"``, ``"org/name:file.pth"``) holding an export /
            model folder or one checkpoint file, read through the huggingface_hub cache (offline: cache only).
            ``None`` or ``"random"`` gives a randomly initialised encoder — the only way to get one.
        arch: ``vit_tiny``/``vit_small``/``vit_base``/``vit_large``; ``None`` (default) infers it from the
            file (a random encoder: ``vit_base``). Given, it is checked against the file.
        checkpoint_key: sub-dict to read (``teacher`` for official files, ``model`` for RETFound).
        patch_size: expected patch size; ``None`` (default) infers it from the file (a random encoder: 16).
        img_size: native input side of the built encoder; position embeddings are resampled
            bicubically when the file was trained at another size.

    Raises:
        CheckpointError: unreadable/unsafe file, missing key, architecture mismatch, missing tensors.
    """
    if weights is None or str(weights) == RANDOM:
        arch, patch_size = arch or RANDOM_ARCH, patch_size or RANDOM_PATCH
        enc = VisionFMEncoder(arch, img_size, patch_size, drop_path_rate, masked_im_modeling)
        enc.load_report = LoadReport("random", "random-init", None, arch, patch_size, img_size)
        return enc
    if str(weights).strip() == "":
        raise CheckpointError("no weights given; pass a weights file, or 'random' for a randomly initialised encoder")

    weights, official = _resolve(weights)  # "Fundus" → the verified local VFM_Fundus_weights.pth
    source = str(weights)
    sd, info = read_backbone_state_dict(weights, checkpoint_key)
    spec = infer_backbone_spec(sd)
    meta = info.get("meta") or {}
    file_arch = spec.get("arch")
    if arch is None:
        arch = meta.get("arch") or file_arch
        if arch is None:
            raise CheckpointError(f"{source}: cannot infer the architecture ({_describe(spec)}); pass arch explicitly")
    want = get_arch(arch)
    if spec.get("embed_dim") != want.embed_dim or spec.get("depth") != want.depth:
        raise CheckpointError(
            f"{source}: the file holds a {_describe(spec)} backbone, which does not fit --arch {arch} "
            f"(D={want.embed_dim}, {want.depth} blocks)"
            + (f"; use --arch {file_arch} (or leave it out)" if file_arch else "")
        )
    file_ps = spec.get("patch_size")
    if patch_size is None:
        patch_size = file_ps or 16
    if file_ps is not None and file_ps != patch_size:
        raise CheckpointError(
            f"{source}: the file's patch size is {file_ps}, which does not fit --patch_size {patch_size}; "
            f"use --patch_size {file_ps} (or leave it out)"
        )

    enc = VisionFMEncoder(arch, img_size, patch_size, drop_path_rate, masked_im_modeling)
    resized = False
    if "pos_embed" in sd and sd["pos_embed"].shape != enc.pos_embed.shape:
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], enc.grid_size)
        resized = True
    if not masked_im_modeling:
        sd.pop("masked_embed", None)
    expected = enc.state_dict()
    shape_errors = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if shape_errors:
        raise CheckpointError(f"{source}: tensor shapes do not fit {arch}/{patch_size}: " + "; ".join(shape_errors[:5]))
    missing = [k for k in expected if k not in sd and k not in _OPTIONAL_KEYS]
    unexpected = sorted(k for k in sd if k not in expected)
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} of {len(expected)} backbone tensors are missing "
            f"(e.g. {', '.join(missing[:5])}); refusing to leave them randomly initialised"
        )
    to_load = {k: v for k, v in sd.items() if k in expected}
    from visionfm.io.finite import nonfinite_tensors

    bad = nonfinite_tensors(to_load)
    if bad:  # a diverged run's weights: every feature would be NaN, and training would fail only at its end
        raise CheckpointError(
            f"{source}: {sum(n for _, n in bad)} non-finite (NaN/inf) value(s) in {len(bad)} backbone tensor(s) "
            f"(first: {bad[0][0]}); the run that wrote this file diverged — use an earlier checkpoint"
        )
    enc.load_state_dict(to_load, strict=False)
    if unexpected:
        log.warning("%s: ignored %d unexpected backbone keys: %s", source, len(unexpected), ", ".join(unexpected[:10]))
    report = LoadReport(
        source=source,
        format=info["format"],
        checkpoint_key=info["checkpoint_key"],
        arch=arch,
        patch_size=patch_size,
        img_size=img_size,
        sha256=file_sha256(weights) if hash_file and Path(weights).is_file() else None,
        missing=[k for k in expected if k not in sd],
        unexpected=unexpected,
        dropped=info["dropped"],
        pos_embed_resized=resized,
        modality=meta.get("modality") or official,
    )
    enc.load_report = report
    log.info("loaded %s (%s, key=%s) into %s/%d", source, report.format, report.checkpoint_key, arch, patch_size)
    return enc
