"""Optimizer groups, gradient clipping, last-layer freezing and the teacher EMA (reference §1.5, §4.5).

Differences from the original, each deliberate:

* :func:`param_groups` exempts ``cls_token``, ``pos_embed``, ``masked_embed`` (and other timm token
  parameters) and a trainable weight-norm magnitude ``weight_g`` from weight decay; the original
  decays every parameter that is neither a ``.bias`` nor 1-D (reference §8 item 18). Pass
  ``official_decay=True`` to get the original's decisions back.
* last-layer parameters are put in their own groups flagged ``is_last_layer=True``, so the training
  loop can freeze them by learning rate as well as by :func:`cancel_last_layer_grads`.
* clipping and the EMA use fused ``torch._foreach_*`` kernels with no per-parameter host sync.

An optimizer state saved with other groups (the original's two, or ours under other flags) is moved
onto the current groups by parameter name (:func:`adapt_optimizer_state`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from visionfm.engine.fsdp import is_sharded, local_tensor

__all__ = [
    "NO_DECAY_NAMES",
    "param_groups",
    "set_group_hparams",
    "clip_gradients_per_param",
    "clip_gradients_global",
    "cancel_last_layer_grads",
    "ema_update_",
    "common_params",
    "official_group_names",
    "adapt_optimizer_state",
]

# Last name component of parameters that must not be decayed (tokens and embeddings: decaying them
# pulls them towards zero for no regularisation benefit) plus the old-API weight-norm magnitude.
NO_DECAY_NAMES = frozenset(
    {"cls_token", "pos_embed", "masked_embed", "mask_token", "reg_token", "dist_token", "weight_g"}
)
# The modern weight_norm stores the magnitude g under this suffix.
_WEIGHT_G_SUFFIX = "parametrizations.weight.original0"


def _is_last_layer(name: str) -> bool:
    # Same substring rule as the original (so "last_layer2" is included).
    return "last_layer" in name


def _decays(name: str, p: Tensor, official: bool, extra: frozenset[str]) -> bool:
    if name.endswith(".bias") or p.ndim <= 1:
        return False
    if official:
        return True
    leaf = name.rsplit(".", 1)[-1]
    return not (leaf in NO_DECAY_NAMES or leaf in extra or name.endswith(_WEIGHT_G_SUFFIX))


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.04,
    *,
    official_decay: bool = False,
    split_last_layer: bool = True,
    no_decay_names: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the student (trainable parameters only).

    Args:
        model: the student (unwrap DDP first so names have no ``module.`` prefix — not required).
        weight_decay: initial decay of the decayed groups (the loop overwrites it every iteration).
        official_decay: reproduce the original's decay rule (decay everything except ``.bias`` and
            1-D parameters).
        split_last_layer: put ``*last_layer*`` parameters in separate groups. With
            ``official_decay=True, split_last_layer=False`` the result is exactly the original's two
            groups ``[regularized, not_regularized]``, both always present and in that order, so an
            official optimizer state dict loads.
        no_decay_names: extra last-name components to exempt from decay.

    Returns:
        Groups (empty ones dropped, except in the exact official layout) with keys ``params``,
        ``param_names``, ``weight_decay``, ``apply_wd`` (whether the wd schedule applies) and
        ``is_last_layer``. Order: decayed, not decayed, then last-layer decayed, last-layer not decayed.
    """
    extra = frozenset(no_decay_names)
    buckets: dict[tuple[bool, bool], tuple[list[str], list[Tensor]]] = {
        key: ([], []) for key in ((False, True), (False, False), (True, True), (True, False))
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        last = split_last_layer and _is_last_layer(name)
        names, params = buckets[(last, _decays(name, p, official_decay, extra))]
        names.append(name)
        params.append(p)
    keep_empty = official_decay and not split_last_layer
    groups = []
    for (last, decay), (names, params) in buckets.items():
        if not params and not (keep_empty and not last):
            continue
        groups.append(
            {
                "params": params,
                "param_names": names,
                "weight_decay": weight_decay if decay else 0.0,
                "apply_wd": decay,
                "is_last_layer": last,
            }
        )
    return groups


def set_group_hparams(
    optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, *, freeze_last_layer: bool = False
) -> None:
    """Apply this iteration's schedule values to groups made by :func:`param_groups`.

    ``weight_decay`` goes to groups with ``apply_wd`` (others keep 0); ``lr`` to all groups, except
    0 for ``is_last_layer`` groups while ``freeze_last_layer``. Note: zero lr alone still lets AdamW
    accumulate moments from last-layer gradients; :func:`cancel_last_layer_grads` (the original's
    mechanism) drops the gradients so the optimizer skips those parameters entirely.

    Groups without the flags (an optimizer restored from an official checkpoint replaces the group
    dicts with the saved ones) follow the original's rule: only group 0 is decayed.
    """
    for i, g in enumerate(optimizer.param_groups):
        g["lr"] = 0.0 if (freeze_last_layer and g.get("is_last_layer", False)) else lr
        if g.get("apply_wd", i == 0):
            g["weight_decay"] = weight_decay


def _grads(params: Iterable[Tensor]) -> list[Tensor]:
    return [p.grad for p in params if p.grad is not None]


@torch.no_grad()
def clip_gradients_per_param(params: Iterable[Tensor], clip: float) -> Tensor:
    """Per-parameter clipping, the original's ``clip_gradients`` (NOT a global-norm clip).

    Each gradient with norm ``n`` is scaled by ``clip / (n + 1e-6)`` when that factor is below 1.
    Scaling by ``min(factor, 1)`` is the same operation, done for all tensors in fused kernels.

    Returns:
        float32 ``[n_grads]`` pre-clip norms, in parameter order (parameters without a gradient skipped).
    """
    grads = _grads(params)
    if not grads:
        return torch.zeros(0)
    sharded = is_sharded(grads[0])
    if sharded:  # FSDP: each rank holds a slice of every gradient; a tensor's norm sums the slices' squares
        grads = [g.to_local() for g in grads]
        squares = torch.stack(torch._foreach_norm(grads, 2)).square()
        torch.distributed.all_reduce(squares)
        norms = list(squares.sqrt().unbind())
    else:
        norms = torch._foreach_norm(grads, 2)
    factors = torch._foreach_add(norms, 1e-6)
    torch._foreach_reciprocal_(factors)
    torch._foreach_mul_(factors, clip)
    torch._foreach_clamp_max_(factors, 1.0)
    torch._foreach_mul_(grads, factors)
    device = grads[0].device
    return torch.stack([n.to(device=device, dtype=torch.float32) for n in norms])


@torch.no_grad()
def clip_gradients_global(params: Iterable[Tensor], clip: float) -> Tensor:
    """Global-norm clipping (the usual rule; not the original's). Returns the pre-clip total norm."""
    # foreach=None picks the fused path wherever the device supports it (CUDA), loops on CPU.
    return torch.nn.utils.clip_grad_norm_(list(params), clip, foreach=None)


def cancel_last_layer_grads(model: nn.Module, epoch: int, freeze_last_layer: int) -> bool:
    """Drop the gradients of ``*last_layer*`` parameters while ``epoch < freeze_last_layer``.

    Returns whether anything was cancelled. Call after clipping and before ``optimizer.step()``.
    """
    if epoch >= freeze_last_layer:
        return False
    for name, p in model.named_parameters():
        if _is_last_layer(name):
            p.grad = None
    return True


@torch.no_grad()
def ema_update_(teacher_params: Sequence[Tensor], student_params: Sequence[Tensor], momentum: float | Tensor) -> None:
    """``θ_t ← m·θ_t + (1−m)·θ_s`` for every pair, as one fused ``lerp`` kernel.

    ``momentum`` may be a 0-d tensor on the parameters' device (the trainer passes 1 for a skipped
    step, so the teacher stays put without a host read).
    """
    if len(teacher_params) != len(student_params):
        raise ValueError(f"{len(teacher_params)} teacher vs {len(student_params)} student parameters")
    if not teacher_params:
        return
    weight = 1.0 - momentum
    # FSDP: student and teacher are sharded alike, so the update runs on each rank's local shards
    torch._foreach_lerp_([local_tensor(t.detach()) for t in teacher_params],
                         [local_tensor(s.detach()) for s in student_params], weight)


def common_params(teacher: nn.Module, student: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Teacher/student parameter pairs for the EMA: the intersection of parameter names (reference §4.4).

    Names present on one side only (e.g. the student's ``masked_embed``, or ``head.last_layer2.*``
    when only the teacher's head is shared) are never averaged, as in the original. Shared parameters
    are listed once. Compute once after building the models and reuse every iteration.
    """
    t = dict(teacher.named_parameters())
    pairs = [(t[n], p) for n, p in student.named_parameters() if n in t]
    for tp, sp in pairs:
        if tp.shape != sp.shape:
            raise ValueError(f"teacher/student shape mismatch: {tuple(tp.shape)} vs {tuple(sp.shape)}")
    return [a for a, _ in pairs], [b for _, b in pairs]


def official_group_names(model: nn.Module) -> list[list[str]]:
    """Parameter names of the original's two groups ``[regularized, not_regularized]``
    (``utils.get_params_groups``), in its order; the same names as our student's."""
    return [g["param_names"] for g in param_groups(model, official_decay=True, split_last_layer=False)]


def adapt_optimizer_state(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module, source: str
) -> dict[str, Any]:
    """``saved`` (an optimizer ``state_dict``) rewritten for ``optimizer``'s groups, matched by name.

    The saved names come from its groups' ``param_names`` (ours) or, in a file without them (the
    original's), from the original's grouping of ``model``, whose group sizes must then match.
    ``optimizer`` must have been built from :func:`param_groups` of ``model``. Each parameter's
    state (AdamW moments and step, SGD/LARS momentum) moves to the same-named parameter; the
    hyperparameters are the current groups' (the schedules overwrite lr and weight decay anyway).

    Raises:
        CheckpointError: the saved groups do not fit the original's grouping of this model.
    """
    from visionfm.errors import CheckpointError

    ours = [list(g["param_names"]) for g in optimizer.param_groups]
    saved_groups = saved.get("param_groups", [])
    if saved_groups and all("param_names" in g for g in saved_groups):
        theirs = [list(g["param_names"]) for g in saved_groups]
    else:
        theirs = official_group_names(model)
        sizes, expected = [len(g["params"]) for g in saved_groups], [len(n) for n in theirs]
        if sizes != expected:
            raise CheckpointError(
                f"{source}: its optimizer has groups of {sizes} parameters, the original's grouping of this "
                f"student has {expected} (another --arch, --norm_in_head, --shared_head or --norm_last_layer?)"
            )
    if theirs == ours:
        return saved
    index_of = {name: idx for g, names in zip(saved_groups, theirs) for idx, name in zip(g["params"], names)}
    old_state = saved.get("state", {})
    state: dict[int, Any] = {}
    groups: list[dict[str, Any]] = []
    i = 0
    for group, names in zip(optimizer.param_groups, ours):
        ids = []
        for name in names:
            j = index_of.get(name)
            if j is not None and j in old_state:
                state[i] = old_state[j]
            ids.append(i)
            i += 1
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
    return {"state": state, "param_groups": groups}
