"""Ragged operands: one batch holds rows of every arity 0..8; segment sums and means equal the
per-row eager reduction, forward and backward."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.cells import segment_reduce
from phalanx.cells.ragged import pack, segment_ids


def eager(rows, reduce, dim):
    out = []
    for r in rows:
        if not r:
            out.append(torch.zeros(dim))
        else:
            s = torch.stack(r).sum(0)
            out.append(s / len(r) if reduce == "mean" else s)
    return torch.stack(out)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@settings(max_examples=25, deadline=None)
@given(arities=st.permutations(list(range(9))).flatmap(
    lambda p: st.lists(st.integers(0, 8), max_size=6).map(lambda extra: p + extra)), seed=st.integers(0, 2 ** 16))
def test_segment_reduce_equals_eager_for_arities_0_to_8_in_one_batch(reduce, arities, seed):
    gen = torch.Generator().manual_seed(seed)
    dim = 3
    rows = [[torch.randn(dim, generator=gen).requires_grad_() for _ in range(a)] for a in arities]
    values, offsets = pack(rows, like=torch.zeros(dim))
    values = values.detach().requires_grad_()
    got = segment_reduce(values, offsets, reduce)
    expected = eager(rows, reduce, dim)
    torch.testing.assert_close(got, expected)
    weights = torch.randn(got.shape, generator=gen)
    g_got, = torch.autograd.grad((got * weights).sum(), [values])
    leaves = [t for r in rows for t in r]
    g_expected = torch.autograd.grad((expected * weights).sum(), leaves)
    torch.testing.assert_close(g_got, torch.stack(g_expected))


def test_empty_batch_and_all_empty_rows():
    values, offsets = pack([], like=torch.zeros(2))
    assert segment_reduce(values, offsets).shape == (0, 2)
    values, offsets = pack([[], []], like=torch.zeros(2))
    assert torch.equal(segment_reduce(values, offsets, "mean"), torch.zeros(2, 2))


def test_segment_ids_and_bad_offsets():
    assert segment_ids(torch.tensor([0, 2, 3, 3, 6])).tolist() == [0, 0, 1, 3, 3, 3]
    with pytest.raises(ValueError, match="offsets"):
        segment_reduce(torch.zeros(4, 2), torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match="reduce"):
        segment_reduce(torch.zeros(1, 2), torch.tensor([0, 1]), "max")
