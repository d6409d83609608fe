"""api.py's result assembly (``_assemble``): one result per instance in the user's structure, the same
values, dtypes and shapes whether the result rows sit in one arena or several, and in training one
``select`` view per result, so a result may be modified in place as eagerly."""
import pytest
import torch
from torch import nn

import phalanx
from tests.oracle import assert_close_structures, assert_matches_eager


def _mixed(lin):
    def fn(x):
        n = int(x.shape[0])          # a plain number from the instance's shape: recorded, not forced
        h = lin(x)
        if n == 1:
            return h                                      # one lazy leaf
        if n == 2:
            return [h, h * 2, torch.tanh(h)]              # a flat list of lazy leaves
        if n == 3:
            return {"h": h, "pair": (h.sum(), h[0] * 1), "constant": torch.ones(1)}   # two arenas, concrete
        return ()                                         # no leaves at all
    return fn


@pytest.mark.parametrize("train", [False, True])
def test_results_of_every_shape_of_structure_match_eager(train):
    torch.manual_seed(0)
    lin = nn.Linear(2, 2)
    sizes = [2, 1, 3, 4, 2, 3, 1, 1, 4, 2]
    xs = [torch.randn(n, 2) for n in sizes]
    fn = _mixed(lin)
    assert_matches_eager(fn, xs, params=list(lin.parameters()), train=train)
    assert_matches_eager(fn, [x for x in xs if x.shape[0] == 2], params=list(lin.parameters()), train=train)
    assert_matches_eager(fn, [], params=list(lin.parameters()), train=train)


def test_results_in_one_arena_come_back_in_instance_order():
    torch.manual_seed(1)
    lin = nn.Linear(3, 3)

    def fn(xs):
        return [lin(x) for x in xs]     # every leaf one [3] row of one arena

    data = [[torch.randn(3) for _ in range(n)] for n in (3, 1, 0, 4)]
    with torch.no_grad():
        got = phalanx.Batcher(fn)(data)
    assert_close_structures(got, [fn(d) for d in data])
    assert [len(g) for g in got] == [3, 1, 0, 4]


def test_a_training_result_may_be_modified_in_place_and_backpropagates():
    torch.manual_seed(2)
    lin = nn.Linear(3, 3)

    def fn(xs):
        return [torch.tanh(lin(x)) for x in xs]

    data = [[torch.randn(3) for _ in range(n)] for n in (2, 3)]
    got = phalanx.Batcher(fn)(data)
    for r in got:
        for t in r:
            assert t.requires_grad and t._base is not None      # a select view of the flush's output
            t.mul_(3.0)                                         # as eagerly: allowed on a select view
    torch.stack([t for r in got for t in r]).pow(2).sum().backward()
    want_grads = torch.autograd.grad(torch.stack([t * 3.0 for d in data for t in fn(d)]).pow(2).sum(),
                                     list(lin.parameters()))
    for p, w in zip(lin.parameters(), want_grads, strict=True):
        torch.testing.assert_close(p.grad, w)


@pytest.mark.parametrize("train", [False, True])
def test_results_with_concrete_leaves_beside_rows_of_one_arena(train):
    # NOTE: [Result slots]: every lazy leaf in one arena, some instances' results also holding plain
    # tensors (and some holding no lazy leaf at all): each gets its rows in order, the rest as is.
    torch.manual_seed(3)
    lin = nn.Linear(2, 2)

    def fn(x):
        if x.shape[0] == 1:
            return {"constant": torch.ones(2)}
        return (lin(x[0]), torch.full((2,), 7.0), torch.tanh(lin(x[1])))

    xs = [torch.randn(n, 2) for n in (2, 1, 3, 2, 1)]
    assert_matches_eager(fn, xs, params=list(lin.parameters()), train=train)
