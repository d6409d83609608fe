"""rules/dims.py: reductions over every dim (``x.argmax()``, ``x.max()``, ``x.sum()``) run as one
native call over each flattened row, matching the per-instance oracle, outputs and gradients."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.rules.dims import shifted_call
from tests.oracle import assert_matches_eager


def kernel_modes(batcher):
    return {s.name: s.kernel.mode for s in batcher.table.sigs if s.kernel is not None}



def reductions(x):
    """One instance [3, 4] (or [4]) through every all-dims reduction with a rule."""
    y = torch.tanh(x) * 2.0
    return (y.argmax(), torch.argmin(y), y.max(), torch.min(y), y.sum(), torch.mean(y), y.prod(), y.std(),
            torch.var(y), y.amax(), (y > 0).any(), (y > -3).all(), y.norm(), torch.count_nonzero(y > 0),
            y.sum(dtype=torch.float64), y.sum(dim=None))


@pytest.mark.parametrize("shape", [(4,), (3, 4)])
@pytest.mark.parametrize("count", [1, 5])
def test_all_dims_reductions_match_eager_and_run_natively(shape, count):
    torch.manual_seed(count)
    instances = [torch.randn(shape) for _ in range(count)]
    batcher = assert_matches_eager(reductions, instances)
    modes = kernel_modes(batcher)
    for name in ("op Tensor.argmax", "op torch.argmin", "op Tensor.max", "op torch.min", "op Tensor.sum",
                 "op torch.mean", "op Tensor.prod", "op Tensor.std", "op Tensor.any", "op Tensor.norm"):
        assert modes[name] == "shifted", (name, modes[name])


def test_gradients_through_all_dims_reductions_match_eager():
    lin = nn.Linear(4, 5)

    def fn(x):
        h = torch.tanh(lin(x))
        return h.max() + h.sum() * 0.5 + h.mean() + h.std() + h.norm(), h.argmax()

    torch.manual_seed(0)
    instances = [torch.randn(4) for _ in range(6)]
    assert_matches_eager(fn, instances, params=list(lin.parameters()), train=True)


def test_greedy_choice_of_a_decoder_is_one_native_argmax_per_round():
    # The NMT decoder's ``logits.argmax().item()`` is a fiber decision: its argmax is one native
    # call over every instance's logits, not a vmap.
    out = nn.Linear(4, 7)

    def decode(x):
        words = []
        for _ in range(3):
            x = torch.tanh(out(x))[:4]
            words.append(x.argmax().item())
        return torch.tensor(words)

    torch.manual_seed(1)
    instances = [torch.randn(4) for _ in range(6)]
    batcher = assert_matches_eager(decode, instances)
    assert kernel_modes(batcher)["op Tensor.argmax"] == "shifted"
    assert batcher.stats.fibers.decision_rounds == 3


def test_calls_that_are_not_all_dims_reductions_get_no_flattening_rule():
    op = object()       # a per-instance operand placeholder, as the recorder passes them
    assert shifted_call(torch.max, (op, op), {}) == (torch.max, (op, op), {})     # elementwise: unchanged
    assert shifted_call(torch.Tensor.argmax, (op,), {"keepdim": True}) is None
    assert shifted_call(torch.Tensor.norm, (op,), {"p": 1}) is None
    assert shifted_call(torch.Tensor.sum, (op, 0), {}) == (torch.Tensor.sum, (op, 1), {})
    assert shifted_call(torch.Tensor.argmax, (op,), {"dim": -1}) == (torch.Tensor.argmax, (op,), {"dim": -1})
    func, args, kwargs = shifted_call(torch.Tensor.max, (op,), {})
    assert args == (op,) and kwargs == {}
    torch.testing.assert_close(func(torch.tensor([[1.0, 5.0], [7.0, 2.0]])), torch.tensor([5.0, 7.0]))


def test_reductions_over_one_dim_that_return_values_and_indices_match_eager():
    def fn(x):
        values, indices = x.max(0)
        low = torch.min(x, dim=-1)
        return values, indices, low.values, low.indices, x.argmax(1), torch.std(x, 0)

    torch.manual_seed(4)
    batcher = assert_matches_eager(fn, [torch.randn(3, 4) for _ in range(5)])
    assert kernel_modes(batcher)["op Tensor.max"] == "shifted"      # dim 0 moved past the batch dim
