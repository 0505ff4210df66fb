"""IBOTHead: shapes, official state-dict keys, shared head, frozen g (reference §3.2)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionfm.pretrain.head import IBOTHead

D, K, K2, HID, BOT = 8, 5, 6, 12, 4


def small_head(**kw) -> IBOTHead:
    kw = {"hidden_dim": HID, "bottleneck_dim": BOT, **kw}
    return IBOTHead(D, kw.pop("out_dim", K), kw.pop("patch_out_dim", K2), **kw)


@pytest.mark.parametrize("norm", [None, "bn", "ln"])
@pytest.mark.parametrize("shared", [False, True])
def test_shapes(norm, shared):
    head = small_head(norm=norm, shared_head=shared)
    x = torch.randn(3, 1 + 4, D)
    cls, patch = head(x)
    assert cls.shape == (3, K)
    assert patch.shape == (3, 4, K if shared else K2)
    assert head(x[:, 0]).shape == (3, K)


def test_rejects_other_ranks():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        small_head()(torch.randn(2, 3, 4, D))


def test_official_key_names():
    head = small_head()
    keys = list(head.state_dict())
    assert keys == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
        "last_layer.weight_g", "last_layer.weight_v", "last_layer2.weight_g", "last_layer2.weight_v",
    ]  # fmt: skip
    sd = head.state_dict()
    assert sd["last_layer.weight_g"].shape == (K, 1) and sd["last_layer.weight_v"].shape == (K, BOT)
    assert sd["last_layer2.weight_g"].shape == (K2, 1)
    # nested: prefixes are kept, neighbours untouched and in order
    wrapper = nn.Sequential()
    wrapper.add_module("backbone", nn.Linear(2, 2))
    wrapper.add_module("head", small_head(shared_head=True))
    wrapper.add_module("tail", nn.Linear(1, 1))
    keys = list(wrapper.state_dict())
    assert keys[:2] == ["backbone.weight", "backbone.bias"] and keys[-2:] == ["tail.weight", "tail.bias"]
    assert "head.last_layer.weight_g" in keys and "head.last_layer2.weight_v" in keys
    assert not any("parametrizations" in k for k in keys)
    wrapper.load_state_dict(wrapper.state_dict())  # strict round trip


def test_shared_head_aliasing():
    head = small_head(shared_head=True)
    assert head.last_layer2 is head.last_layer
    names = [n for n, _ in head.named_parameters()]
    assert not any(n.startswith("last_layer2") for n in names)  # one set of parameters
    sd = head.state_dict()
    assert torch.equal(sd["last_layer.weight_v"], sd["last_layer2.weight_v"])
    x = torch.randn(2, 3, D)
    cls, patch = head(x)
    z = F.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(patch, head.last_layer(z[:, 1:]))
    c = copy.deepcopy(head)  # the teacher is often a deep copy
    assert c.last_layer2 is c.last_layer and list(c.state_dict()) == list(sd)


def test_load_official_state_dict_reproduces_outputs():
    torch.manual_seed(0)
    src = small_head()
    sd = src.state_dict()
    # official-style magnitudes and directions, not our init values
    for name in ("last_layer", "last_layer2"):
        sd[f"{name}.weight_g"] = torch.rand_like(sd[f"{name}.weight_g"]) + 0.5
        sd[f"{name}.weight_v"] = torch.randn_like(sd[f"{name}.weight_v"])
    dst = small_head()
    dst.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, D)
    cls, patch = dst(x)
    z = F.normalize(dst.mlp(x), dim=-1)

    def wn(g, v):  # weight = g * v / ||v|| (row-wise), the old weight_norm(dim=0) definition
        return g * v / v.norm(dim=1, keepdim=True)

    w1 = wn(sd["last_layer.weight_g"], sd["last_layer.weight_v"])
    w2 = wn(sd["last_layer2.weight_g"], sd["last_layer2.weight_v"])
    assert torch.allclose(cls, F.linear(z[:, 0], w1), atol=1e-6)
    assert torch.allclose(patch, F.linear(z[:, 1:], w2), atol=1e-6)
    back = dst.state_dict()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_matches_deprecated_weight_norm_module():
    old_api = getattr(nn.utils, "weight_norm", None)
    if old_api is None:
        pytest.skip("torch no longer ships nn.utils.weight_norm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = old_api(nn.Linear(BOT, K, bias=False))
    old_sd = old.state_dict()
    assert set(old_sd) == {"weight_g", "weight_v"}
    head = small_head()
    head.load_state_dict({**head.state_dict(), **{f"last_layer.{k}": v for k, v in old_sd.items()}})
    z = torch.randn(3, BOT)
    assert torch.allclose(head.last_layer(z), old(z), atol=1e-6)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_weight_g_init_and_freezing(norm_last_layer):
    head = small_head(norm_last_layer=norm_last_layer)
    for layer in (head.last_layer, head.last_layer2):
        g = layer.parametrizations.weight.original0
        assert torch.all(g == 1)
        assert g.requires_grad is (not norm_last_layer)
    if norm_last_layer:
        opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
        cls, patch = head(torch.randn(2, 3, D))
        (cls.sum() + patch.square().sum()).backward()
        opt.step()
        assert torch.all(head.last_layer.parametrizations.weight.original0 == 1)
        # the effective weight rows keep unit norm
        assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(K), atol=1e-6)


def test_mlp_init():
    head = small_head()
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(D, HID), (HID, HID), (HID, BOT)]
    assert all(torch.all(m.bias == 0) for m in linears)
    assert all(m.weight.abs().max() <= 2.0 for m in linears)  # trunc-normal bounds
    assert isinstance(small_head(nlayers=1).mlp, nn.Linear)


def test_batchnorm_sees_channels_on_tokens():
    torch.manual_seed(0)
    head = small_head(norm="bn")
    assert isinstance(head.mlp[1], nn.BatchNorm1d) and head.mlp[1].num_features == HID
    x = torch.randn(3, 5, D)
    head.train()
    tokens = head.mlp(x)
    flat = copy.deepcopy(head).mlp(x.reshape(15, D)).reshape(3, 5, -1)
    # statistics over all N*T tokens per channel, exactly like a flat batch
    assert torch.allclose(tokens, flat, atol=1e-5)


def test_invalid_options():
    with pytest.raises(ValueError, match="unknown head norm"):
        small_head(norm="csyncbn")
    with pytest.raises(ValueError, match="unknown head activation"):
        small_head(act="swish")
    with pytest.raises(ValueError, match="bottleneck_dim"):
        small_head(bottleneck_dim=0)


class _ReferenceMLP(nn.Sequential):
    """The original's MLP from reference §3.2: ``Linear → norm → act → Linear → norm → act → Linear``
    with ONE norm module at both positions (its ``CustomSequential`` moves channels for BatchNorm)."""

    def forward(self, x):
        for m in self:
            x = m(x.transpose(1, 2)).transpose(1, 2) if isinstance(m, nn.BatchNorm1d) and x.dim() == 3 else m(x)
        return x


def _reference_mlp(norm: str) -> nn.Sequential:
    shared = nn.BatchNorm1d(HID) if norm == "bn" else nn.LayerNorm(HID)
    return _ReferenceMLP(nn.Linear(D, HID), shared, nn.GELU(), nn.Linear(HID, HID), shared, nn.GELU(),
                         nn.Linear(HID, BOT))


@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_head_norm_is_one_module_as_the_original(norm):
    head = small_head(norm=norm)
    assert head.mlp[1] is head.mlp[4]
    ref = _reference_mlp(norm)
    ours = {k[len("mlp."):]: v for k, v in head.state_dict().items() if k.startswith("mlp.")}
    assert list(ours) == list(ref.state_dict())  # both positions in the state dict (same tensors)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours["1.weight"].data_ptr() == ours["4.weight"].data_ptr()
    # the optimizer sees the shared parameters once, under the first position's name
    names = [n for n, _ in head.named_parameters() if n.startswith("mlp.")]
    assert names == [f"mlp.{k}" for k, _ in ref.named_parameters()]
    assert "mlp.4.weight" not in names
    # a reference state dict (random norm parameters and statistics) gives the reference's outputs
    torch.manual_seed(0)
    with torch.no_grad():
        for t in ref.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    head.mlp.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, D)
    for train in (True, False):
        head.mlp.train(train)
        ref.train(train)
        torch.testing.assert_close(head.mlp(x), ref(x))
    if norm == "bn":  # the running statistics moved twice per forward: both positions are the one module
        assert int(head.mlp[1].num_batches_tracked) == int(ref[1].num_batches_tracked) == 2
        torch.testing.assert_close(head.mlp[1].running_mean, ref[1].running_mean)


def test_sync_batchnorm_keeps_the_norm_shared():
    head = small_head(norm="bn")
    weight, mean = head.mlp[1].weight, head.mlp[1].running_mean
    head.sync_batchnorm_()
    assert isinstance(head.mlp[1], nn.SyncBatchNorm) and head.mlp[1] is head.mlp[4]
    assert head.mlp[1].weight is weight and head.mlp[1].running_mean is mean
