"""The iBOT projection head (reference §3.2, ``models/head.py::iBOTHead``).

``MLP -> L2-normalise -> weight-normalised linear`` with a second weight-normalised layer for the
patch tokens (or the same one when ``shared_head``).

Difference from the original: the weight normalisation uses the current
``torch.nn.utils.parametrizations.weight_norm`` instead of the deprecated ``nn.utils.weight_norm``.
That API names the parameters ``parametrizations.weight.original0/original1``; state-dict hooks on the
head translate them to and from the official ``weight_g`` / ``weight_v`` keys, so official checkpoints
load unchanged and ours look like official ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["IBOTHead", "HEAD_NORMS", "HEAD_ACTS"]

HEAD_NORMS = (None, "bn", "syncbn", "ln")
HEAD_ACTS = ("gelu", "relu")

# Modern parametrisation name -> official (old weight_norm) suffix.
_MODERN_TO_OFFICIAL = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}
_OFFICIAL_TO_MODERN = {v: k for k, v in _MODERN_TO_OFFICIAL.items()}


def _weight_normed_names(module: nn.Module) -> list[str]:
    """Relative names (``"last_layer"``, ``"last_layer2"``) of submodules with a weight-normed weight."""
    return [
        name
        for name, sub in module.named_modules(remove_duplicate=False)
        if name and parametrize.is_parametrized(sub, "weight")
    ]


def _to_official_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: rename this head's parametrisation keys to ``weight_g`` / ``weight_v``."""
    owned = [k for k in state_dict if k.startswith(prefix)]
    renames = {}
    for name in _weight_normed_names(module):
        for modern, official in _MODERN_TO_OFFICIAL.items():
            renames[f"{prefix}{name}.{modern}"] = f"{prefix}{name}.{official}"
    if not any(k in renames for k in owned):
        return
    # Pop and re-insert every key of this head so the original key order is preserved.
    items = [(renames.get(k, k), state_dict.pop(k)) for k in owned]
    state_dict.update(items)


def _from_official_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """load_state_dict pre-hook: accept official ``weight_g`` / ``weight_v`` keys (ours load as they are)."""
    for name in _weight_normed_names(module):
        for official, modern in _OFFICIAL_TO_MODERN.items():
            key = f"{prefix}{name}.{official}"
            if key in state_dict:
                state_dict[f"{prefix}{name}.{modern}"] = state_dict.pop(key)


def _register_post_hook(module: nn.Module, hook: Callable[..., None]) -> None:
    # Public API from torch 2.5; the private one behaves the same for a hook that returns None.
    register = getattr(module, "register_state_dict_post_hook", None)
    if register is None:
        module._register_state_dict_hook(hook)  # pragma: no cover - torch < 2.5
    else:
        register(hook)


class _TokenMLP(nn.Sequential):
    """Sequential that lets BatchNorm see the channel dimension of ``[N, T, C]`` token inputs.

    A plain ``nn.Sequential`` subclass, so parameter names are ``mlp.<i>.*`` exactly as in official
    checkpoints (the original's ``CustomSequential``).
    """

    _bn_types = (nn.BatchNorm1d, nn.SyncBatchNorm)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            if x.dim() == 3 and isinstance(layer, self._bn_types):
                x = layer(x.transpose(1, 2)).transpose(1, 2)
            else:
                x = layer(x)
        return x


def _make_norm(norm: str | None, dim: int) -> nn.Module | None:
    if norm is None:
        return None
    if norm == "bn":
        return nn.BatchNorm1d(dim)
    if norm == "syncbn":
        return nn.SyncBatchNorm(dim)
    if norm == "ln":
        return nn.LayerNorm(dim)
    raise ValueError(f"unknown head norm {norm!r}; valid: {HEAD_NORMS}")


def _make_act(act: str) -> nn.Module:
    if act == "gelu":
        return nn.GELU()
    if act == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown head activation {act!r}; valid: {HEAD_ACTS}")


def _weight_normed_linear(in_dim: int, out_dim: int, freeze_g: bool) -> nn.Module:
    """Bias-free weight-normalised Linear with default init for v and g filled with 1 (frozen if asked)."""
    layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False), name="weight", dim=0)
    g = layer.parametrizations.weight.original0  # [out_dim, 1]
    with torch.no_grad():
        g.fill_(1.0)
    g.requires_grad_(not freeze_g)
    return layer


class IBOTHead(nn.Module):
    """iBOT head: shared MLP, then separate (or shared) prototype layers for CLS and patch tokens.

    Args:
        in_dim: backbone width D.
        out_dim: number of CLS prototypes K.
        patch_out_dim: number of patch prototypes K2 (ignored when ``shared_head``, where K2 = K).
        norm: ``None``, ``"bn"``, ``"syncbn"`` or ``"ln"``: one module, applied after each hidden
            Linear (``mlp.1`` and ``mlp.4`` of the state dict are the same tensors, as the original's).
        act: ``"gelu"`` or ``"relu"``.
        nlayers: Linear layers in the MLP (1 means a single ``in_dim -> bottleneck_dim`` Linear).
        hidden_dim: hidden width of the MLP.
        bottleneck_dim: MLP output width, input of the prototype layers.
        norm_last_layer: freeze the weight-norm magnitude ``g`` (kept at 1).
        shared_head: ``last_layer2`` *is* ``last_layer`` (one module, shared parameters).

    The MLP Linear layers are trunc-normal (std .02) with zero bias; the prototype layers keep
    PyTorch's default init for ``v`` (they are created after the MLP init, as in the original).

    Shapes:
        ``[N, D]`` -> ``[N, K]`` (DINO behaviour);
        ``[N, 1+P, D]`` -> ``([N, K], [N, P, K2])`` for the CLS token and the patch tokens.

    Difference from the original: ``bottleneck_dim=0`` (no weight-normalised layer) is rejected, since
    the patch branch would have no projection to ``patch_out_dim``; pretraining never uses it.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        patch_out_dim: int = 8192,
        norm: Literal["bn", "syncbn", "ln"] | None = None,
        act: Literal["gelu", "relu"] = "gelu",
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        shared_head: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        if bottleneck_dim < 1:
            raise ValueError(f"bottleneck_dim must be >= 1 for an iBOT head, got {bottleneck_dim}")
        self.out_dim = out_dim
        self.patch_out_dim = out_dim if shared_head else patch_out_dim
        self.shared_head = shared_head

        self.mlp: nn.Module
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            # ONE norm module after every hidden Linear, as the original's DINOHead: its parameters
            # are shared and a BatchNorm's running statistics are updated at each position.
            norm_layer = _make_norm(norm, hidden_dim)
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layers.append(nn.Linear(d_in, d_out))
                if norm_layer is not None:
                    layers.append(norm_layer)
                layers.append(_make_act(act))
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = _TokenMLP(*layers)
        self.mlp.apply(self._init_linear)

        self.last_layer = _weight_normed_linear(bottleneck_dim, out_dim, norm_last_layer)
        # A shared head is one module under two names, not a branch in forward.
        self.last_layer2 = (
            self.last_layer
            if shared_head
            else _weight_normed_linear(bottleneck_dim, patch_out_dim, norm_last_layer)
        )

        _register_post_hook(self, _to_official_keys)
        self.register_load_state_dict_pre_hook(_from_official_keys)

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def sync_batchnorm_(self) -> None:
        """Make the head's BatchNorm a ``SyncBatchNorm`` (same parameters and buffers), still one
        module at every position. ``nn.SyncBatchNorm.convert_sync_batchnorm`` would convert only the
        first position (``named_children`` skips the repeat), leaving the second a local BatchNorm."""
        if not isinstance(self.mlp, _TokenMLP):
            return
        converted: dict[int, nn.Module] = {}
        for i, layer in enumerate(self.mlp):
            if isinstance(layer, nn.BatchNorm1d) and not isinstance(layer, nn.SyncBatchNorm):
                if id(layer) not in converted:
                    converted[id(layer)] = nn.SyncBatchNorm.convert_sync_batchnorm(layer)
                self.mlp[i] = converted[id(layer)]

    @property
    def has_batchnorm(self) -> bool:
        """BatchNorm statistics depend on which tokens pass, so such a head must see all of them."""
        return any(isinstance(m, (nn.BatchNorm1d, nn.SyncBatchNorm)) for m in self.mlp.modules())

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() == 2:
            return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))
        if x.dim() != 3:
            raise ValueError(f"IBOTHead expects [N, D] or [N, 1+P, D] input, got shape {tuple(x.shape)}")
        z = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(z[:, 0]), self.last_layer2(z[:, 1:])

    def forward_selected(
        self, x: Tensor, select: Tensor, patch_mean: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """CLS output plus the patch outputs of ``K`` chosen tokens per image only.

        Args:
            x: ``[N, 1+P, D]`` backbone tokens.
            select: ``int64 [N, K]`` patch indices (0-based, CLS excluded) to project.
            patch_mean: also return ``mean_P(last_layer2(z))`` over *all* patches, ``[N, K2]`` (the
                teacher's centre statistic). The prototype layer is linear and bias-free, so it equals
                ``last_layer2(mean_P(z))`` and the ``[N, P, K2]`` tensor is never formed.

        Returns:
            ``(cls [N, K], patch [N, K_sel, K2], mean [N, K2] or None)``. Without ``patch_mean`` the
            MLP runs on the CLS token and the chosen tokens only; with it, on every token. For a head
            with BatchNorm, pass every index (the statistics then match :meth:`forward`).
        """
        if x.dim() != 3 or select.dim() != 2 or select.shape[0] != x.shape[0]:
            raise ValueError(f"need x [N, 1+P, D] and select [N, K]; got {tuple(x.shape)} and {tuple(select.shape)}")
        idx = select.unsqueeze(-1)
        mean = None
        if patch_mean:
            z = F.normalize(self.mlp(x), dim=-1, p=2)
            zp = z[:, 1:]
            z_sel = zp.gather(1, idx.expand(-1, -1, zp.shape[-1]))
            mean = self.last_layer2(zp.mean(1))
            cls_z = z[:, 0]
        else:
            picked = x[:, 1:].gather(1, idx.expand(-1, -1, x.shape[-1]))
            z = F.normalize(self.mlp(torch.cat([x[:, :1], picked], dim=1)), dim=-1, p=2)
            cls_z, z_sel = z[:, 0], z[:, 1:]
        return self.last_layer(cls_z), self.last_layer2(z_sel), mean
