"""cells/defer.py: deferred weight gradients (NOTE: [Deferred GEMM gradients] for traced programs,
NOTE: [Deferred weight gradients] for plain Linears) against eager: GEMMs whose output is a cell
output, shared and frozen biases, GEMMs with nothing to capture, rows the loss does not use,
double backward, checkpoint, and the per-thread stacked-rows buffer."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.cells import CellOptions, defer
from tests.oracle import assert_matches_eager, weighted_total


@phalanx.cell
class Affine(nn.Module):
    """The cell's output IS the weight GEMM's output (its captured G_b is the gradient arena's rows)."""

    def __init__(self, dim=3):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, h):
        return self.lin(h)


@phalanx.cell
class Gate(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.lin = nn.Linear(2 * dim, dim)

    def forward(self, h, x):
        return torch.tanh(self.lin(torch.cat([h, x], dim=-1)))


class Chain(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.affine = Affine(dim)
        self.gate = Gate(dim)

    def forward(self, inst):
        h, xs = inst
        for x in xs:
            h = self.gate(self.affine(h), x)
        return h


def _instances(seed, n=5, dim=3, grad=True):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(dim, generator=gen).requires_grad_(grad),
             [torch.randn(dim, generator=gen).requires_grad_(grad) for _ in range(1 + k % 3)]) for k in range(n)]


def _leaves(instances):
    return [t for h, xs in instances for t in (h, *xs)]


@pytest.mark.parametrize("cells", [False, True])
def test_deferred_gradients_match_eager_across_optimizer_steps(cells):
    torch.manual_seed(0)
    model = Chain()
    batcher = phalanx.Batcher(model, cells=cells, verify=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(3):
        instances = _instances(seed)
        assert_matches_eager(model, instances, params=[*model.parameters(), *_leaves(instances)], train=True,
                             batcher=batcher)
        optimizer.step()


@pytest.mark.parametrize("cells", [False, True])
def test_frozen_bias_and_inputs_without_grad(cells):
    # The first Affine batch reads per-instance tensors that do not require grad: with the bias
    # frozen its output would not require grad without the weight, so there is no G_b to capture
    # and that GEMM keeps its weight in autograd; later batches defer. Both must give eager's sums.
    torch.manual_seed(1)
    model = Chain()
    model.affine.lin.bias.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    assert_matches_eager(model, _instances(2, grad=False), params=params, train=True,
                         batcher=phalanx.Batcher(model, cells=cells, verify=True))
    assert model.affine.lin.bias.grad is None


def test_a_traced_gemm_records_its_pairs_and_defers_a_shared_bias(monkeypatch):
    counts = []
    original = defer.DeferredGemms.gradients

    def spy(self, targets):
        counts.append(self.counts())
        return original(self, targets)

    monkeypatch.setattr(defer.DeferredGemms, "gradients", spy)
    torch.manual_seed(2)
    model = Chain()
    assert_matches_eager(model, _instances(3), params=list(model.parameters()), train=True,
                         batcher=phalanx.Batcher(model, cells=True, verify=True))
    # one entry per weight (Affine's, Gate's), each with one (X_b, G_b) pair per batch of its op type
    assert len(counts) == 1 and len(counts[0]) == 2 and min(counts[0].values()) >= 2


@pytest.mark.parametrize("cells", [False, True])
def test_an_unused_instance_with_nan_does_not_poison_deferred_gradients(cells):
    # NOTE: [Rows the loss does not use]: the deferred X^T G meets instance 0's NaN rows; the
    # slow path re-runs its batches without them (recording their GEMMs again).
    torch.manual_seed(3)
    model = Chain()
    instances = _instances(4, grad=False)
    instances[0][0][1] = float("nan")
    _assert_the_nan_instance_stays_apart(model, instances, cells)


def _assert_the_nan_instance_stays_apart(model, instances, cells) -> None:
    """Instance 0 gives NaN; a loss over the others gets eager's gradients, as if it were not there."""
    weighted_total([model(x) for x in instances[1:]]).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    outs = phalanx.Batcher(model, cells=cells, verify=True)(instances)
    assert torch.isnan(outs[0]).all()
    weighted_total(outs[1:]).backward()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cells", [False, True])
def test_double_backward_and_checkpoint_with_deferred_gemms(cells):
    torch.manual_seed(4)
    model = Chain()
    params = list(model.parameters())
    instances = _instances(5, grad=False)
    batcher = phalanx.Batcher(model, cells=cells, verify=True)

    def penalty_grads(run):
        grads = torch.autograd.grad(weighted_total(run()), params, create_graph=True)
        model.zero_grad(set_to_none=True)
        sum(g.pow(2).sum() for g in grads).backward()
        return [p.grad.clone() for p in params]

    for g, e in zip(penalty_grads(lambda: batcher(instances)), penalty_grads(lambda: [model(x) for x in instances]),
                    strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    model.zero_grad(set_to_none=True)
    weighted_total([model(x) for x in instances]).backward()
    expected = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    torch.utils.checkpoint.checkpoint(lambda: weighted_total(batcher(instances)), use_reentrant=False).backward()
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)


def test_gemm_outside_a_training_flush_is_the_plain_one():
    x, w, b = torch.randn(4, 3, requires_grad=True), torch.randn(3, 2, requires_grad=True), torch.randn(2)
    out = defer.deferred_addmm(b, x, w, True)
    torch.testing.assert_close(out, torch.addmm(b, x, w))
    out.sum().backward()
    assert w.grad is not None          # autograd's own weight gradient: nothing was deferred
    gemms = defer.DeferredGemms()
    with defer.deferring(gemms), torch.no_grad():
        defer.deferred_addmm(b, x, w)
    assert gemms.recorded == []


def test_stacked_rows_buffer_is_reused_and_never_returned_under_grad():
    parts = [torch.randn(n, 4) for n in (2, 5, 3)]
    first = defer.stacked_rows(parts, 0)
    torch.testing.assert_close(first, torch.cat(parts))
    again = defer.stacked_rows([p * 2 for p in parts], 0)
    assert again.data_ptr() == first.data_ptr()           # the same per-thread buffer
    torch.testing.assert_close(again, torch.cat(parts) * 2)
    grad_parts = [p.clone().requires_grad_() for p in parts]
    fresh = defer.stacked_rows(grad_parts, 0)              # autograd needs a recorded cat
    assert fresh.requires_grad and fresh.data_ptr() != first.data_ptr()


def test_deferred_weight_gradients_come_back_in_the_parameters_layout():
    # A traced program's GEMM reads the hoisted W = p.t(); its one GEMM is computed so that the
    # gradient reaching p is contiguous (AccumulateGrad would otherwise copy it), and equal to eager's.
    torch.manual_seed(6)
    model = Chain()
    instances = _instances(6, grad=False)
    weights = [model.affine.lin.weight, model.gate.lin.weight]
    expected = torch.autograd.grad(weighted_total([model(x) for x in instances]), weights)
    got = torch.autograd.grad(weighted_total(phalanx.Batcher(model, cells=True)(instances)), weights)
    for g, e in zip(got, expected, strict=True):
        assert g.is_contiguous()
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@phalanx.cell
class Biased(nn.Module):
    """``h @ W + b`` with a bias of any broadcasting shape (a 1-d one is fused into an addmm)."""

    def __init__(self, bias_shape, dim=3):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dim) / 2)
        self.b = nn.Parameter(torch.randn(bias_shape))

    def forward(self, h):
        return torch.tanh(h @ self.w + self.b)


class BiasedChain(nn.Module):
    def __init__(self, bias_shape):
        super().__init__()
        self.step = Biased(bias_shape)

    def forward(self, inst):
        h, xs = inst
        for x in xs:
            h = self.step(h) * x
        return h


@pytest.mark.parametrize("bias_shape", [(3,), (1, 3), (), (1, 1)])
def test_a_deferred_shared_bias_of_any_broadcasting_shape_matches_eager(bias_shape, monkeypatch):
    biases = []
    original = defer.DeferredGemms.gradients

    def spy(self, targets):
        biases.extend(e.bias is not None for e in self.entries.values() if e.gs)
        return original(self, targets)

    monkeypatch.setattr(defer.DeferredGemms, "gradients", spy)
    torch.manual_seed(7)
    model = BiasedChain(bias_shape)
    assert_matches_eager(model, _instances(7), params=list(model.parameters()), train=True,
                         batcher=phalanx.Batcher(model, cells=True, verify=True))
    if bias_shape == (3,):                 # fused into the addmm (other shapes stay an mm and an add)
        assert biases and all(biases)      # the GEMM was deferred, its bias with it


def test_an_unused_tree_with_a_nan_embedding_row_under_traced_cells():
    # Row-sparse embedding gradients (checked on their values before they are densified) and the
    # deferred X^T G, which meets the NaN rows: the slow path must give the other trees' gradients.
    from tests.unit.test_state_changes import make_model, poisoned_batch

    model = make_model()
    _assert_the_nan_instance_stays_apart(model, poisoned_batch(model), cells=True)
