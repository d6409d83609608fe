"""Reused recordings (frontend/reuse.py, NOTE: [Recording reuse]): an instance object run again
replays its recording, and the results (outputs and gradients) stay those of the eager loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.errors import PhalanxError
from phalanx.frontend.reuse import _append_runs, _renumber
from phalanx.models import BiLSTMTagger, TreeLSTM
from phalanx.data import synthetic
from tests.oracle import assert_matches_eager
from tests.property.test_zoo_oracle import MODELS, _forward_fn, instances, model
from tests.unit.test_phase import EncodeDecode, sentences

VOCAB = 30


def trees(seed, sizes):
    rng = synthetic.as_generator(seed)
    return [synthetic.random_binary_tree(n, rng, VOCAB) for n in sizes]


def treelstm():
    torch.manual_seed(0)
    return TreeLSTM(VOCAB, hidden=8, embed_dim=5)


def test_a_second_call_replays_every_instance_and_matches_eager():
    m = treelstm()
    xs = trees(0, [1, 4, 7, 2, 5])
    b = phalanx.Batcher(m, reuse=True, verify=True)
    assert_matches_eager(m, xs, batcher=b)
    assert b.stats.reused == 0 and len(b.reuse) == len(xs)
    assert_matches_eager(m, xs, batcher=b)
    assert b.stats.reused == len(xs)
    assert b.stats.nodes == phalanx.Batcher(m).record(xs).num_nodes


def test_replayed_and_recorded_instances_mix_in_any_order_with_gradients():
    m = treelstm()
    seen, new = trees(1, [3, 6, 1, 4]), trees(2, [5, 2, 7])
    b = phalanx.Batcher(m.loss, reuse=True, verify=True)
    labelled = [(t, i % 3) for i, t in enumerate(seen)]
    b(labelled)
    mixed = [labelled[2], (new[0], 1), labelled[0], (new[1], 0), (new[2], 2), labelled[3], labelled[2]]
    assert_matches_eager(m.loss, mixed, params=list(m.parameters()), train=True, batcher=b)
    assert b.stats.reused == 4          # labelled[2] twice, labelled[0], labelled[3]


def test_every_zoo_model_replays_to_the_eager_results():
    for name in MODELS:
        m = model(name)
        fn = _forward_fn(name, m)
        xs = instances(name, 3, [2, 5, 1, 4])
        b = phalanx.Batcher(fn, reuse=True, verify=True)
        b(xs)
        assert_matches_eager(fn, xs + xs[:2], batcher=b)
        assert b.stats.reused == len(xs) + 2, name
        trainer = phalanx.Batcher(m.loss, reuse=True, verify=True)
        trainer(xs)
        assert_matches_eager(m.loss, xs, params=list(m.parameters()), train=True, batcher=trainer)
        assert trainer.stats.reused == len(xs), name


def test_tagger_with_cells_replays_split_chains():
    torch.manual_seed(0)
    m = BiLSTMTagger(VOCAB, hidden=8, embed_dim=5)
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, VOCAB, size=n).tolist() for n in (3, 1, 6, 4)]
    b = phalanx.Batcher(m, reuse=True, cells=True, verify=True)
    b(xs)
    assert_matches_eager(m, list(reversed(xs)), batcher=b)
    assert b.stats.reused == len(xs)


def test_phases_are_replayed_with_their_runs():
    torch.manual_seed(0)
    m = EncodeDecode()
    xs = sentences(4, 5)
    b = phalanx.Batcher(m, reuse=True, verify=True)
    b(xs)
    assert_matches_eager(m, [xs[3], xs[0], xs[4]], params=list(m.parameters()), train=True, batcher=b)
    assert b.stats.reused == 3
    graph_phases = phalanx.Batcher(m).record([xs[3], xs[0], xs[4]]).node_phase
    assert len(np.unique(graph_phases)) == 3


def test_a_structure_change_or_other_training_flags_record_again():
    m = treelstm()
    xs = trees(5, [3, 4])
    b = phalanx.Batcher(m, reuse=True, verify=True)
    b(xs)
    m.train(not m.training)             # other training flags: record again, then reuse those
    assert_matches_eager(m, xs, batcher=b)
    assert b.stats.reused == 0
    assert_matches_eager(m, xs, batcher=b)
    assert b.stats.reused == 2
    m.internal = type(m.internal)(8)    # a replaced cell: the table is cleared, blocks are stale
    assert_matches_eager(m, xs, batcher=b)
    assert b.stats.reused == 0


def test_fiber_calls_are_not_cached():
    lin = torch.nn.Linear(3, 3)

    def decide(x):
        h = torch.tanh(lin(x))
        if h.sum() > 0:                  # a decision on a lazy value: this call runs fibers
            h = torch.tanh(lin(h))
        return h

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, generator=gen) for _ in range(4)]
    b = phalanx.Batcher(decide, reuse=True)
    b(xs)
    assert len(b.reuse) == 0
    assert_matches_eager(decide, xs, batcher=b)
    assert b.stats.reused == 0


def test_replayed_instances_join_a_call_whose_other_instances_decide():
    lin = torch.nn.Linear(3, 3)

    def maybe_decide(example):
        x, decides = example
        h = torch.tanh(lin(x))
        if decides and h.sum() > 0:      # only flagged instances force a value (fibers)
            h = torch.tanh(lin(h))
        return h

    gen = torch.Generator().manual_seed(1)
    plain = [(torch.randn(3, generator=gen), False) for _ in range(3)]
    b = phalanx.Batcher(maybe_decide, reuse=True)
    b(plain)
    assert len(b.reuse) == 3
    mixed = [plain[1], (torch.randn(3, generator=gen), True), plain[0], (-torch.ones(3), True)]
    assert_matches_eager(maybe_decide, mixed, batcher=b)
    assert b.stats.reused == 2 and b.stats.fibers.decisions == [0, 1, 0, 1]
    assert_matches_eager(maybe_decide, mixed, params=list(lin.parameters()), train=True, batcher=b)


def test_shared_objects_are_never_keys_and_the_cache_is_bounded():
    leaf = torch.nn.Linear(1, 2)

    def fn(x):
        return leaf(torch.full((1,), float(x))) if isinstance(x, int) else leaf(x)

    b = phalanx.Batcher(fn, reuse=2)
    b([1, 2, 3])
    assert len(b.reuse) == 0            # small ints are shared objects, not instances
    xs = [torch.randn(1) for _ in range(5)]
    b(xs)
    assert len(b.reuse) == 2
    assert_matches_eager(fn, xs, batcher=b)
    assert b.stats.reused == 2          # the two most recently stored


@pytest.mark.parametrize("bad", [0, -3, 2.5, "yes"])
def test_a_bad_reuse_bound_is_a_clear_error(bad):
    with pytest.raises(PhalanxError, match="reuse"):
        phalanx.Batcher(lambda x: x, reuse=bad)


def test_renumbered_op_types_are_mapped():
    node_sig = np.array([4, 7, 4, 9])
    assert _renumber(node_sig, (4, 7, 9), (0, 1, 2)).tolist() == [0, 1, 0, 2]


def test_runs_are_kept_as_set_instance_keeps_them():
    runs = [(0, 0)]
    _append_runs(runs, 3, 0)            # same value: nothing
    _append_runs(runs, 3, 1)
    _append_runs(runs, 3, 2)            # a zero-length run is replaced
    _append_runs(runs, 5, 0)
    assert runs == [(0, 0), (3, 2), (5, 0)]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=0, max_size=6), st.lists(st.integers(0, 5), max_size=8), st.booleans())
def test_any_mix_of_seen_and_new_trees_matches_eager(sizes, picks, cells):
    m = _shared_model()
    seen = trees(7, sizes)
    b = phalanx.Batcher(m, reuse=True, cells=cells, verify=True)
    b(seen)
    fresh = trees(8, [3, 1])
    mixed = [seen[p] if p < len(seen) else fresh[p % 2] for p in picks]
    assert_matches_eager(m, mixed, batcher=b)
    assert b.stats.reused == sum(p < len(seen) for p in picks)


_MODEL: list = []


def _shared_model():
    if not _MODEL:
        _MODEL.append(treelstm())
    return _MODEL[0]


def test_evicted_op_types_record_again_and_renumbered_ones_replay():
    lin = torch.nn.Linear(1, 1)

    def fn(x):                          # one op type per length: tanh over a tensor of that length
        return torch.tanh(lin(x.unsqueeze(-1))).sum(0)

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=gen) for n in (1, 2, 3, 4, 5, 6)]
    b = phalanx.Batcher(fn, reuse=True, verify=True)
    b(xs)
    b(xs[-2:])                          # used most recently: their op types survive the eviction
    recent = sum(s.last_call == b.table.calls for s in b.table.sigs)
    assert len(b.table.sigs) > 2 * recent
    b.table.max_signatures = 2 * recent         # the next call keeps exactly those
    before = {id(s): s.sid for s in b.table.sigs}
    assert_matches_eager(fn, xs, batcher=b)     # evicts the least recently used half first
    assert b.stats.reused == 2
    assert any(before.get(id(s), s.sid) != s.sid for s in b.table.sigs), "no op type was renumbered"


def test_a_graph_takes_one_splice():
    m = treelstm()
    xs = trees(9, [2, 3])
    b = phalanx.Batcher(m, reuse=True)
    b(xs)
    from phalanx.frontend.recorder import Recorder

    rec = Recorder(b.table)
    b.reuse.begin_call(b.table)
    hits = [(i, b.reuse.lookup(x, b.table)) for i, x in enumerate(xs)]
    b.reuse.replay(rec, hits, [None, None])
    with pytest.raises(PhalanxError, match="one splice"):
        b.reuse.replay(rec, hits, [None, None])


# *** NOTE: [Plan reuse]: the same mini-batch again runs its earlier plan ***

def test_the_same_mini_batch_again_reuses_its_plan_and_matches_eager():
    m = treelstm()
    xs = trees(11, [1, 4, 7, 2])
    b = phalanx.Batcher(m, reuse=True, verify=True)
    b(xs)
    assert not b.stats.plan_reused
    for _ in range(2):
        assert_matches_eager(m, xs, batcher=b)
        assert b.stats.plan_reused and b.stats.reused == len(xs)
        assert b.stats.schedule_s == 0 and b.stats.plan_s == 0
    assert b.stats.batches > 0 and b.stats.nodes == phalanx.Batcher(m).record(xs).num_nodes



def _tagged(seed: int, lengths) -> list:
    """(word ids, tag ids) sentences of the given lengths."""
    rng = np.random.default_rng(seed)
    return [(w := rng.integers(0, VOCAB, size=n).tolist(), rng.integers(0, 5, size=len(w)).tolist())
            for n in lengths]

def test_reused_plans_train_and_follow_optimizer_steps():
    torch.manual_seed(0)
    m = BiLSTMTagger(VOCAB, hidden=8, embed_dim=5)
    xs = _tagged(3, (3, 1, 5))
    b = phalanx.Batcher(m.loss, reuse=True, cells=True, verify=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for step in range(3):
        # each call must see the parameters the previous optimizer step left (hoisted values too)
        assert_matches_eager(m.loss, xs, params=list(m.parameters()), train=True, batcher=b)
        assert b.stats.plan_reused == (step > 0)
        opt.zero_grad()
        torch.stack([t.sum() for r in b(xs) for t in r]).sum().backward()
        opt.step()


def test_another_order_subset_flags_policy_or_structure_plans_again():
    m = treelstm()
    xs = trees(12, [3, 5, 2])
    b = phalanx.Batcher(m, reuse=True, verify=True)
    b(xs)
    for other in (list(reversed(xs)), xs[:2], xs + xs[:1]):
        assert_matches_eager(m, other, batcher=b)
        assert not b.stats.plan_reused and b.stats.reused == len(other)
    b(xs)
    assert b.stats.plan_reused
    m.train(not m.training)             # other training flags: recorded again, then planned again
    assert_matches_eager(m, xs, batcher=b)
    assert not b.stats.plan_reused
    b.policy = phalanx.schedule.make_policy("agenda")
    assert_matches_eager(m, xs, batcher=b)
    assert not b.stats.plan_reused and b.stats.policy == "agenda"
    m.internal = type(m.internal)(8)    # a replaced cell clears the table: the plan is stale
    assert_matches_eager(m, xs, batcher=b)
    assert not b.stats.plan_reused and b.stats.reused == 0


def test_plans_are_bounded_optional_and_never_made_from_fibers_or_uncached_instances():
    m = treelstm()
    batches = [trees(13 + i, [2, 3]) for i in range(3)]
    b = phalanx.Batcher(m, reuse=True)
    b.reuse.max_calls = 2
    for xs in batches:
        b(xs)
    assert len(b.reuse.calls) == 2
    b(batches[0])                       # the least recently used plan was dropped
    assert not b.stats.plan_reused
    off = phalanx.Batcher(m, reuse=True, reuse_plans=False)
    off(batches[1]), off(batches[1])
    assert off.stats.reused == 2 and not off.stats.plan_reused and not off.reuse.calls
    bounded = phalanx.Batcher(m, reuse=1)   # one cached instance: a call of two is never all cached
    bounded(batches[2]), bounded(batches[2])
    assert not bounded.stats.plan_reused
    lin = torch.nn.Linear(3, 3)

    def decide(x):
        h = torch.tanh(lin(x))
        return torch.tanh(lin(h)) if h.sum() > 0 else h

    xs = [torch.randn(3) for _ in range(3)]
    fibers = phalanx.Batcher(decide, reuse=True)
    fibers(xs)
    assert_matches_eager(decide, xs, batcher=fibers)
    assert not fibers.stats.plan_reused and not fibers.reuse.calls


def test_evicted_or_renumbered_op_types_invalidate_a_plan():
    lin = torch.nn.Linear(1, 1)

    def fn(x):                          # one op type per length
        return torch.tanh(lin(x.unsqueeze(-1))).sum(0)

    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(n, generator=gen) for n in (1, 2, 3, 4, 5, 6)]
    b = phalanx.Batcher(fn, reuse=True, verify=True)
    b(xs)
    b(xs[-2:])
    recent = sum(s.last_call == b.table.calls for s in b.table.sigs)
    b.table.max_signatures = 2 * recent         # the next call evicts and renumbers
    before = {id(s): s.sid for s in b.table.sigs}
    assert_matches_eager(fn, xs[-2:], batcher=b)
    assert any(before.get(id(s), s.sid) != s.sid for s in b.table.sigs), "no op type was renumbered"
    assert not b.stats.plan_reused      # its op types survived, renumbered
    assert_matches_eager(fn, xs, batcher=b)
    assert not b.stats.plan_reused      # some of its op types were evicted
    b.table.max_signatures = 4096
    assert_matches_eager(fn, xs, batcher=b)
    assert b.stats.plan_reused


def test_an_empty_call_with_reuse():
    m = treelstm()
    b = phalanx.Batcher(m, reuse=True)
    assert b([]) == [] and b([]) == []


@pytest.mark.parametrize("cells", [False, True])
def test_every_zoo_model_reruns_its_plan_to_the_eager_results(cells):
    for name in MODELS:
        m = model(name)
        fn = _forward_fn(name, m)
        xs = instances(name, 4, [3, 1, 4])
        b = phalanx.Batcher(fn, reuse=True, cells=cells, verify=True)
        b(xs)
        for _ in range(2):
            assert_matches_eager(fn, xs, batcher=b)
            assert b.stats.plan_reused, name
        trainer = phalanx.Batcher(m.loss, reuse=True, cells=cells, verify=True)
        trainer(xs)
        assert_matches_eager(m.loss, xs, params=list(m.parameters()), train=True, batcher=trainer)
        assert trainer.stats.plan_reused, name


def test_a_plan_made_under_inference_mode_never_serves_a_training_call():
    # its index and number tensors are inference tensors, which autograd may not save
    torch.manual_seed(0)
    m = BiLSTMTagger(VOCAB, hidden=8, embed_dim=5)
    xs = _tagged(4, (3, 1, 5))
    for cells in (False, True):
        b = phalanx.Batcher(m.loss, reuse=True, cells=cells, verify=True)
        with torch.inference_mode():
            b(xs), b(xs)
        assert b.stats.plan_reused
        assert_matches_eager(m.loss, xs, params=list(m.parameters()), train=True, batcher=b)
        assert not b.stats.plan_reused
        assert_matches_eager(m.loss, xs, params=list(m.parameters()), train=True, batcher=b)
        assert b.stats.plan_reused
