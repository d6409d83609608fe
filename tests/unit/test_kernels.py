"""Batched kernels: the probe picks native batching only when it matches the per-instance oracle."""
import torch
from torch import nn

import phalanx


def kernel_modes(batcher):
    return {s.name: s.kernel.mode for s in batcher.table.sigs if s.kernel is not None}


def test_probe_picks_native_for_batch_polymorphic_and_vmap_otherwise():
    lin = nn.Linear(4, 4)
    W = nn.Parameter(torch.randn(4, 4))

    @phalanx.cell
    def poly(x):
        return torch.tanh(lin(x)).chunk(2, dim=-1)[0]

    @phalanx.cell
    def needs_vmap(x):
        return torch.cat([x, W @ x]).sum(0, keepdim=True)

    batcher = phalanx.Batcher(lambda x: (poly(x), needs_vmap(x)), cells=False)
    xs = [torch.randn(4) for _ in range(5)]
    got = batcher(xs)
    assert kernel_modes(batcher)["cell poly"] == "native"
    assert kernel_modes(batcher)["cell needs_vmap"] == "vmap"
    for x, (a, b) in zip(xs, got, strict=True):
        torch.testing.assert_close(a, torch.tanh(lin(x))[:2])
        torch.testing.assert_close(b, torch.cat([x, W @ x]).sum(0, keepdim=True))


def test_probe_is_not_fooled_by_a_batch_size_equal_to_a_dimension():
    # With batch 4 == the square matrix size, W @ X silently "works" natively; the probe uses a
    # batch size that is no dimension of the signature, so it chooses vmap.
    W = torch.randn(4, 4)

    @phalanx.cell
    def left_mul(x):
        return W @ x

    batcher = phalanx.Batcher(lambda x: left_mul(x), cells=False)
    xs = [torch.randn(4) for _ in range(4)]
    got = batcher(xs)
    assert kernel_modes(batcher)["cell left_mul"] == "vmap"
    for x, g in zip(xs, got, strict=True):
        torch.testing.assert_close(g, W @ x)


def test_cell_without_operands_is_expanded():
    @phalanx.cell
    def start():
        return torch.arange(3.0)

    batcher = phalanx.Batcher(lambda _: start() + 1, cells=False)
    got = batcher([None, None, None])
    assert kernel_modes(batcher)["cell start"] == "expand"
    assert all(torch.equal(g, torch.arange(3.0) + 1) for g in got)


def test_kernels_are_reused_across_calls():
    @phalanx.cell
    def f(x):
        return x * 2

    batcher = phalanx.Batcher(lambda x: f(x), cells=False)
    batcher([torch.ones(2)] * 3)
    kernel = batcher.table.sigs[-1].kernel
    batcher([torch.ones(2)] * 5)
    assert batcher.table.sigs[-1].kernel is kernel


def test_probe_is_not_fooled_by_identical_per_instance_tensors():
    # Every instance passes the same zero state: natively, flip(0) would flip the batch, which
    # equal rows hide. The probe perturbs every float operand, so it picks vmap.
    @phalanx.cell
    def mirror(x, h):
        return x + h.flip(0)

    batcher = phalanx.Batcher(lambda x: mirror(x, torch.zeros(4)), lazy_inputs=False, cells=False)
    xs = [torch.randn(4) for _ in range(3)]
    batcher(xs)
    assert kernel_modes(batcher)["cell mirror"] == "vmap"
    for x, g in zip(xs, phalanx.Batcher(lambda v: mirror(v, torch.arange(4.0)), lazy_inputs=False, cells=False)(xs), strict=True):
        torch.testing.assert_close(g, x + torch.arange(4.0).flip(0))


def test_dim_arguments_are_shifted_past_the_batch_dimension():
    # torch.stack(list) / x.sum(0) / softmax(dim=0) on one instance are not batch-polymorphic as
    # written; the dims rule runs them natively with the dim moved right, checked against the oracle.
    def fn(xs):
        a, b, c = xs
        stacked = torch.stack([a, b, c])                      # [3, 4] per instance
        return stacked.sum(0), torch.softmax(stacked, dim=0), torch.cat([a, b]), stacked.mean(-1)

    batcher = phalanx.Batcher(fn, cells=False)
    instances = [[torch.randn(4) for _ in range(3)] for _ in range(6)]
    with torch.no_grad():
        got = batcher(instances)
        for x, g in zip(instances, got, strict=True):
            for a, b in zip(g, fn(x), strict=True):
                torch.testing.assert_close(a, b)
    modes = kernel_modes(batcher)
    # stacked.sum(0) is a segment sum of the stacked values (NOTE: [Ragged operands]).
    assert modes["op torch.stack"] == "shifted" and modes["op ragged sum"] == "segment-sum"
    assert modes["op torch.softmax"] == "shifted"
    assert modes["op Tensor.mean"] == "native"               # a negative dim needs no shift


def test_a_native_squeeze_on_a_batch_of_one_keeps_its_batch_dimension():
    # x.squeeze() on one instance [1] -> []; natively on a batch [B, 1] -> [B], but [1, 1] -> [].
    batcher = phalanx.Batcher(lambda x: (x * 2).squeeze() + 1, cells=False)
    with torch.no_grad():
        batcher([torch.ones(1) * i for i in range(4)])           # the probe picks native
        assert kernel_modes(batcher)["op Tensor.squeeze"] == "native"
        got = batcher([torch.ones(1) * 5])                        # then a batch of one
    assert got[0].shape == () and float(got[0]) == 11.0
