"""Caches are bounded: thousands of calls with ever new shapes, numbers and tensors keep the op-type
table, the interned avals and the cost of a call bounded."""
import gc

import torch
from torch import nn

import phalanx
from phalanx.ir import aval as aval_mod


def test_per_instance_leaf_tensors_that_require_grad_batch_as_one_op_type():
    w = nn.Linear(4, 4)

    @phalanx.cell
    def f(x):
        return torch.tanh(w(x))

    batcher = phalanx.Batcher(lambda x: f(x) * 2, lazy_inputs=False)
    for _ in range(100):
        xs = [torch.randn(4, requires_grad=True) for _ in range(8)]
        outs = batcher(xs)
        torch.stack(outs).sum().backward()
        assert batcher.stats.batches == 2 and batcher.stats.op_types == 2
        for x in xs:
            expected = torch.autograd.grad((torch.tanh(w(x)) * 2).sum(), x)[0]
            torch.testing.assert_close(x.grad, expected)
    assert len(batcher.table) == 2


def test_two_thousand_calls_with_growing_inputs_stay_bounded():
    lin = nn.Linear(3, 3)

    def fn(x):
        ones, scale = x                           # a new shape every call
        return lin(ones) * scale                  # a new static number every call

    batcher = phalanx.Batcher(fn, max_signatures=64)
    gc.collect()
    avals_before = len(aval_mod._INTERNED)
    for i in range(2000):
        instance = (torch.ones(1 + i, 3), 0.5 + i)
        out = batcher([instance, instance])
        assert batcher.stats.op_types == 3 and len(batcher.table) <= 64 + 3
        if i % 500 == 0:
            torch.testing.assert_close(out[0], fn(instance))
    gc.collect()
    assert len(aval_mod._INTERNED) - avals_before < 200
    assert len(batcher.table.by_key) <= 2 * (64 + 6)
