"""NOTE: [Stacked reads] (runtime/executor.py): a batched ``torch.stack`` reads each gathered operand
list straight into its slot of the output. Results must equal the per-instance oracle, for stacks
of values from earlier fiber rounds and of gathered values of the same round, along every dim."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.runtime import executor
from tests.oracle import assert_matches_eager

STEP = nn.Linear(5, 5)


def decode_and_stack(x, dim):
    """A decoder-like loop whose length depends on the values (fiber decisions), stacking every
    step's output at the end: each stacked value comes from a different round."""
    outs = []
    for _ in range(6):
        x = torch.tanh(STEP(x))
        outs.append(x)
        if x.sum().item() > 0.5:
            break
    return torch.stack(outs, dim=dim), torch.stack([outs[0], x * 2.0], dim=dim)


def _counting(monkeypatch) -> list:
    fused = []
    original = executor._stacked_reads

    def counting(step, arenas):
        out = original(step, arenas)
        fused.append(out is not None)
        return out

    monkeypatch.setattr(executor, "_stacked_reads", counting)
    return fused


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_stacks_of_values_from_earlier_rounds_match_eager(dim, monkeypatch):
    torch.manual_seed(dim + 2)
    instances = [torch.randn(5) for _ in range(9)]
    batcher = phalanx.Batcher(lambda x: decode_and_stack(x, dim), verify=True)
    assert_matches_eager(lambda x: decode_and_stack(x, dim), instances, batcher=batcher)
    fused = _counting(monkeypatch)
    assert_matches_eager(lambda x: decode_and_stack(x, dim), instances, batcher=batcher)   # kernels chosen: fused
    assert any(fused)


def test_stacks_within_one_round_and_of_one_instance_match_eager(monkeypatch):
    def fn(xs):
        a, b = torch.tanh(STEP(xs[0])), torch.sigmoid(STEP(xs[1]))
        return torch.stack([b, a, b]), torch.stack([a.unsqueeze(0), b.unsqueeze(0)], dim=2)

    torch.manual_seed(0)
    instances = [[torch.randn(5), torch.randn(5)] for _ in range(7)]
    batcher = phalanx.Batcher(fn, verify=True)
    assert_matches_eager(fn, instances, batcher=batcher)
    fused = _counting(monkeypatch)
    assert_matches_eager(fn, instances, batcher=batcher)
    assert_matches_eager(fn, instances[:1], batcher=batcher)
    assert any(fused)


def test_training_stacks_match_eager_gradients():
    torch.manual_seed(3)
    instances = [torch.randn(5) for _ in range(6)]
    assert_matches_eager(lambda x: decode_and_stack(x, 0), instances, params=list(STEP.parameters()), train=True)
