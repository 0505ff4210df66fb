"""The one validation of flag and config values: types, ranges and choices, declared as a table.

Every value a command receives passes :func:`check_values` once, whatever its origin: a command-line
flag, a key of ``--config run.yaml`` (which argparse does not check against ``type`` or ``choices``)
or a keyword of the Python API (:func:`visionfm.train`). The typed configs call it from
:meth:`visionfm.config.CommandConfig.from_mapping`; the commands without a config (``extract``,
``predict``, ``serve``...) from :func:`visionfm.cli.options.check_args` with types read off their
flags. A bad value is one :class:`~visionfm.errors.ConfigError` line naming the flag, what was
expected and what was given, e.g. ``--epochs: expected an integer ≥ 1, got 0``.

The rules are keyed by field name (:data:`RULES`; the same name means the same thing in every command)
with per-command additions in :data:`COMMAND_RULES` (choices that differ, ranges of one command).
Checks that need more than one value (``--input_size`` a multiple of ``--patch_size``, output folders
that are files) are in :func:`check_values` too; those that need a loaded model (``--n_last_blocks`` up
to the encoder's depth) use :func:`expect_range` where the model is known.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from visionfm.errors import ConfigError

__all__ = ["Rule", "RULES", "COMMAND_RULES", "ARCH_NAMES", "DEVICES", "rules_for", "check_values",
           "check_value", "expect_range", "describe", "OUTPUT_FOLDERS"]

#: ``--arch`` values (the table of :mod:`visionfm.models.archs`, which this layer cannot import; a test
#: keeps the two equal).
ARCH_NAMES = ("vit_tiny", "vit_small", "vit_base", "vit_large")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Rule:
    """What one value may be. ``lo``/``hi`` bound numbers (and each item of a list), inclusive unless
    ``lo_open``/``hi_open``; float values must be finite; ``choices`` lists the allowed values; a list
    has exactly ``length`` items, or at least ``min_items``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[Any, ...] | None = None
    length: int | None = None
    min_items: int | None = None


def _at_least(lo: float) -> Rule:
    return Rule(lo=lo)


def _above(lo: float) -> Rule:
    return Rule(lo=lo, lo_open=True)


def _unit(hi_open: bool = False, lo_open: bool = False) -> Rule:
    return Rule(lo=0, hi=1, lo_open=lo_open, hi_open=hi_open)


POSITIVE = _at_least(1)
NON_NEGATIVE = _at_least(0)

#: Field name → rule, for every command that has the field.
RULES: dict[str, Rule] = {
    # sizes and counts
    "batch_size_per_gpu": POSITIVE, "batch_size": POSITIVE, "epochs": POSITIVE, "num_workers": NON_NEGATIVE,
    "input_size": POSITIVE, "patch_size": POSITIVE, "n_last_blocks": POSITIVE, "out_dim": POSITIVE,
    "patch_out_dim": POSITIVE, "num_labels": POSITIVE, "embed_dim": POSITIVE, "val_freq": POSITIVE,
    "report_n_boot": NON_NEGATIVE, "seed": Rule(lo=0, hi=2**32 - 1), "saveckp_freq": POSITIVE,
    "saveckp_iters": NON_NEGATIVE, "log_freq": POSITIVE, "freeze_last_layer": NON_NEGATIVE,
    "warmup_epochs": NON_NEGATIVE, "warmup_teacher_temp_epochs": NON_NEGATIVE, "pred_start_epoch": NON_NEGATIVE,
    "max_nonfinite_steps": POSITIVE, "global_crops_number": POSITIVE, "local_crops_number": NON_NEGATIVE,
    "local_crops_size": POSITIVE, "accum_iter": POSITIVE, "max_len": POSITIVE, "n_overlays": NON_NEGATIVE,
    "block_ids": Rule(lo=0, length=4), "datasets": Rule(min_items=1), "class_names": Rule(min_items=1),
    "img_size": POSITIVE, "num": POSITIVE, "workers": POSITIVE, "short_side": POSITIVE, "max_side": POSITIVE,
    "quality": Rule(lo=1, hi=100), "port": Rule(lo=0, hi=65535), "pretrain_epochs": POSITIVE,
    "decoder_epochs": POSITIVE, "seg_epochs": POSITIVE,
    # rates, weights, temperatures
    "lr": NON_NEGATIVE, "min_lr": NON_NEGATIVE, "weight_decay": NON_NEGATIVE, "weight_decay_end": NON_NEGATIVE,
    "clip_grad": NON_NEGATIVE, "momentum_teacher": _unit(), "drop_path": _unit(hi_open=True),
    "dropout": _unit(hi_open=True), "bn_momentum": _unit(), "lambda1": NON_NEGATIVE, "lambda2": NON_NEGATIVE,
    "warmup_teacher_temp": _above(0), "teacher_temp": _above(0), "warmup_teacher_patch_temp": _above(0),
    "teacher_patch_temp": _above(0), "pred_ratio": Rule(lo=0, hi=1, hi_open=True, min_items=1),
    "pred_ratio_var": Rule(lo=0, hi=1, hi_open=True, min_items=1),
    "global_crops_scale": Rule(lo=0, hi=1, lo_open=True, length=2),
    "local_crops_scale": Rule(lo=0, hi=1, lo_open=True, length=2),
    "encoder_lr_scale": NON_NEGATIVE, "layer_decay": Rule(lo=0, hi=1, lo_open=True), "mixup": NON_NEGATIVE,
    "cutmix": NON_NEGATIVE, "mixup_prob": _unit(), "mixup_switch_prob": _unit(), "smoothing": _unit(hi_open=True),
    "reprob": _unit(), "min_crop_scale": _unit(lo_open=True), "pos_weight": _above(0), "threshold": _unit(),
    "specificity": _unit(), "sigma": _above(0), "affine_p": _unit(), "cache_max_gb": NON_NEGATIVE,
    "days": Rule(lo=0, min_items=1), "max_upload_mb": _above(0), "max_megapixels": _above(0),
    # choices shared by every command that has the field
    "device": Rule(choices=DEVICES), "arch": Rule(choices=ARCH_NAMES), "head": Rule(choices=("cls", "linear")),
    "avgpool_patchtokens": Rule(choices=(0, 1, 2)),
}

#: ``n_last_blocks`` of the decoders trained on stored features: the stores hold the CLS tokens of the last
#: 4 blocks (``visionfm.engine.features.CLS_LEVELS``, as the original; a test keeps the two equal).
FEATURE_LEVELS = 4
_LEVELS = Rule(lo=1, hi=FEATURE_LEVELS)
_STORE_DECODER = {"fusion": Rule(choices=("pooled", "concat", "attention"))}
_DENSE = {"head_type": Rule(choices=("unetr", "linear")), "scheduler": Rule(choices=("cosine", "step", "constant"))}

#: Command → field → rule, replacing :data:`RULES` for that command (``choices`` of its flags).
COMMAND_RULES: dict[str, dict[str, Rule]] = {
    "pretrain": {
        "norm_in_head": Rule(choices=(None, "bn", "syncbn", "ln")), "act_in_head": Rule(choices=("gelu", "relu")),
        "pred_shape": Rule(choices=("block", "rand")), "precision": Rule(choices=("auto", "bf16", "fp16", "fp32")),
        "clip_mode": Rule(choices=("per_param", "global")), "optimizer": Rule(choices=("adamw", "sgd", "lars")),
        "scheme": Rule(choices=("single", "mix")), "on_corrupt": Rule(choices=("fail", "skip")),
        "augment_on": Rule(choices=("auto", "cpu", "device")), "decode": Rule(choices=("reduced", "full", "gpu")),
    },
    "train-cls": {
        "avgpool_patchtokens": Rule(choices=(0, 1)), "dataset_format": Rule(choices=("vfm", "ImageNet")),
        "task": Rule(choices=("auto", "binary", "multiclass", "multilabel")), "n_last_blocks": _LEVELS,
    },
    "train-multi-cls": {**_STORE_DECODER, "label_layout": Rule(choices=("visionfm13", "multilabel")),
                        "optimizer": Rule(choices=("sgd", "adamw"))},
    "train-reg": {**_STORE_DECODER, "optimizer": Rule(choices=("adamw", "sgd")),
                  "lr_scaling": Rule(choices=("none", "linear")), "scheduler": Rule(choices=("constant", "cosine"))},
    "train-seg": dict(_DENSE),
    "train-landmark": dict(_DENSE),
    "train-forecast": {"optimizer": Rule(choices=("sgd", "adamw")), "selection": Rule(choices=("auroc", "aupr", "f1")),
                       "scheduler": Rule(choices=("cosine", "constant")),
                       "num_labels": Rule(),  # unused, as in the original: any value is accepted
                       "n_last_blocks": _LEVELS},
    "finetune": {"recipe": Rule(choices=("visionfm", "retfound")),
                 "scheduler": Rule(choices=("cosine", "warmup_cosine")),
                 "crop_interpolation": Rule(choices=("bilinear", "bicubic"))},
    "evaluate": {"split": Rule(choices=("train", "val", "test"))},
    "synth": {"num_classes": Rule(choices=(2, 3, 4))},
    "extract": {"mode": Rule(choices=("cls", "seg"))},
}

#: Fields naming a folder a command creates and writes into.
OUTPUT_FOLDERS = ("output_dir", "dst_root", "dst_dir", "dst_path", "output")


def rules_for(command: str) -> dict[str, Rule]:
    """The rules of one command: :data:`RULES` updated with its :data:`COMMAND_RULES`."""
    return {**RULES, **COMMAND_RULES.get(command, {})}


# -- describing and checking one value --------------------------------------------------------------------------


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _bounds(rule: Rule) -> str:
    lo, hi = rule.lo, rule.hi
    if lo is not None and hi is not None:
        return f" in {'(' if rule.lo_open else '['}{_num(lo)}, {_num(hi)}{')' if rule.hi_open else ']'}"
    if lo is not None:
        return f" {'>' if rule.lo_open else '≥'} {_num(lo)}"
    if hi is not None:
        return f" {'<' if rule.hi_open else '≤'} {_num(hi)}"
    return ""


_WORDS = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
          bool: ("true or false", "true/false values"), str: ("a string", "strings")}


def describe(kind: Any, rule: Rule) -> str:
    """What a value of annotation ``kind`` under ``rule`` must be, in words (``an integer ≥ 1``)."""
    base, optional = _strip_optional(kind)
    if rule.choices is not None:
        shown = [c for c in rule.choices if c is not None]
        text = "one of " + ", ".join(str(c) for c in shown)
        seq = _sequence_item(base)
        return f"one or more of {', '.join(str(c) for c in shown)}" if seq is not None else text
    item = _sequence_item(base)
    if item is not None:
        word = _WORDS.get(item, ("a value", "values"))[1]
        if rule.length is not None:
            count = f"{rule.length} "
        elif rule.min_items:
            count = "one or more " if rule.min_items == 1 else f"at least {rule.min_items} "
        else:
            count = ""
        return f"{count}{word}{_bounds(rule)}"
    return _WORDS.get(base, ("a value", ""))[0] + _bounds(rule)


def _strip_optional(kind: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; a union of sequences stays as it is."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = len(args) < len(typing.get_args(kind))
        rest = args[0]
        for a in args[1:]:
            rest = rest | a
        return rest, optional
    return kind, False


def _sequence_item(kind: Any) -> Any | None:
    """The item type of ``list[X]`` / ``tuple[X, ...]`` (or a union of them), else None."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        return args[0] if args else Any
    if origin in (typing.Union, types.UnionType):
        items = {_sequence_item(a) for a in typing.get_args(kind)}
        items.discard(None)
        return items.pop() if len(items) == 1 else None
    return None


class _Bad(Exception):
    pass


def _scalar(value: Any, kind: Any) -> Any:
    """``value`` as a scalar of ``kind`` (int, float, bool, str, Any), or :class:`_Bad`."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value) if isinstance(value, int) else value
        raise _Bad
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # YAML ``name: 2024``
            return str(value)
        raise _Bad
    return value


def _in_bounds(x: Any, rule: Rule) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return True
    if rule.lo is not None and (x < rule.lo or (rule.lo_open and x == rule.lo)):
        return False
    if rule.hi is not None and (x > rule.hi or (rule.hi_open and x == rule.hi)):
        return False
    return True


def check_value(flag: str, value: Any, kind: Any, rule: Rule | None, source: str | None = None) -> Any:
    """``value`` checked against its annotation ``kind`` and ``rule``; returns it (ints as floats where
    a float is expected, a scalar as a one-item list where a list is). A bad value raises one
    :class:`ConfigError` line: ``--flag: expected ..., got ...``."""
    rule = rule or Rule()
    base, optional = _strip_optional(kind)

    def bad() -> ConfigError:
        where = f" (from --config {source})" if source else ""
        return ConfigError(f"--{flag}: expected {describe(kind, rule)}, got {value!r}{where}")

    if value is None:
        if optional or kind is Any or (rule.choices is not None and None in rule.choices):
            return None
        raise bad()
    item = _sequence_item(base)
    try:
        if item is not None:
            seq = list(value) if isinstance(value, (list, tuple)) else [value]
            out = [_scalar(v, item) for v in seq]
            if rule.length is not None and len(out) != rule.length:
                raise _Bad
            if rule.min_items is not None and len(out) < rule.min_items:
                raise _Bad
            if not all(_in_bounds(v, rule) for v in out):
                raise _Bad
            if rule.choices is not None and any(v not in rule.choices for v in out):
                raise _Bad
            return tuple(out) if isinstance(value, tuple) else out
        out = _scalar(value, base)
    except _Bad:
        raise bad() from None
    if not _in_bounds(out, rule) or (rule.choices is not None and out not in rule.choices):
        raise bad()
    return out


def expect_range(flag: str, value: int, lo: int, hi: int, why: str) -> None:
    """A value whose bounds are known only once a model is loaded (``--n_last_blocks`` ≤ the encoder's
    depth): one line ``--flag: expected an integer in [lo, hi] (why), got value``."""
    if not lo <= value <= hi:
        raise ConfigError(f"--{flag}: expected an integer in [{lo}, {hi}] ({why}), got {value!r}")


# -- checking a whole mapping -----------------------------------------------------------------------------------


def _output_folder(flag: str, value: Any) -> None:
    """An output folder must be a folder or creatable: not an existing file, nor under one."""
    if not isinstance(value, str) or not value:
        return
    path = Path(value)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under the file {p}"
                raise ConfigError(f"--{flag}: expected a folder (existing or to create), got {value!r}, which {what}")
            return


def check_values(command: str, values: Mapping[str, Any], kinds: Mapping[str, Any],
                 sources: Mapping[str, str] | None = None, extra_rules: Mapping[str, Rule] | None = None
                 ) -> dict[str, Any]:
    """Every value of ``values`` checked (:func:`check_value`) against its annotation in ``kinds`` and the
    rules of ``command`` (plus ``extra_rules``); then the checks that relate values. ``sources`` maps a
    field to the ``--config`` file it came from, named in the message. Returns the checked values."""
    rules = {**(extra_rules or {}), **rules_for(command)}
    sources = sources or {}
    out = dict(values)
    for key, value in values.items():
        out[key] = check_value(key, value, kinds.get(key, Any), rules.get(key), sources.get(key))
    patch, size = out.get("patch_size"), out.get("input_size")
    if isinstance(patch, int) and isinstance(size, int) and size % patch:
        src = sources.get("input_size") or sources.get("patch_size")
        raise ConfigError(f"--input_size: expected a positive multiple of --patch_size {patch}, got {size}"
                          + (f" (from --config {src})" if src else ""))
    for key in OUTPUT_FOLDERS:
        if key in out:
            _output_folder(key, out[key])
    return out
