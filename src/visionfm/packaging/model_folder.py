"""One folder per trained model: ``config.json`` + ``model.safetensors`` + ``README.md`` (design §2.10).

A :class:`VisionFMModel` is a frozen encoder, a decoder head and the ``config`` that says how to feed
them (input size, interpolation, modality normalisation, which blocks' tokens and how they are pooled)
and how to read their outputs (class names, thresholds, target standardisation, landmark scaling).
``forward`` reproduces the training-time path exactly (the same blocks, the same final norm, the same
pooling as :func:`visionfm.engine.features.pool_tokens` / ``FrozenFeatures``); :meth:`postprocess`
turns raw outputs into predictions and is what ``evaluate``, ``predict`` and ``serve`` share (§2.6).

What differs between tasks (which features the head takes, the task's config keys, how outputs are
read) is asked of the task's plug-in, :func:`visionfm.engine.task.get_task` ``(config["task"])``;
nothing here branches on the task's name.

Tensor names in ``model.safetensors``: encoder tensors ``encoder.<official name>`` (so the folder is
also an encoder weights source for :func:`visionfm.load_encoder`), head tensors ``head.<name>``.

Heads are built from a registry (:func:`register_head`): ``config["head"] = {"type": name,
"args": {...}}`` calls the registered constructor with those keyword arguments. A registry entry may
be a class or a lazy ``"module:Class"`` string, so a head module registers itself with one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from visionfm.engine.task import Task, get_task, task_names
from visionfm.errors import CheckpointError, ConfigError, speaks_python
from visionfm.models.heads import HEADS, get_head_constructor, register_head

__all__ = [
    "ATTENTION_METHODS",
    "FORMAT_VERSION",
    "HEADS",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "VisionFMModel",
    "check_model_folder",
    "register_head",
    "get_head_constructor",
    "from_pretrained",
    "validate_config",
    "num_outputs",
    "read_config",
    "build_model",
    "encoder_config",
    "model_folder_from_training",
    "encoder_for_package",
]

log = logging.getLogger("visionfm.packaging")

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
INTERPOLATIONS = ("bilinear", "bicubic")
#: how :meth:`VisionFMModel.attention` turns the encoder's attention into a map (``predict --attention_method``).
ATTENTION_METHODS = ("last", "rollout")

# -- configuration ----------------------------------------------------------------------------------------


def _bad(where: str, msg: str) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


def _task_of(cfg: Mapping[str, Any], where: str) -> Task:
    task = cfg.get("task")
    try:
        return get_task(task)  # type: ignore[arg-type]
    except ConfigError:
        raise _bad(where, f"unknown task {task!r}; expected one of {', '.join(task_names())}") from None


def validate_config(cfg: Any, where: str = "config") -> dict[str, Any]:
    """Check a model config before anything is built; returns it. Errors name ``where`` (the folder).

    The generic keys are checked here (format version, task registered, encoder, preprocessing, the
    ``features`` section present, head registered); the ``features`` section itself and the task's own
    keys by the task (:meth:`visionfm.engine.task.Task.validate_config`).
    """
    if not isinstance(cfg, dict):
        raise _bad(where, f"config.json must hold a JSON object, got {type(cfg).__name__}")
    fv = cfg.get("format_version")
    if fv != FORMAT_VERSION:
        raise _bad(where, f"format_version {fv!r} is not supported (this visionfm reads format_version "
                          f"{FORMAT_VERSION}); was the folder written by another visionfm version?")
    task = _task_of(cfg, where)
    for key in ("encoder", "preprocess", "features", "head"):
        if not isinstance(cfg.get(key), dict):
            raise _bad(where, f"config.json has no '{key}' section")
    enc = cfg["encoder"]
    from visionfm.models.archs import ARCHS

    if enc.get("arch") not in ARCHS:
        raise _bad(where, f"encoder arch {enc.get('arch')!r} is unknown; expected one of {', '.join(ARCHS)}")
    pre = cfg["preprocess"]
    size, ps = pre.get("input_size"), enc.get("patch_size")
    if not isinstance(ps, int) or ps < 1:
        raise _bad(where, f"encoder patch_size must be a positive integer, got {ps!r}")
    if not isinstance(size, int) or size < ps or size % ps:
        raise _bad(where, f"preprocess input_size {size!r} must be a positive multiple of the patch size {ps}")
    if pre.get("interpolation", "bicubic") not in INTERPOLATIONS:
        raise _bad(where,
                   f"preprocess interpolation {pre.get('interpolation')!r}; expected {' or '.join(INTERPOLATIONS)}")
    for key in ("mean", "std"):
        v = pre.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise _bad(where, f"preprocess {key} must be a list of 3 numbers, got {v!r}")
    if any(s <= 0 for s in pre["std"]):
        raise _bad(where, "preprocess std must be positive")
    head = cfg["head"]
    if head.get("type") not in HEADS:
        raise _bad(where, f"unknown head type {head.get('type')!r}; registered heads: {', '.join(sorted(HEADS))}")
    if not isinstance(head.get("args", {}), dict):
        raise _bad(where, "head args must be a JSON object")
    task.validate_config(cfg, lambda msg: _bad(where, msg))
    _check_output_names(cfg, task, where)
    return cfg


def _check_output_names(cfg: Mapping[str, Any], task: Task, where: str) -> None:
    """The names list (``class_names`` / ``target_names`` / ``landmark_names``) must fit the head's output
    count when the head's args declare it: one name per output, or 1–2 names for a single (binary) output.
    A shorter list made ``predict`` and ``serve`` fail with an ``IndexError``; a longer one mislabels."""
    names = cfg.get(task.names_key)
    args = cfg["head"].get("args", {})
    declared = next((args[k] for k in ("num_classes", "num_targets", "num_outputs") if k in args), None)
    if not names or declared is None:
        return
    if not isinstance(names, list):
        raise _bad(where, f"{task.names_key} must be a JSON list, got {type(names).__name__}")
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise _bad(where, f"head args: the output count must be a positive integer, got {declared!r}")
    allowed = (1, 2) if declared == 1 else (declared,)
    if len(names) not in allowed:
        want = "1 or 2 names (one binary output)" if declared == 1 else f"{declared} names"
        raise _bad(where, f"{task.names_key} lists {len(names)} names but the {cfg['head'].get('type')} head has "
                          f"{declared} outputs; expected {want}")


def num_outputs(cfg: Mapping[str, Any]) -> int:
    """Number of head outputs: the head's ``num_classes`` / ``num_targets`` / ``num_outputs`` argument, or
    the number of class / target names."""
    args = cfg["head"].get("args", {})
    for key in ("num_classes", "num_targets", "num_outputs"):
        if key in args:
            return int(args[key])
    return len(cfg.get("class_names") or cfg.get("target_names") or [])


# -- the model --------------------------------------------------------------------------------------------


class VisionFMModel(nn.Module):
    """A frozen :class:`~visionfm.models.VisionFMEncoder` + a decoder head + its ``config``.

    Args:
        encoder: the encoder (its tensors are saved as ``encoder.*``).
        head: the decoder (``head.*``); for dense tasks the bare head (not the training adapter).
        config: see :func:`validate_config` and ``docs/inference.md`` for the keys.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = validate_config(dict(config))
        self.encoder = encoder
        self.head = head
        self.eval()

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return str(self.config["task"])

    @property
    def task_plugin(self) -> Task:
        """The task's plug-in (:func:`visionfm.engine.task.get_task`), which reads this model's outputs."""
        return get_task(self.task)

    @property
    def task_kind(self) -> str | None:
        return self.config.get("task_kind")

    @property
    def input_size(self) -> int:
        return int(self.config["preprocess"]["input_size"])

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.config["preprocess"]["mean"])  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.config["preprocess"]["std"])  # type: ignore[return-value]

    @property
    def output_names(self) -> list[str]:
        """Class names (classification/forecasting/segmentation), target names or landmark names."""
        return self.task_plugin.output_names(self.config)

    # -- preprocessing ------------------------------------------------------------------------------------
    def transform(self):
        """``Resize((S, S), interpolation)`` → ``ToTensor`` → ``Normalize(mean, std)`` (PIL input)."""
        from torchvision import transforms as T

        interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[
            self.config["preprocess"].get("interpolation", "bicubic")]
        s = self.input_size
        return T.Compose([T.Resize((s, s), interpolation=interp), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def preprocess(self, images: Sequence[Any]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """PIL images (or ``[H, W, 3]`` uint8 arrays) → ``([B, 3, S, S], [(h, w), ...])`` original sizes."""
        from PIL import Image

        tf = self.transform()
        batch, sizes = [], []
        for im in images:
            if isinstance(im, np.ndarray):
                im = Image.fromarray(im)
            if not isinstance(im, Image.Image):
                raise TypeError(f"expected PIL images or uint8 arrays, got {type(im).__name__}")
            im = im if im.mode == "RGB" else im.convert("RGB")
            sizes.append((im.height, im.width))
            batch.append(tf(im))
        return torch.stack(batch), sizes

    # -- forward ------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> Any:
        """The head input, computed exactly as at training time."""
        feats = self.config["features"]
        if feats["type"] == "dense":
            outs = self.encoder.forward_intermediates_tokens(images, list(feats["block_ids"]), norm=True)
            return [o[:, 1:] for o in outs]
        from visionfm.models.pooling import pooled_features

        avgpool = int(feats.get("avgpool", 0))
        ids = feats.get("block_ids") if avgpool != 1 else None  # avgpool 1: the last block's patch tokens
        return pooled_features(self.encoder, images, int(feats.get("n_last_blocks", 1)), avgpool, ids)

    def forward(self, images: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        """Raw head outputs: logits ``[B, C]`` / values ``[B, T]`` (standardised) / maps ``[B, C, S, S]``."""
        return self.task_plugin.forward(self.head, self.features(images), images, self.config, days)

    # -- post-processing (shared by evaluate / predict / serve) ---------------------------------------------
    def postprocess(self, outputs: torch.Tensor, orig_sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
        """Raw outputs → predictions (numpy / lists), by the task's :meth:`~visionfm.engine.task.Task.postprocess`.

        * classification / forecasting: ``probabilities`` (softmax ``[B, C]``; sigmoid ``[B]`` for binary,
          ``[B, L]`` for multilabel), ``labels`` (index ``[B]``; 0/1 ``[B, L]`` for multilabel) and
          ``label_names``;
        * regression: ``values`` ``[B, T]`` in the original units (``z * target_std + target_mean``);
        * segmentation: ``masks_input`` ``[B, S, S]`` and ``masks`` (a list, each at its original size);
        * landmark: ``points_input`` ``[B, K, 2]`` and ``points`` (original pixel indices, (x, y)).
        """
        out = outputs.detach().float().cpu()
        b = out.shape[0]
        sizes = list(orig_sizes) if orig_sizes is not None else [(self.input_size, self.input_size)] * b
        return self.task_plugin.postprocess(self.config, out, sizes)

    @torch.no_grad()
    def predict(self, images: Any, days: Any = None, orig_sizes: Sequence[tuple[int, int]] | None = None
                ) -> dict[str, Any]:
        """Predictions for PIL images / uint8 arrays (preprocessed here) or a normalised tensor batch."""
        self.eval()
        if isinstance(images, torch.Tensor):
            x = images
            if x.ndim == 3:
                x = x[None]
        else:
            x, orig_sizes = self.preprocess(list(images))
        dev = next(self.parameters()).device
        x = x.to(dev)
        if days is not None:
            days = torch.as_tensor(days, dtype=torch.float32, device=dev)
        return self.postprocess(self(x, days), orig_sizes)

    @torch.no_grad()
    def attention(self, images: torch.Tensor, method: str = "last") -> torch.Tensor:
        """The CLS token's attention over the patches, ``[B, gh, gw]`` min-max scaled to [0, 1].

        Args:
            images: preprocessed images ``[B, 3, S, S]`` (:meth:`preprocess`).
            method: ``"last"`` — the last block's CLS-to-patch attention, averaged over heads;
                ``"rollout"`` — attention rollout over all blocks (Abnar & Zuidema 2020: per block the
                head-averaged attention plus the identity for the residual path, rows renormalised,
                multiplied from the first block to the last).
        """
        from visionfm.errors import ConfigError

        if method not in ATTENTION_METHODS:
            raise ConfigError(f"attention method must be one of {', '.join(ATTENTION_METHODS)}; got {method!r}")
        ps = int(self.config["encoder"]["patch_size"])
        gh, gw = images.shape[-2] // ps, images.shape[-1] // ps
        if method == "last":
            attn = self.encoder.get_last_selfattention(images)  # [B, heads, 1+P, 1+P]
            cls = attn[:, :, 0, 1:].float().mean(1)
        else:
            rollout = None
            for attn in self.encoder.get_all_selfattentions(images):
                a_blk = attn.float().mean(1)
                a_blk = a_blk + torch.eye(a_blk.shape[-1], device=a_blk.device)
                a_blk = a_blk / a_blk.sum(-1, keepdim=True)
                rollout = a_blk if rollout is None else a_blk @ rollout
            assert rollout is not None  # an encoder has at least one block
            cls = rollout[:, 0, 1:]
        a = cls.reshape(-1, gh, gw)
        lo = a.flatten(1).min(1).values[:, None, None]
        hi = a.flatten(1).max(1).values[:, None, None]
        return (a - lo) / (hi - lo).clamp_min(1e-12)

    # -- persistence ----------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    def save_pretrained(self, folder: str | os.PathLike[str], model_card_extra: Mapping[str, Any] | str | None = None,
                        metrics: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``README.md`` (and ``metrics.json`` when there are
        metrics) into ``folder`` atomically: everything goes to a temporary sibling folder first, which then
        replaces ``folder`` (an existing folder of the same name is replaced only once the new one is complete).
        """
        from visionfm.io.atomic import atomic_dir, save_json_atomic, save_safetensors_atomic, save_text_atomic
        from visionfm.packaging.card import render_model_card

        dest = Path(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.config)
        if metrics is not None:
            cfg["metrics"] = _scalar_metrics(metrics)
        cfg["torch_version"] = torch.__version__
        from visionfm import __version__

        cfg["visionfm_version"] = __version__
        validate_config(cfg, str(dest))
        tensors = self.tensors()
        from visionfm.io.finite import require_finite

        require_finite(tensors, f"model folder {dest}")  # never a folder of NaN/inf weights; an old one stays
        with atomic_dir(dest) as tmp:
            save_safetensors_atomic(tensors, tmp / WEIGHTS_FILE,
                                    metadata={"format": f"visionfm-model/{FORMAT_VERSION}", "task": self.task})
            save_json_atomic(cfg, tmp / CONFIG_FILE)
            if metrics is not None:
                save_json_atomic(dict(metrics), tmp / METRICS_FILE)
            save_text_atomic(render_model_card(cfg, model_card_extra), tmp / CARD_FILE)
        self.config = cfg
        log.info("model folder written: %s", dest)
        return dest

    @classmethod
    @speaks_python
    def from_pretrained(cls, repo_id_or_path: str | os.PathLike[str], *,
                        cache_dir: str | os.PathLike[str] | None = None, local_files_only: bool = False,
                        revision: str | None = None, token: str | bool | None = None,
                        device: str | torch.device = "cpu") -> VisionFMModel:
        """A model folder, or a Hugging Face Hub repository holding one (huggingface_hub's keyword contract:
        ``cache_dir``, ``local_files_only``, ``revision``, ``token``); see :func:`from_pretrained`."""
        return from_pretrained(repo_id_or_path, device=device, revision=revision, token=token, cache_dir=cache_dir,
                               local_files_only=local_files_only)

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = True,
                    commit_message: str = "Upload visionfm model") -> str:
        """Upload the model folder to ``repo_id`` on the Hugging Face Hub; returns the commit URL.

        Only runs when called; fails with a clear :class:`CheckpointError` offline or without access.
        """
        if _hub_offline():
            raise CheckpointError(f"cannot push to the Hugging Face Hub repository {repo_id!r}: offline mode is on "
                                  "(HF_HUB_OFFLINE=1); save_pretrained(folder) writes the same folder locally")
        try:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            with tempfile.TemporaryDirectory(prefix="visionfm-push-") as d:
                folder = self.save_pretrained(Path(d) / "model")
                api.create_repo(repo_id, private=private, exist_ok=True)
                info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        except CheckpointError:
            raise
        except Exception as exc:  # network, authentication, permissions: all reported the same way
            raise CheckpointError(f"pushing to the Hugging Face Hub repository {repo_id!r} failed "
                                  f"({type(exc).__name__}: {exc})") from None
        return str(getattr(info, "commit_url", info))


def _scalar_metrics(metrics: Mapping[str, Any], limit: int = 40) -> dict[str, Any]:
    """The top-level numbers of a metrics dict (the card and config keep a summary, not curves)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float, np.integer, np.floating)):
            fv = float(v)
            if math.isfinite(fv):
                out[str(k)] = round(fv, 6) if isinstance(v, (float, np.floating)) else int(v)
        if len(out) >= limit:
            break
    return out


# -- loading -------------------------------------------------------------------------------------------------

def _hub_offline() -> bool:
    from visionfm.io.download import is_offline

    return is_offline()


def _resolve(path_or_hub_id: str | os.PathLike[str], revision: str | None, token: str | bool | None,
             cache_dir: str | os.PathLike[str] | None = None, local_files_only: bool = False) -> Path:
    """A local model folder as it is; else a Hub repository id (``org/name``, ``org/name@revision``): its
    ``config.json`` and ``model.safetensors`` (and ``README.md`` / ``metrics.json`` when there) from the
    huggingface_hub cache, downloaded into it unless offline / ``local_files_only``."""
    p = Path(path_or_hub_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p}: expected a model folder (config.json + model.safetensors), found a file")
        return p
    s = str(path_or_hub_id)
    from visionfm.io.hub import HubRef, hub_file, parse_hub_ref

    ref = parse_hub_ref(s)
    if ref is None or ref.filename or s.startswith((".", "/", "~")):
        raise CheckpointError(f"model folder not found: {p}")
    if revision is not None:
        ref = HubRef(ref.repo_id, revision)
    kw = dict(cache_dir=cache_dir, token=token, local_files_only=local_files_only)
    folder = hub_file(ref, CONFIG_FILE, **kw).parent  # type: ignore[arg-type]
    hub_file(ref, WEIGHTS_FILE, **kw)  # type: ignore[arg-type]
    for optional in (CARD_FILE, METRICS_FILE):
        try:
            hub_file(ref, optional, **kw)  # type: ignore[arg-type]
        except CheckpointError:
            pass
    return folder


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a model folder, validated (errors name the folder)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a visionfm model folder ({CONFIG_FILE} is missing)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder}: {CONFIG_FILE} is not valid JSON ({exc})") from None
    return validate_config(cfg, str(folder))


def _meta_model_matching(folder: Path, cfg: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> VisionFMModel:
    """The model ``cfg`` describes, built on the meta device (no initialisation cost, nothing allocated),
    after checking that the weights file's tensor names and ``shapes`` are exactly the ones it needs."""
    with torch.device("meta"):
        model = build_model(cfg, str(folder))
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in expected)
    mismatched = [f"{k}: file {tuple(shapes[k])} vs config {tuple(v.shape)}"
                  for k, v in expected.items() if k in shapes and tuple(shapes[k]) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:4])})")
        if mismatched:
            parts.append("shape mismatches: " + "; ".join(mismatched[:4]))
        raise CheckpointError(f"{folder}: {WEIGHTS_FILE} does not match {CONFIG_FILE} "
                              f"({cfg['task']}, {cfg['encoder']['arch']}, head {cfg['head']['type']}): "
                              + "; ".join(parts))
    return model


def check_model_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything :func:`from_pretrained` checks before reading a weight: the validated ``config.json``
    (returned), and the tensor names and shapes in the header of ``model.safetensors`` against the model the
    config describes. Cheap at any model size (no tensor is read); ``visionfm serve`` lists folders with it.

    Raises:
        CheckpointError: naming the folder and the problem.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    _meta_model_matching(folder, cfg, _read_weights(folder, load=False))
    return cfg


def _read_weights(folder: Path, *, load: bool) -> dict[str, Any]:
    """The tensors of ``folder/model.safetensors`` (``load``), or only their shapes from the header."""
    wpath = folder / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{folder}: not a complete model folder ({WEIGHTS_FILE} is missing)")
    from safetensors import safe_open

    try:
        with safe_open(str(wpath), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) if load else tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:
        raise CheckpointError(f"{folder}: {WEIGHTS_FILE} is not a readable safetensors file ({exc})") from None


def build_model(config: Mapping[str, Any], where: str = "config") -> VisionFMModel:
    """Encoder + head from a validated config (random weights)."""
    from visionfm.models import build_encoder

    cfg = validate_config(dict(config), where)
    enc = cfg["encoder"]
    encoder = build_encoder(enc["arch"], img_size=int(cfg["preprocess"]["input_size"]),
                            patch_size=int(enc["patch_size"]),
                            masked_im_modeling=bool(enc.get("masked_im_modeling", True)))
    ctor = get_head_constructor(cfg["head"]["type"])
    try:
        head = ctor(**cfg["head"].get("args", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: head {cfg['head']['type']!r} cannot be built from args "
                              f"{cfg['head'].get('args')} ({exc})") from None
    return VisionFMModel(encoder, head, cfg)


@speaks_python
def from_pretrained(path_or_hub_id: str | os.PathLike[str], device: str | torch.device = "cpu",
                    revision: str | None = None, token: str | bool | None = None, *,
                    cache_dir: str | os.PathLike[str] | None = None, local_files_only: bool = False) -> VisionFMModel:
    """Load a model folder (or, only when the argument is not a local path, a Hugging Face Hub repository
    ``org/name`` / ``org/name@revision``, through the huggingface_hub cache: ``cache_dir`` (default
    ``HF_HUB_CACHE``), ``local_files_only`` (also when ``HF_HUB_OFFLINE=1``), ``revision``, ``token``).

    The config is validated and every tensor's name and shape is checked against the model it
    describes before any weight is loaded; mismatches raise :class:`CheckpointError` naming the folder.
    Offline with the repository not cached: one line naming the repository, the file and the cache folder.
    """
    folder = _resolve(path_or_hub_id, revision, token, cache_dir, local_files_only)
    cfg = read_config(folder)
    tensors = _read_weights(folder, load=True)
    model = _meta_model_matching(folder, cfg, {k: tuple(t.shape) for k, t in tensors.items()})
    from visionfm.io.finite import nonfinite_tensors

    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"{folder}: {WEIGHTS_FILE} holds {sum(n for _, n in bad)} non-finite (NaN/inf) value(s) "
                              f"in {len(bad)} tensor(s) (first: {bad[0][0]}); every prediction would be NaN")
    model.load_state_dict(tensors, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # a head with non-persistent buffers: build it for real and load normally
        model = build_model(cfg, str(folder))
        model.load_state_dict(tensors, strict=True)
    model.source = str(folder)  # type: ignore[attr-defined]
    return model.to(device).eval()


# -- writing a model folder at the end of a training command ---------------------------------------------------


def encoder_config(encoder: nn.Module, source: str | None = None, frozen: bool = True) -> dict[str, Any]:
    """The ``encoder`` section of a config (also read by :func:`visionfm.load_encoder` as file metadata)."""
    rep = getattr(encoder, "load_report", None)
    rep = rep.to_dict() if rep is not None else {}
    return {
        "arch": getattr(encoder, "arch", None) or rep.get("arch"),
        "patch_size": int(encoder.patch_size),  # type: ignore[arg-type]
        "embed_dim": int(encoder.embed_dim),  # type: ignore[arg-type]
        "depth": int(encoder.depth),  # type: ignore[arg-type]
        "masked_im_modeling": getattr(encoder, "masked_embed", None) is not None,
        "weights_source": source if source is not None else rep.get("source"),
        "weights_sha256": rep.get("sha256"),
        "checkpoint_key": rep.get("checkpoint_key"),
        "frozen": bool(frozen),
    }


def model_folder_from_training(
    folder: str | os.PathLike[str],
    *,
    encoder: nn.Module,
    head: nn.Module,
    task: str,
    modality: str,
    input_size: int,
    features: Mapping[str, Any],
    head_type: str,
    head_args: Mapping[str, Any],
    interpolation: str = "bicubic",
    task_kind: str | None = None,
    class_names: Sequence[str] | None = None,
    thresholds: Sequence[float] | float | None = None,
    target_names: Sequence[str] | None = None,
    target_mean: Sequence[float] | None = None,
    target_std: Sequence[float] | None = None,
    landmark_names: Sequence[str] | None = None,
    max_days: float | None = None,
    metrics: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    name: str | None = None,
    license: str | None = None,
    weights_source: str | None = None,
    model_card_extra: Mapping[str, Any] | str | None = None,
    encoder_frozen: bool = True,
) -> Path:
    """Write ``folder`` (``config.json``, ``model.safetensors``, ``README.md``) from what a training run has.

    Args:
        encoder: the frozen encoder the head was trained on (exactly those weights).
        head: the trained head with the selected weights (the bare head; dense tasks: not the adapter).
        task: a registered task (:func:`visionfm.engine.task.task_names`); ``task_kind``
            (binary/multiclass/multilabel/visionfm13) for classification and forecasting.
        features: ``{"type": "pooled", "n_last_blocks": n, "avgpool": 0|1}`` (optionally ``block_ids``)
            or ``{"type": "dense", "block_ids": [4 ids]}``.
        head_type / head_args: a registered head name and its constructor keyword arguments.
        interpolation: the resize used at training time (``bicubic`` for train-cls from images,
            ``bilinear`` for extract stores and the dense tasks).
        target_mean / target_std: regression standardisation, so predictions come out in original units.
        metrics: the selected model's evaluation; its scalar entries go to the config and the card, the
            whole dict to ``metrics.json``.
        data: a short description of the training data (shown in the card).
        encoder_frozen: ``False`` when the encoder was trained with the head (``finetune``).
    """
    import copy

    from visionfm.data.modalities import canonical_modality, get_stats

    mod = canonical_modality(modality)
    mean, std = get_stats(mod)
    enc_cfg = encoder_config(encoder, weights_source, encoder_frozen)
    enc_cfg["modality"] = mod
    cfg: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "task": task,
        "task_kind": task_kind,
        "modality": mod,
        "encoder": enc_cfg,
        "preprocess": {"input_size": int(input_size), "interpolation": interpolation,
                       "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "features": dict(features),
        "head": {"type": head_type, "args": dict(head_args)},
    }
    if class_names is not None:
        cfg["class_names"] = [str(n) for n in class_names]
    if thresholds is not None:
        cfg["thresholds"] = [float(t) for t in np.asarray(thresholds, dtype=np.float64).reshape(-1)]
    if target_names is not None:
        cfg["target_names"] = [str(n) for n in target_names]
    if target_mean is not None:
        cfg["target_mean"] = [float(v) for v in np.asarray(target_mean, dtype=np.float64).reshape(-1)]
    if target_std is not None:
        cfg["target_std"] = [float(v) for v in np.asarray(target_std, dtype=np.float64).reshape(-1)]
    if landmark_names is not None:
        cfg["landmark_names"] = [str(n) for n in landmark_names]
    if max_days is not None:
        cfg["max_days"] = float(max_days)
    if data:
        cfg["data"] = {str(k): v for k, v in data.items()}
    if license:
        cfg["license"] = license
    cfg = {k: v for k, v in cfg.items() if v is not None}
    get_head_constructor(head_type)  # fail early on an unregistered head
    model = VisionFMModel(encoder, copy.deepcopy(head), cfg)
    # The saved config must rebuild exactly these tensors: check before writing.
    with torch.device("meta"):
        probe = build_model(model.config, str(folder))
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:4]
        raise ConfigError(f"{folder}: head_args {dict(head_args)} do not rebuild the trained {head_type} head "
                          f"(e.g. {diff})")
    del probe
    return model.save_pretrained(folder, model_card_extra=model_card_extra, metrics=metrics)


def encoder_for_package(weights: str | os.PathLike[str] | None, arch: str, checkpoint_key: str | None,
                        patch_size: int, input_size: int, seed: int | None = None) -> nn.Module:
    """Re-load the frozen encoder a run used. ``random`` encoders are rebuilt from the run's seed (the
    training commands build them right after ``seed_everything(seed)``)."""
    from visionfm.models.loading import RANDOM, load_encoder

    if weights is None or str(weights) == RANDOM:
        if seed is None:
            raise ConfigError("a random encoder can only be rebuilt from its seed")
        from visionfm.engine.distributed import seed_everything

        seed_everything(int(seed))
        return load_encoder(RANDOM, arch, checkpoint_key, patch_size, input_size)
    return load_encoder(weights, arch, checkpoint_key, patch_size, input_size)
