"""The ``README.md`` model card of a model folder (task, modality, data, metrics, intended use, licence).

The card starts with Hugging Face front matter (``license``, ``library_name: pytorch``, ``tags``,
``pipeline_tag``, ``base_model``; :func:`card_metadata`) so a pushed folder is listed correctly on the Hub,
followed by sections in the spirit of the MONAI bundle
specification: what goes in, what comes out, how it was trained and evaluated, and the terms of use.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from visionfm.engine.task import get_task
from visionfm.errors import ConfigError

__all__ = ["render_model_card", "card_metadata", "LICENCE_NOTE", "DEFAULT_LICENSE", "PIPELINE_TAGS"]

DEFAULT_LICENSE = "cc-by-nc-4.0"
LICENCE_NOTE = (
    "The official VisionFM encoder weights are released under the Creative Commons Attribution-NonCommercial "
    "4.0 International licence (CC BY-NC 4.0). A model whose encoder was initialised from them is a derivative "
    "work: it may be shared and adapted with attribution, **for non-commercial purposes only**. Models trained "
    "from a randomly initialised encoder or from other weights carry the terms of those weights and of their "
    "training data; check both before redistributing."
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


def _task_line(cfg: Mapping[str, Any]) -> str:
    """The task's own one-line description (:meth:`visionfm.engine.task.Task.card_task_line`)."""
    try:
        task = get_task(cfg.get("task"))  # type: ignore[arg-type]
    except ConfigError:  # not a registered task: its name
        return str(cfg.get("task"))
    return task.card_task_line(cfg)


# tasks whose outputs a Hub pipeline tag describes; the others (regression, forecasting) carry none
PIPELINE_TAGS = {"classification": "image-classification", "multilabel": "image-classification",
                 "segmentation": "image-segmentation", "landmark": "keypoint-detection"}


def card_metadata(config: Mapping[str, Any]) -> Any:
    """The card's Hugging Face front matter (a ``huggingface_hub.ModelCardData``): ``license``, ``library_name``
    ``pytorch`` (a model folder is read by visionfm, not by a library the Hub knows), ``tags`` (visionfm,
    ophthalmology, the task, the modality), ``pipeline_tag`` where one fits, ``base_model`` when the encoder
    came from a Hub repository and ``datasets`` when the config names Hub data sets."""
    from huggingface_hub import ModelCardData

    from visionfm.io.hub import parse_hub_ref

    cfg = dict(config)
    task = str(cfg.get("task"))
    modality = str(cfg.get("modality") or "unknown").lower()
    tags = ["visionfm", "ophthalmology", "medical-imaging", "vision-transformer", task, modality]
    source = str((cfg.get("encoder") or {}).get("weights_source") or "")
    ref = parse_hub_ref(source) if source and not source.startswith((".", "/", "~")) else None
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    hub_datasets = [str(x) for x in (data.get("hub_datasets") or [])] if isinstance(data, dict) else []
    return ModelCardData(license=str(cfg.get("license") or DEFAULT_LICENSE), library_name="pytorch",
                         tags=list(dict.fromkeys(tags)), pipeline_tag=PIPELINE_TAGS.get(task),
                         base_model=ref.repo_id if ref is not None else None, datasets=hub_datasets or None)


def render_model_card(config: Mapping[str, Any], extra: Mapping[str, Any] | str | None = None) -> str:
    """Markdown model card for ``config``; ``extra`` adds text (a string) or sections (``{title: text}``)."""
    cfg = dict(config)
    enc = cfg.get("encoder", {})
    pre = cfg.get("preprocess", {})
    feats = cfg.get("features", {})
    head = cfg.get("head", {})
    licence = str(cfg.get("license") or DEFAULT_LICENSE)
    frozen = bool(enc.get("frozen", True))
    enc_state = "frozen" if frozen else "fine-tuned"
    name = cfg.get("name") or f"visionfm-{cfg.get('task')}-{str(cfg.get('modality', '')).lower()}"
    lines = [
        "---",
        card_metadata(cfg).to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        f"A VisionFM decoder on a {enc_state} {enc.get('arch')} encoder: **{_task_line(cfg)}** on "
        f"**{cfg.get('modality')}** images.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| Task | {_task_line(cfg)} |",
        f"| Modality | {cfg.get('modality')} |",
        f"| Encoder | {enc.get('arch')}, patch {enc.get('patch_size')}, {enc_state}; "
        f"{'weights' if frozen else 'initialised'} from "
        f"`{enc.get('weights_source') or 'unknown'}` |",
        f"| Input | RGB resized to {pre.get('input_size')}x{pre.get('input_size')} ({pre.get('interpolation')}), "
        f"normalised with mean {pre.get('mean')} and std {pre.get('std')} |",
    ]
    if feats.get("type") == "dense":
        lines.append(f"| Features | patch tokens of blocks {feats.get('block_ids')} (after the final norm) |")
    elif int(feats.get("avgpool", 0)) == 1:
        lines.append("| Features | mean patch token of the last block |")
    elif int(feats.get("avgpool", 0)) == 2:
        lines.append(f"| Features | CLS tokens of the last {feats.get('n_last_blocks')} blocks and the mean patch "
                     "token of the last block, concatenated |")
    else:
        lines.append(f"| Features | CLS tokens of the last {feats.get('n_last_blocks')} blocks, concatenated |")
    lines.append(f"| Head | `{head.get('type')}` {head.get('args')} |")
    names = cfg.get("class_names") or cfg.get("target_names") or cfg.get("landmark_names")
    if names:
        lines.append(f"| Outputs | {', '.join(str(n) for n in names)} |")
    if cfg.get("thresholds") is not None:
        lines.append(f"| Thresholds | {cfg.get('thresholds')} |")
    if cfg.get("target_mean") is not None:
        lines.append("| Target units | outputs are de-standardised with the training split's mean and std |")
    lines.append(f"| Software | visionfm {cfg.get('visionfm_version')}, torch {cfg.get('torch_version')}, "
                 f"format_version {cfg.get('format_version')} |")
    lines += ["", "## Training data", ""]
    data = cfg.get("data") or {}
    if data:
        for k, v in data.items():
            lines.append(f"- **{k}**: {v}")
    else:
        lines.append("Not recorded.")
    lines += ["", "## Evaluation", ""]
    metrics = cfg.get("metrics") or {}
    if metrics:
        split = data.get("evaluated_on") if isinstance(data, dict) else None
        if split:
            lines += [f"Evaluated on: {split}.", ""]
        lines += ["| Metric | Value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines.append("No metrics recorded.")
    lines += [
        "",
        "## Intended use",
        "",
        "Research on ophthalmic image analysis: benchmarking, feature studies and as a starting point for "
        "further training. It is **not a medical device**: it has not been validated for diagnosis, screening "
        "or treatment decisions, and its outputs must not be used for patient care. Performance outside the "
        "training distribution (other cameras, sites, populations, image quality) is unknown.",
        "",
        "## How to use",
        "",
        "```bash",
        "visionfm predict --model path/to/this/folder --input image_or_folder --output_dir predictions/",
        "```",
        "",
        "```python",
        "import visionfm",
        "model = visionfm.from_pretrained('path/to/this/folder')",
        "from visionfm.inference.io import read_image",
        "print(model.predict([read_image('image.png')]))",
        "```",
        "",
        "## Licence",
        "",
        f"Declared licence: `{licence}`. {LICENCE_NOTE}",
        "",
    ]
    if extra:
        if isinstance(extra, str):
            lines += [extra.rstrip(), ""]
        else:
            for title, text in extra.items():
                lines += [f"## {title}", "", str(text).rstrip(), ""]
    return "\n".join(lines)
