"""``visionfm export`` and ``visionfm info``: convert an encoder to safetensors, describe a weights file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from visionfm import __version__
from visionfm.errors import ConfigError
from visionfm.io.atomic import save_json_atomic, save_safetensors_atomic
from visionfm.io.safe_load import load_checkpoint_file
from visionfm.models.formats import clean_backbone_keys, detect_format

__all__ = ["export_encoder", "inspect_weights", "format_info", "timm_config", "timm_name"]


def export_encoder(
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    arch: str | None = None,
    checkpoint_key: str | None = "teacher",
    patch_size: int | None = None,
    modality: str | None = None,
) -> dict[str, Any]:
    """Write the backbone of ``weights`` as ``out`` (.safetensors) plus ``out`` with ``.json`` config, or, when
    ``out`` names a folder (no suffix), as ``out/model.safetensors`` + ``out/config.json`` + ``out/README.md``:
    a folder that ``timm.create_model('local-dir:out', pretrained=True)`` and the Hugging Face Hub read.

    The config carries timm's hub keys (``architecture``, ``num_classes`` 0, ``model_args``, ``pretrained_cfg``
    with the modality's mean/std, input size, interpolation and crop) next to visionfm's own. The tensors go
    through :func:`load_encoder` first, so an export is only written for a file that loads cleanly, and
    ``load_encoder(out)`` gives an identical encoder.
    """
    from visionfm.data.modalities import canonical_modality
    from visionfm.models.loading import load_encoder

    out, folder = _check_out(out)
    enc = load_encoder(weights, arch=arch, checkpoint_key=checkpoint_key, patch_size=patch_size, img_size=224)
    # Keep the file's native grid: rebuild at the size the file was trained at when it differs.
    grid_tokens = enc.pos_embed.shape[1] - 1
    native = enc.img_size
    sd = {k: v for k, v in enc.state_dict().items()}
    rep = enc.load_report
    raw_sd, _ = _raw_backbone(weights, checkpoint_key)
    if "pos_embed" in raw_sd and raw_sd["pos_embed"].shape != sd["pos_embed"].shape:
        n = raw_sd["pos_embed"].shape[1] - 1
        native = int(round(n ** 0.5)) * rep.patch_size
        enc = load_encoder(
            weights, arch=rep.arch, checkpoint_key=checkpoint_key, patch_size=rep.patch_size, img_size=native
        )
        sd = dict(enc.state_dict())
        grid_tokens = n
    if "masked_embed" in sd and ("masked_embed" not in raw_sd or folder):
        sd.pop("masked_embed")  # a folder is timm's model: no iBOT mask token (it only serves pretraining)
    mod = canonical_modality(modality) if modality else (rep.modality or "")
    config = {
        "format": "visionfm-encoder",
        "format_version": "1",
        "arch": rep.arch,
        "patch_size": str(rep.patch_size),
        "img_size": str(native),
        "modality": mod,
        "source": Path(str(weights)).name,
        "source_format": rep.format,
        "source_sha256": rep.sha256 or "",
        "checkpoint_key": rep.checkpoint_key or "",
        "visionfm_version": __version__,
    }
    json_cfg: dict[str, Any] = dict(config, patch_size=rep.patch_size, img_size=native, num_pos_tokens=grid_tokens + 1)
    json_cfg.update(timm_config(rep.arch, rep.patch_size, native, mod or None, int(enc.embed_dim)))
    if not folder:
        save_safetensors_atomic(sd, out, metadata=config)
        save_json_atomic(json_cfg, out.with_suffix(".json"))
        return json_cfg
    from visionfm.io.atomic import atomic_dir, save_text_atomic

    with atomic_dir(out) as tmp:
        save_safetensors_atomic(sd, tmp / "model.safetensors", metadata=config)
        save_json_atomic(json_cfg, tmp / "config.json")
        save_text_atomic(_export_card(json_cfg), tmp / "README.md")
    return json_cfg


def timm_name(arch: str, patch_size: int) -> str:
    """timm's model name for a visionfm architecture (``vit_base``, 16 → ``vit_base_patch16_224``); a patch size
    timm has no name for uses the patch-16 model with ``model_args`` ``patch_size``."""
    import timm

    name = f"{arch}_patch{patch_size}_224"
    return name if timm.is_model(name) else f"{arch}_patch16_224"


def timm_config(arch: str, patch_size: int, img_size: int, modality: str | None, num_features: int,
                interpolation: str = "bicubic") -> dict[str, Any]:
    """timm's hub config keys for the encoder: ``architecture``, ``num_classes`` (0: features), ``num_features``,
    ``model_args`` (size, patch, pooling) and ``pretrained_cfg`` (the modality's mean/std, ``input_size``,
    ``interpolation``, ``crop_pct`` 1.0: visionfm resizes the whole image to the input size, no crop)."""
    if modality:
        from visionfm.data.modalities import get_stats

        mean, std = get_stats(modality)
    else:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return {
        "architecture": timm_name(arch, patch_size),
        "num_classes": 0,
        "num_features": num_features,
        "global_pool": "token",
        "model_args": {"img_size": img_size, "patch_size": patch_size, "global_pool": "token"},
        "pretrained_cfg": {
            "tag": f"visionfm_{(modality or 'encoder').lower()}",
            "input_size": [3, img_size, img_size],
            "fixed_input_size": True,
            "interpolation": interpolation,
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "cc-by-nc-4.0",
        },
    }


def _export_card(cfg: Mapping[str, Any]) -> str:
    """README.md of an exported encoder folder: Hub front matter (library timm) and the loading snippets."""
    from huggingface_hub import ModelCardData

    mod = str(cfg.get("modality") or "")
    tags = ["visionfm", "ophthalmology", "medical-imaging", "vision-transformer", "image-feature-extraction"]
    if mod:
        tags.append(mod.lower())
    data = ModelCardData(license="cc-by-nc-4.0", library_name="timm", pipeline_tag="image-feature-extraction",
                         tags=tags)
    pre = cfg["pretrained_cfg"]
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# VisionFM {mod or ''} encoder ({cfg['arch']}, patch {cfg['patch_size']}, {cfg['img_size']} px)".replace(
            "  ", " "),
        "",
        f"A VisionFM image encoder exported from `{cfg.get('source')}` ({cfg.get('source_format')}), as a timm "
        f"`{cfg['architecture']}` without a classifier (`num_classes` 0). Inputs: RGB resized to "
        f"{pre['input_size'][1]}x{pre['input_size'][2]} ({pre['interpolation']}), normalised with mean {pre['mean']} "
        f"and std {pre['std']}.",
        "",
        "```python",
        "import timm, torch",
        "model = timm.create_model('local-dir:path/to/this/folder', pretrained=True).eval()  # or hf-hub:org/name",
        "cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**cfg)",
        "tokens = model.forward_features(torch.randn(1, *cfg['input_size']))  # [1, 1+P, D] after the final norm",
        "```",
        "",
        "```python",
        "import visionfm",
        "encoder = visionfm.load_encoder('path/to/this/folder', arch=None, patch_size=None)",
        "```",
        "",
        "It is **not a medical device**. The official VisionFM weights are released under CC BY-NC 4.0 "
        "(non-commercial use); an encoder derived from them carries the same terms.",
        "",
    ])


def _check_out(out: str | os.PathLike[str]) -> tuple[Path, bool]:
    """``--out`` names a ``.safetensors`` file (its ``.json`` config goes next to it) or a folder (a path without a
    suffix); checked before anything is read or written. Returns ``(path, is_folder)``."""
    path = Path(out)
    if path.suffix == "" or (path.is_dir() and path.suffix != ".safetensors"):
        existing = next((a for a in path.parents if a.exists()), None)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path}: is a file; expected a folder for an export folder")
        if existing is not None and not existing.is_dir():
            raise ConfigError(f"--out {path}: {existing} is a file, not a folder")
        return path, True
    if path.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors (the .json config is written next to it) or name a folder "
                          f"(no suffix: config.json + model.safetensors + README.md, loadable by timm), got {path}")
    for target in (path, path.with_suffix(".json")):
        if target.is_dir():
            raise ConfigError(f"--out {path}: {target} is a folder; expected a file path ending in .safetensors")
    existing = next((a for a in path.parents if a.exists()), None)  # the folders that are missing are created
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {path}: {existing} is a file, not a folder")
    return path, False


def _raw_backbone(weights: str | os.PathLike[str], checkpoint_key: str | None) -> tuple[dict, dict]:
    from visionfm.models.loading import read_backbone_state_dict

    return read_backbone_state_dict(weights, checkpoint_key)


def _count(sd: Mapping[str, Any]) -> int:
    return int(sum(v.numel() for v in sd.values() if isinstance(v, torch.Tensor)))


def inspect_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a weights file without building a model: keys, format, inferred architecture, contents."""
    from visionfm.models.loading import infer_backbone_spec
    from visionfm.models.weights import resolve_weights

    path = resolve_weights(path)  # an official weights name ("Fundus") → its local file
    raw, meta = load_checkpoint_file(path)
    fmt = detect_format(raw, meta)
    info: dict[str, Any] = {
        "path": str(path),
        "size_mb": round(Path(path).stat().st_size / 2**20, 2),
        "format": fmt.name if fmt else "unknown",
        "format_description": fmt.description if fmt else "not a recognised encoder file",
        "metadata": dict(meta),
    }
    if not isinstance(raw, Mapping):
        info["top_level"] = type(raw).__name__
        return info
    top = {}
    for key, value in raw.items():
        if isinstance(value, torch.Tensor):
            top[str(key)] = f"tensor {tuple(value.shape)}"
        elif isinstance(value, Mapping):
            n_t = sum(isinstance(v, torch.Tensor) for v in value.values())
            top[str(key)] = f"dict ({len(value)} entries, {n_t} tensors)"
        else:
            top[str(key)] = type(value).__name__ + (f" = {value}" if isinstance(value, (int, float, str)) else "")
    all_tensors = all(isinstance(v, torch.Tensor) for v in raw.values())
    info["top_level_keys"] = top if not all_tensors else f"{len(raw)} tensors"
    candidates = [k for k in ("teacher", "student", "model", "visionfm_state_dict") if isinstance(raw.get(k), Mapping)]
    if all_tensors:
        candidates = [None]  # type: ignore[list-item]
    backbones = {}
    for key in candidates:
        sd = raw if key is None else raw[key]
        bb, dropped = clean_backbone_keys(sd)
        spec = infer_backbone_spec(bb)
        head_keys = [k for k in dropped if "head" in k]
        backbones[key or "(root)"] = {
            "inferred_arch": spec.get("arch") or "unknown",
            "embed_dim": spec.get("embed_dim"),
            "depth": spec.get("depth"),
            "patch_size": spec.get("patch_size"),
            "native_img_size": (
                (spec["grid"] * spec["patch_size"]) if spec.get("grid") and spec.get("patch_size") else None
            ),
            "backbone_params": _count(bb),
            "has_masked_embed": "masked_embed" in bb,
            "head_tensors": len(head_keys),
            "weight_norm_keys": sorted(
                {k.rsplit(".", 1)[-1] for k in head_keys if k.endswith(("weight_g", "weight_v"))}
            ),
        }
    info["backbones"] = backbones
    info["has_optimizer"] = "optimizer" in raw
    info["has_args"] = "args" in raw
    if "epoch" in raw:
        info["epoch"] = raw["epoch"]
    if "args" in raw and hasattr(raw["args"], "__dict__"):
        args = vars(raw["args"])
        summary_keys = ("arch", "modality", "patch_size", "input_size", "epochs")
        info["args_summary"] = {k: args[k] for k in summary_keys if k in args}
    return info


def format_info(info: Mapping[str, Any], indent: int = 0) -> str:
    lines = []
    pad = "  " * indent
    for key, value in info.items():
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{key}:")
            lines.append(format_info(value, indent + 1))
        else:
            lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines)
