"""Fibers (runtime/fibers.py): per-instance code that branches on its own lazy values stays batched,
matches the eager loop (outputs and gradients), and flushes max-not-sum rounds."""
from __future__ import annotations

import gc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.errors import DataDependentError, InstanceError
from tests.oracle import assert_matches_eager


class Walker(torch.nn.Module):
    """Steps a state until a data-dependent stop (a ``while`` on a comparison), at most ``limit``."""

    def __init__(self, dim=4, limit=6):
        super().__init__()
        self.step = torch.nn.Linear(dim, dim)
        self.limit = limit

    def forward(self, x):
        h, n = x, 0
        while h.sum() > 0 and n < self.limit:
            h = torch.tanh(self.step(h)) + 0.1
            n += 1
        return h * (n + 1)


def decisions_of(model, x) -> int:
    """How many values the eager model forces for ``x`` (the stop test of Walker)."""
    h, n, count = x, 0, 0
    with torch.no_grad():
        while True:
            count += 1
            if not (h.sum() > 0 and n < model.limit):
                return count
            h = torch.tanh(model.step(h)) + 0.1
            n += 1


def inputs(seed: int, count: int, dim=4):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, generator=gen) + 0.3 for _ in range(count)]


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**16), st.integers(0, 7), st.sampled_from(["depth", "agenda"]))
def test_walker_matches_eager(seed, count, policy):
    torch.manual_seed(seed)
    model = Walker()
    xs = inputs(seed, count)
    assert_matches_eager(model, xs, policy=policy)
    assert_matches_eager(model, xs, params=list(model.parameters()), policy=policy, train=True)


def test_rounds_are_the_max_not_the_sum_of_decisions():
    torch.manual_seed(3)
    model = Walker()
    xs = inputs(5, 9)
    expected = [decisions_of(model, x) for x in xs]
    assert len(set(expected)) > 1, "instances should take different numbers of decisions"
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        batcher(xs)
    fs = batcher.stats.fibers
    assert fs.decisions == expected
    assert fs.decision_rounds == max(expected)
    assert fs.rounds == max(expected) + 1          # plus the flush of the code after the last decision
    assert len(fs.round_batches) == len(fs.round_nodes) == fs.rounds
    assert sum(fs.round_nodes) == batcher.stats.nodes


def test_no_decisions_is_one_round():
    lin = torch.nn.Linear(3, 3)
    batcher = phalanx.Batcher(lambda x: torch.tanh(lin(x)))
    with torch.no_grad():
        batcher([torch.randn(3) for _ in range(4)])
    assert batcher.stats.fibers.rounds == 1 and batcher.stats.fibers.decisions == [0] * 4


class Conversions(torch.nn.Module):
    """Every suspension point: item, tolist, int, float, use as an index, bool of a comparison."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.proj = torch.nn.Linear(3, 5)

    def forward(self, x):
        scores = self.proj(x)
        k = int(scores.argmax())                    # __int__
        picked = self.emb.weight[scores.argmax()]   # a lazy index into a parameter: recorded, no decision
        weight = [0.5, 1.5, 2.0, -1.0, 3.0][scores.argmin()]   # __index__ of a 0-d int value
        scale = float(scores.max().detach()) + scores.min().detach().item() * weight
        listed = scores.detach().tolist()
        bonus = 1.0 if scores[0] > scores[1] else -1.0
        return picked * scale + self.emb(torch.tensor(k)) * bonus + sum(listed)


def test_every_suspension_point_matches_eager():
    torch.manual_seed(0)
    model = Conversions()
    xs = [torch.randn(3) for _ in range(6)]
    assert_matches_eager(model, xs)
    assert_matches_eager(model, xs, params=list(model.parameters()), train=True)


class Grower(torch.nn.Module):
    """Recursion with a decision per node: a node gets children while the model says so (nested
    decisions inside recursion, different numbers per instance)."""

    def __init__(self, dim=4):
        super().__init__()
        self.child = torch.nn.Linear(dim, dim)
        self.stop = torch.nn.Linear(dim, 1)

    def grow(self, h, depth):
        out = h
        if depth < 3 and self.stop(h)[0] > 0:
            for side in (0.5, -0.5):
                out = out + self.grow(torch.tanh(self.child(h) + side), depth + 1)
        return out

    def forward(self, x):
        return self.grow(x, 0)


def test_recursive_generation_matches_eager():
    torch.manual_seed(1)
    model = Grower()
    xs = [torch.randn(4) for _ in range(8)]
    assert_matches_eager(model, xs)
    batcher = assert_matches_eager(model, xs, params=list(model.parameters()), train=True)
    assert batcher.stats.fibers.decision_rounds == max(batcher.stats.fibers.decisions)


class TeacherForced(torch.nn.Module):
    """Training through decisions: a teacher-forced loss at every step, plus control flow sampled
    from the model (stop when the model's own stop score says so)."""

    def __init__(self, vocab=6, dim=5):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(2 * dim, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, example):
        targets, = example
        h = torch.zeros(self.mix.out_features)
        loss = torch.zeros(())
        prev = torch.tensor(0)
        for t in targets:
            h = torch.tanh(self.mix(torch.cat([self.emb(prev), h])))
            logits = self.out(h)
            loss = loss + torch.nn.functional.cross_entropy(logits.unsqueeze(0), t.view(1))
            if logits.argmax() == 0:            # the model's own decision ends the sequence
                break
            prev = t
        return loss


def test_profile_and_verify_cover_every_round():
    torch.manual_seed(3)
    model = Walker()
    batcher = phalanx.Batcher(model, profile=True, verify=True)
    xs = inputs(6, 5)
    assert_matches_eager(model, xs, params=list(model.parameters()), train=True, batcher=batcher)
    per_op = batcher.stats.per_op
    assert sum(row["nodes"] for row in per_op.values()) == batcher.stats.nodes
    assert batcher.stats.backward_s > 0 and batcher.stats.lower_bound <= batcher.stats.batches


def test_teacher_forced_loss_with_sampled_stop_trains():
    torch.manual_seed(2)
    model = TeacherForced()
    gen = torch.Generator().manual_seed(4)
    xs = [(torch.randint(1, 6, (int(n),), generator=gen),) for n in torch.randint(1, 7, (7,), generator=gen)]
    assert_matches_eager(model, xs, params=list(model.parameters()), train=True)


def test_exception_in_one_instance_names_it_and_next_run_works():
    lin = torch.nn.Linear(3, 3)

    def fn(x):
        h = torch.tanh(lin(x))
        if h.sum() > 100:       # everyone suspends here first
            return h
        if x[0].item() == 7.0:  # instance 2 fails after a decision, while others are suspended
            raise ValueError("bad instance")
        return h + 1

    xs = [torch.randn(3) for _ in range(5)]
    xs[2] = torch.tensor([7.0, 0.0, 0.0])
    batcher = phalanx.Batcher(fn)
    with pytest.raises(InstanceError) as info:
        with torch.no_grad():
            batcher(xs)
    assert info.value.instance == 2 and "instance 2" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    xs[2] = torch.randn(3)
    assert_matches_eager(fn, xs, batcher=batcher)


def test_failed_run_unwinds_its_fibers_at_once():
    lin = torch.nn.Linear(3, 3)
    unwound = []

    def fn(x):
        try:
            with phalanx.phase("fail-test"):
                h = torch.tanh(lin(x))
                if h.sum() > 100:
                    return h
                if x[0].item() == 7.0:          # instance 0 fails while 1..3 wait to be resumed
                    raise ValueError("bad")
                return h
        finally:
            unwound.append(True)

    xs = [torch.tensor([7.0, 0.0, 0.0])] + [torch.randn(3) for _ in range(3)]
    with pytest.raises(InstanceError):
        with torch.no_grad():
            phalanx.Batcher(fn)(xs)
    assert len(unwound) == 4        # every fiber ran its cleanup before the call returned
    assert_matches_eager(lambda x: torch.tanh(lin(x)), xs)


def test_record_without_fibers_explains():
    lin = torch.nn.Linear(3, 3)

    def fn(x):
        return lin(x) if lin(x).sum() > 0 else -lin(x)

    with pytest.raises(DataDependentError, match="bool"):
        phalanx.Batcher(fn).record([torch.randn(3)])


def test_five_thousand_instances():
    torch.manual_seed(0)
    model = Walker(dim=2, limit=3)
    xs = inputs(9, 5000, dim=2)
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        got = batcher(xs)
        expected = [model(x) for x in xs[:50]]
    assert len(got) == 5000
    for g, e in zip(got[:50], expected, strict=True):
        torch.testing.assert_close(g, e)
    assert batcher.stats.fibers.decision_rounds == max(batcher.stats.fibers.decisions) <= 4


def test_collector_is_paused_during_a_call_and_restored_after(monkeypatch):
    """NOTE: [Collector paused]: automatic gc is off while instances record and while the flush
    runs, back as it was after, also when the call fails, and left off when the user had it off."""
    import phalanx.api as api

    lin = torch.nn.Linear(3, 3)
    seen, flushing = [], []
    real_run = api.run_inference

    def run(*args, **kwargs):
        flushing.append(gc.isenabled())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(api, "run_inference", run)

    def fn(x):
        seen.append(gc.isenabled())
        if x.sum() > 100:
            raise ValueError("boom")
        return lin(x)

    xs = [torch.randn(3) for _ in range(3)]
    assert gc.isenabled()
    with torch.no_grad():
        phalanx.Batcher(fn)(xs)
    assert seen == [False] * 3 and gc.isenabled()
    with torch.no_grad():      # no decision: recorded, then one flush after the fibers end
        phalanx.Batcher(lambda x: lin(x))(xs)
    assert flushing == [False] and gc.isenabled()
    with pytest.raises(InstanceError), torch.no_grad():
        phalanx.Batcher(fn)([torch.full((3,), 50.0)])
    assert gc.isenabled()
    gc.disable()
    try:
        with torch.no_grad():
            phalanx.Batcher(fn)(xs)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_inference_results_are_rows_of_their_own_round():
    """Inference keeps each round's arenas (no copy): results stay correct after later calls, and
    an in-place change to one result leaves the other instances' results alone."""
    torch.manual_seed(4)
    model = Walker()
    batcher = phalanx.Batcher(model)
    xs, others = inputs(6, 6), inputs(7, 6)
    with torch.no_grad():
        got = batcher(xs)
        expected = [model(x) for x in xs]
        batcher(others)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    got[0].mul_(0)
    for g, e in zip(got[1:], expected[1:], strict=True):
        torch.testing.assert_close(g, e)


def test_value_read_every_round_matches_eager():
    """A value of round 0 read by every later round (an encoder memory) and a list of per-round
    values stacked at the end: outputs and gradients equal the eager loop's."""
    torch.manual_seed(5)
    lin = torch.nn.Linear(4, 4)

    def fn(x):
        memory = torch.tanh(lin(x))
        h, steps = memory, []
        while h.sum() > -1 and len(steps) < 4:
            h = torch.tanh(lin(h) + memory)
            steps.append(h)
        return torch.stack(steps) if steps else memory

    xs = inputs(8, 7)
    assert_matches_eager(fn, xs)
    assert_matches_eager(fn, xs, params=list(lin.parameters()), train=True)


def test_a_call_releases_its_rounds_arenas_when_it_returns(monkeypatch):
    """Only the arenas the results live in outlast the call (the batcher's stats keep each round's
    graph for the lower bound, but not the row views that would pin every arena of the call)."""
    import weakref

    from phalanx.runtime import fibers

    arenas = []
    original = fibers.RoundResult.__init__

    def keeping(self, graph, value_row, value_arena, round_arenas):
        original(self, graph, value_row, value_arena, round_arenas)
        arenas.extend(weakref.ref(a) for a in round_arenas)

    monkeypatch.setattr(fibers.RoundResult, "__init__", keeping)
    torch.manual_seed(6)
    lin = torch.nn.Linear(4, 4)

    def fn(x):
        steps = []
        while len(steps) < 4:
            x = torch.tanh(lin(x))
            steps.append(x)
            if x.sum() > 1:
                break
        return torch.stack(steps)

    batcher = phalanx.Batcher(fn)
    xs = inputs(9, 6)
    with torch.no_grad():
        got = batcher(xs)
        expected = [fn(x) for x in xs]
    gc.collect()
    alive = [r() for r in arenas if r() is not None]
    assert batcher.stats.fibers.rounds >= 3 and len(arenas) >= 6
    assert all(any(g.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() for g in got) for a in alive)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_round_result_row_views_and_items():
    """Row views of a flushed round: tagged with (arena, row) for the executor's one index_select,
    made once each, for small arenas (one unbind) and large ones (row by row) alike; ``item`` reads
    a 0-d arena as Python numbers and anything else through the tensor."""
    import numpy as np

    from phalanx.runtime import fibers

    small, large, words = torch.randn(5, 3), torch.randn(fibers._UNBIND_ROWS + 7, 3), torch.tensor([4, 9, 2])
    vectors = torch.randn(2, 1)
    # values: 0-1 in small (rows 3, 0), 2-3 in large (rows 260, 1), 4 in words (row 1), 5 in vectors
    rr = fibers.RoundResult(None, np.array([3, 0, 260, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 3]),
                            [small, large, words, vectors])
    for vid, (arena, row) in enumerate([(small, 3), (small, 0), (large, 260), (large, 1)]):
        view = rr.value(vid)
        assert view._phalanx_origin[0] is arena and view._phalanx_origin[1] == row
        assert view.untyped_storage().data_ptr() == arena.untyped_storage().data_ptr()
        torch.testing.assert_close(view, arena[row])
        assert rr.value(vid) is view
    assert rr.item(4) == 9 and type(rr.item(4)) is int
    assert rr.item(5) == vectors[1, 0].item()


def _mixed_sources(lin):
    """Each instance ends by reading a value chosen by its own decisions: its round-0 state, its
    last state (of a later round) or a concrete tensor, so one operand list of the last flushes
    mixes rounds, arenas and concrete tensors (NOTE: [Stale operand lists])."""

    def fn(x):
        first = torch.tanh(lin(x))
        h, n = first, 0
        while h.sum() > -1 and n < 3:
            h = torch.tanh(lin(h))
            n += 1
        src = first if n % 2 == 0 else h
        if x[0] > 0.9:
            src = torch.full((4,), 0.5)
        return lin(src) + h

    return fn


def test_stale_operand_lists_match_eager(monkeypatch):
    """In inference an operand list of stale values of ONE round arena is read from that arena with
    no row view made (two numpy lookups); lists mixing rounds, arenas or concrete tensors fall back
    to row views. Either way outputs equal the eager loop's, and training is unchanged."""
    from phalanx.runtime import fibers

    made = []
    original = fibers.RoundResult.value

    def counting(self, vid):
        made.append(vid)
        return original(self, vid)

    monkeypatch.setattr(fibers.RoundResult, "value", counting)
    torch.manual_seed(9)
    lin = torch.nn.Linear(4, 4)

    def uniform(x):
        memory = torch.tanh(lin(x))
        h, n = memory, 0
        while h.sum() > -1 and n < 3:
            h = torch.tanh(lin(h) + memory)
            n += 1
        return h

    batcher = assert_matches_eager(uniform, inputs(10, 9))
    assert batcher.stats.fibers.rounds >= 3 and made == []        # every list: one arena of one round

    fn = _mixed_sources(lin)
    xs = inputs(11, 12) + [torch.tensor([1.0, 0.2, 0.3, 0.4])]
    batcher = assert_matches_eager(fn, xs)
    assert made, "some operand list mixes rounds or concrete tensors: resolved row by row"
    assert_matches_eager(fn, xs, params=list(lin.parameters()), train=True)
    assert_matches_eager(fn, [])
    assert_matches_eager(fn, xs[:1])


def test_stale_value_of_a_finished_run_is_refused():
    """A lazy value kept from an earlier call is not a stale value of this one: a clear error."""
    lin = torch.nn.Linear(4, 4)
    kept = []

    def fn(x):
        h = lin(x)
        if h.sum() > 100:           # one decision: h is a stale value of round 0 afterwards
            h = h * 2
        kept.append(h)
        return lin(kept[0]) if len(kept) > 1 else h

    batcher = phalanx.Batcher(fn)
    with torch.no_grad():
        batcher([torch.ones(4)])
        with pytest.raises(phalanx.errors.PhalanxError, match="finished phalanx run"):
            batcher([torch.ones(4)])
