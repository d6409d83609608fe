"""runtime/params.py: parameter aliases and NOTE: [Deferred weight gradients], against eager."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.runtime import params as params_mod
from tests.oracle import assert_matches_eager


@phalanx.cell
class Mix(nn.Module):
    """Two Linears, one applied twice and to a 3-d input: several (grad, x) pairs per batch."""

    def __init__(self, dim=3):
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)

    def forward(self, h, x):
        rows = self.a(torch.stack([h, x]))               # [2, dim] per instance: 3-d when batched
        return torch.tanh(self.b(rows[0]) + self.a(rows[1]))


class Chain(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.mix = Mix(dim)

    def forward(self, inst):
        h, xs = inst
        for x in xs:
            h = self.mix(h, x)
        return h


def _instances(seed, n=5, dim=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(dim, generator=gen), [torch.randn(dim, generator=gen) for _ in range(1 + k % 3)])
            for k in range(n)]


def _spy_weight_gradients(monkeypatch) -> list:
    calls = []
    original = params_mod.FlushParams.weight_gradients

    def spy(self):
        calls.append(sum(self.gemms.counts().values()))
        yield from original(self)

    monkeypatch.setattr(params_mod.FlushParams, "weight_gradients", spy)
    return calls


def test_deferred_weight_gradients_match_eager_across_optimizer_steps(monkeypatch):
    calls = _spy_weight_gradients(monkeypatch)
    torch.manual_seed(0)
    model = Chain()
    batcher = phalanx.Batcher(model, verify=True, cells=False)     # the probed path defers via FlushParams
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(3):
        assert_matches_eager(model, _instances(seed), params=list(model.parameters()), train=True, batcher=batcher)
        optimizer.step()
    # Every batch of Mix left (grad, x) pairs for the flush's one GEMM per weight.
    assert calls and all(n >= 3 for n in calls)


def test_deferred_gradients_with_a_frozen_bias_and_tied_weights():
    torch.manual_seed(1)
    model = Chain()
    model.mix.b.weight = model.mix.a.weight            # tied: one real parameter, two modules
    model.mix.a.bias.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    assert_matches_eager(model, _instances(4), params=params, train=True)
    assert model.mix.a.bias.grad is None


def test_deferred_weight_gradient_reaches_a_hook_once():
    torch.manual_seed(2)
    model = Chain()
    seen = []
    model.mix.b.weight.register_hook(lambda g: seen.append(g.clone()))
    outs = phalanx.Batcher(model)(_instances(5))
    torch.stack(outs).sum().backward()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], model.mix.b.weight.grad)


@phalanx.cell(batching="vmap")
class VmapStep(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, h, x):
        return torch.tanh(self.lin(h) + x)


class VmapChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.step = VmapStep()

    def forward(self, inst):
        h, xs = inst
        for x in xs:
            h = self.step(h, x)
        return h


@pytest.mark.parametrize("defer", [True, False])
def test_vmap_kernels_and_the_switch_keep_plain_linear(monkeypatch, defer):
    # A cell batched by vmap runs its Linear under a functorch transform: the deferral must not be
    # used there (plain F.linear, nothing pending); the switch turns deferral off. Both match eager.
    monkeypatch.setattr(params_mod, "DEFER_WEIGHT_GRADIENTS", defer)
    eligible, pending = [], []
    original = params_mod.FlushParams.weight_gradients

    def spy(self):
        eligible.append(len(self.deferred))
        pending.append(sum(self.gemms.counts().values()))
        yield from original(self)

    monkeypatch.setattr(params_mod.FlushParams, "weight_gradients", spy)
    torch.manual_seed(3)
    model = VmapChain()
    assert_matches_eager(model, _instances(6), params=list(model.parameters()), train=True)
    assert eligible == [1 if defer else 0] and pending == [0]


def test_linear_outside_a_flush_is_untouched():
    model = Chain()
    phalanx.Batcher(model)(_instances(7))
    assert "forward" not in model.mix.a.__dict__ and "forward" not in model.mix.b.__dict__
