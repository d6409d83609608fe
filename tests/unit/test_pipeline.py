"""Batcher.pipeline (runtime/pipeline.py): the next mini-batch is recorded on a worker thread while
the current one runs; results equal calling the Batcher in a loop (and the eager loop)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.data import synthetic
from phalanx.errors import InstanceError, PhalanxError
from phalanx.models import TreeLSTM
from tests.oracle import assert_close_structures
from tests.unit.test_fibers import Walker, inputs


def model_and_trees(seed: int, count: int):
    torch.manual_seed(seed)
    return TreeLSTM(30, 8, embed_dim=4), synthetic.random_trees(count, seed, 30)


def chunks(items, sizes):
    out, start = [], 0
    for size in sizes:
        out.append(items[start:start + size])
        start += size
    return out


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.integers(0, 9), min_size=0, max_size=5))
def test_pipeline_equals_the_eager_loop(seed, sizes):
    model, trees = model_and_trees(seed, sum(sizes))
    minibatches = chunks(trees, sizes)
    batcher = phalanx.Batcher(model, verify=True)
    with torch.no_grad():
        got = list(batcher.pipeline(minibatches))
        expected = [[model(t) for t in mb] for mb in minibatches]
    assert len(got) == len(minibatches)
    for g, e in zip(got, expected, strict=True):
        assert_close_structures(g, e)


def test_every_minibatch_but_the_first_is_recorded_ahead_without_gradients():
    model, trees = model_and_trees(0, 40)
    batcher = phalanx.Batcher(model)
    ahead = []
    with torch.no_grad():
        for _ in batcher.pipeline(chunks(trees, [10, 10, 10, 10])):
            ahead.append(batcher.stats.recorded_ahead)
            assert batcher.stats.instances == 10 and batcher.stats.nodes > 0
    assert ahead == [False, True, True, True]


def test_with_gradients_it_runs_one_minibatch_at_a_time_and_trains_as_the_loop():
    model, trees = model_and_trees(1, 24)
    reference = TreeLSTM(30, 8, embed_dim=4)
    reference.load_state_dict(model.state_dict())
    minibatches = chunks(trees, [8, 8, 8])
    batcher = phalanx.Batcher(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for results, mb in zip(batcher.pipeline(minibatches), minibatches, strict=True):
        assert not batcher.stats.recorded_ahead
        optimizer.zero_grad()
        torch.stack(results).sum().backward()
        optimizer.step()                        # the next mini-batch must see these parameters
        ref_optimizer.zero_grad()
        torch.stack([reference(t) for t in mb]).sum().backward()
        ref_optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_minibatch_recorded_ahead_under_another_mode_is_recorded_again():
    model, trees = model_and_trees(2, 12)
    batcher = phalanx.Batcher(model)
    stream = batcher.pipeline(chunks(trees, [6, 6]))
    with torch.no_grad():
        first = next(stream)                    # the second mini-batch is now recorded under no_grad
    second = next(stream)                       # requested with gradients on
    assert not batcher.stats.recorded_ahead
    assert all(r.requires_grad for r in second)
    torch.stack(second).sum().backward()
    assert model.leaf.gates.weight.grad is not None
    with torch.no_grad():
        assert_close_structures(first, [model(t) for t in trees[:6]])
    assert next(stream, None) is None


def test_a_model_changed_between_minibatches_is_seen_by_the_next_one():
    model, trees = model_and_trees(3, 12)
    batcher = phalanx.Batcher(model)
    stream = batcher.pipeline(chunks(trees, [6, 6]))
    with torch.no_grad():
        next(stream)
        replaced = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        parent = next(p for p in model.modules() if any(c is replaced for c in p.children()))
        name = next(n for n, c in parent.named_children() if c is replaced)
        setattr(parent, name, torch.nn.Linear(replaced.in_features, replaced.out_features))
        second = next(stream)
        assert not batcher.stats.recorded_ahead
        assert_close_structures(second, [model(t) for t in trees[6:]])


def test_an_error_surfaces_at_its_minibatch_and_the_batcher_stays_usable():
    model, trees = model_and_trees(4, 12)

    def fn(tree):
        if tree is trees[8]:
            raise ValueError("bad tree")
        return model(tree)

    batcher = phalanx.Batcher(fn)
    got = []
    with torch.no_grad(), pytest.raises((InstanceError, ValueError), match="bad tree"):
        for results in batcher.pipeline(chunks(trees, [4, 4, 4])):
            got.append(results)
    assert len(got) == 2
    with torch.no_grad():
        assert_close_structures(batcher(trees[:4]), [model(t) for t in trees[:4]])


def test_the_batcher_is_busy_while_its_pipeline_runs_and_free_after_close():
    model, trees = model_and_trees(5, 12)
    batcher = phalanx.Batcher(model)
    stream = batcher.pipeline(chunks(trees, [4, 4, 4]))
    with torch.no_grad():
        next(stream)
        with pytest.raises(PhalanxError, match="already running"):
            batcher(trees[:2])
        stream.close()
        assert len(batcher(trees[:2])) == 2


def test_models_with_decisions_run_their_rounds_in_the_pipeline():
    torch.manual_seed(6)
    model = Walker()
    xs = inputs(6, 15)
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        got = list(batcher.pipeline(chunks(xs, [5, 5, 5])))
        expected = [[model(x) for x in xs[k:k + 5]] for k in (0, 5, 10)]
    for g, e in zip(got, expected, strict=True):
        assert_close_structures(g, e)


def test_no_recording_ahead_when_the_op_type_table_is_due_for_eviction():
    model, trees = model_and_trees(7, 12)
    batcher = phalanx.Batcher(model, max_signatures=1)
    with torch.no_grad():
        for results in batcher.pipeline(chunks(trees, [4, 4, 4])):
            assert not batcher.stats.recorded_ahead
            assert len(results) == 4
