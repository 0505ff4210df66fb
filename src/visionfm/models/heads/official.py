"""Parameter names of the original's decoder heads ↔ ours (reference §3.3), for loading and writing
the original's ``checkpoint_*_linear.pth`` files.

Our heads keep the original's tensor shapes and order; only some module names differ:

=========== ====================================================== ==========================================
head        original                                               visionfm
=========== ====================================================== ==========================================
UNETR       ``d{i}.deconv.*``, ``s{i}.{j}.deconv.*``,              ``up{i}.*``, ``skip{i}.{j}.*``,
            ``s{i}.{j}.layers.{k}.*``, ``c{i}.{j}.layers.{k}.*``,  ``skip{i}.{j}.{k}.*``, ``fuse{i}.{j}.{k}.*``,
            ``cls.*``                                              ``out.1.*``
linear seg  ``conv_seg.*``                                         ``conv.*``
RegHead     ``classifier.N.*``                                     ``regressor.N.*``
ClsHead     ``channel_bn.*``, ``classifier.N.*``                   the same
=========== ====================================================== ==========================================

(The landmark decoder is the UNETR head.) The DDP prefix ``module.`` is stripped before these rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

__all__ = ["OFFICIAL_NAMES", "from_official", "to_official", "adapt_state_dict"]

V = TypeVar("V")

# (original, ours) name prefixes per head type, one table for both directions: ``{i}``, ``{j}``, ``{k}`` stand
# for module indices. Within a head the more specific of two overlapping prefixes comes first (UNETR's
# ``skip{i}.{j}.{k}.`` of a ConvBlock before ``skip{i}.{j}.`` of a deconvolution).
OFFICIAL_NAMES: dict[str, list[tuple[str, str]]] = {
    "unetr": [("d{i}.deconv.", "up{i}."), ("s{i}.{j}.layers.{k}.", "skip{i}.{j}.{k}."),
              ("s{i}.{j}.deconv.", "skip{i}.{j}."), ("c{i}.{j}.layers.{k}.", "fuse{i}.{j}.{k}."), ("cls.", "out.1.")],
    "linear_seg": [("conv_seg.", "conv.")],
    "reg": [("classifier.", "regressor.")],
    "cls": [],
}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w)\\\}", r"(?P<\1>\\d+)", re.escape(template)))


def _rules(head_type: str, to_ours: bool) -> list[tuple[re.Pattern[str], str]]:
    pairs = OFFICIAL_NAMES.get(head_type, [])
    return [(_pattern(a if to_ours else b), b if to_ours else a) for a, b in pairs]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict()) + key[m.end():]
    return key


def from_official(head_type: str, state: Mapping[str, V]) -> dict[str, V]:
    """The original's head tensors renamed to ours (``module.`` stripped)."""
    rules = _rules(head_type, to_ours=True)
    return {_rename(k.removeprefix("module."), rules): v for k, v in state.items()}


def to_official(head_type: str, state: Mapping[str, V], ddp_prefix: bool = True) -> dict[str, V]:
    """Our head tensors under the original's names (with the ``module.`` prefix its DDP runs saved)."""
    rules = _rules(head_type, to_ours=False)
    prefix = "module." if ddp_prefix else ""
    return {prefix + _rename(k, rules): v for k, v in state.items()}


def adapt_state_dict(state: Mapping[str, V], target_keys: Iterable[str]) -> dict[str, V]:
    """``state`` renamed to fit ``target_keys`` (a model's ``state_dict()`` keys) when it is an original
    head checkpoint: tries each head's name rules, with and without the target's top-level prefix
    (``head.`` of a dense decoder). Returned unchanged when nothing fits exactly, so that the strict
    ``load_state_dict`` names the differences."""
    target = set(target_keys)
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    if set(plain) == target:
        return plain
    prefixes = [""] + sorted({t.split(".", 1)[0] + "." for t in target if "." in t})
    for head_type in OFFICIAL_NAMES:
        mapped = from_official(head_type, plain)
        for prefix in prefixes:
            cand = {prefix + k: v for k, v in mapped.items()}
            if set(cand) == target:
                return cand
    return plain
