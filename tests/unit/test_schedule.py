"""Depth and agenda policies on recorded graphs; the lower bound on small known graphs."""
import pytest
import torch

import phalanx
from phalanx.schedule import format_schedule, lower_bound, schedule_graph, verify_schedule


@phalanx.cell
def a_op(x):
    return x + 1


@phalanx.cell
def b_op(x):
    return x * 2


def chain(pattern):
    def fn(x):
        for kind in pattern:
            x = a_op(x) if kind == "a" else b_op(x)
        return x
    return fn


@pytest.mark.parametrize("policy", ["depth", "agenda"])
def test_chains_of_equal_pattern_batch_perfectly(policy):
    batcher = phalanx.Batcher(chain("abab"), policy=policy)
    graph = batcher.record([torch.ones(2)] * 5)
    schedule = schedule_graph(graph, policy)
    verify_schedule(graph, schedule)
    assert len(schedule) == lower_bound(graph) == 5    # input + 4 steps
    assert "x5" in format_schedule(graph, schedule)


def test_lower_bound_counts_longest_same_type_chain():
    # Instance 0: a a b; instance 1: b a.  Longest chains: input 1, a 2, b 1 -> 4.
    def fn(instance):
        pattern, x = instance
        return chain(pattern)(x)
    graph = phalanx.Batcher(fn).record([("aab", torch.ones(2)), ("ba", torch.ones(2))])
    assert lower_bound(graph) == 1 + 2 + 1  # input, a, b
    for policy in ("depth", "agenda"):
        schedule = schedule_graph(graph, policy)
        verify_schedule(graph, schedule)
        assert len(schedule) >= lower_bound(graph)


def test_agenda_beats_depth_when_depths_are_misaligned():
    # Short and long chains of "a" followed by "bb": depth runs the first b twice (it is read, so
    # it is not a postponed sink), agenda waits.
    def fn(instance):
        n, x = instance
        return chain("a" * n + "bb")(x)
    graph = phalanx.Batcher(fn).record([(1, torch.ones(2)), (3, torch.ones(2))])
    depth, agenda = schedule_graph(graph, "depth"), schedule_graph(graph, "agenda")
    assert len(depth) > len(agenda)


def test_depth_postpones_sinks_of_one_type_into_one_batch():
    # NOTE: [Postponed sinks]: "a"-chains of lengths 1..4, each ending in one "b" (a sink): pure
    # depth grouping would run b at 4 depths; postponed, b runs once, after the longest chain.
    def fn(instance):
        n, x = instance
        return chain("a" * n + "b")(x)
    graph = phalanx.Batcher(fn).record([(n, torch.ones(2)) for n in (1, 2, 3, 4)])
    schedule = schedule_graph(graph, "depth")
    verify_schedule(graph, schedule)
    names = [graph.sigs[sid].name for sid in schedule.sids]
    assert sum("b_op" in name for name in names) == 1
    assert len(schedule) == lower_bound(graph) == 1 + 4 + 1     # input, a x4, b


def test_depth_keeps_sinks_that_ride_in_a_non_sink_batch():
    # Instance 0: a b a (its middle b is read); instance 1: a b (its b is a sink at the same depth):
    # the sink rides in the depth-2 b batch, no extra batch appears.
    def fn(instance):
        pattern, x = instance
        return chain(pattern)(x)
    graph = phalanx.Batcher(fn).record([("aba", torch.ones(2)), ("ab", torch.ones(2))])
    schedule = schedule_graph(graph, "depth")
    verify_schedule(graph, schedule)
    assert len(schedule) == 4                                   # input, a, b (both), a
    assert [len(b) for b in schedule.batches] == [2, 2, 2, 1]


def test_empty_graph():
    graph = phalanx.Batcher(chain("a")).record([])
    for policy in ("depth", "agenda"):
        assert len(schedule_graph(graph, policy)) == 0
    assert lower_bound(graph) == 0


def _phased(first_phase, then_phase, back=None):
    """"a"-chains of the instance's length in ``first_phase``, one b, then a read of the b in
    ``then_phase`` (and, with ``back``, one more read of the b in phase ``back``)."""

    def fn(instance):
        n, x = instance
        with phalanx.phase(first_phase):
            y = b_op(chain("a" * n)(x))
        with phalanx.phase(then_phase):
            z = a_op(y)
        if back is None:
            return z
        with phalanx.phase(back):
            return a_op(y) + z

    return fn


def test_depth_postpones_nodes_read_only_by_a_later_phase():
    # NOTE: [Postponed sinks]: each b is read by the next phase only (an encoder memory read by a
    # decoder), so the b's of every chain length run as one batch at the end of their phase.
    fn = _phased("sched enc", "sched dec")
    instances = [(n, torch.ones(2)) for n in (1, 2, 3, 4)]
    graph = phalanx.Batcher(fn).record(instances)
    schedule = schedule_graph(graph, "depth")
    verify_schedule(graph, schedule)
    names = [graph.sigs[sid].name for sid in schedule.sids]
    assert sum("b_op" in name for name in names) == 1
    from tests.oracle import assert_matches_eager
    assert_matches_eager(fn, instances, batcher=phalanx.Batcher(fn, verify=True))


def test_depth_keeps_a_node_before_its_reader_in_a_phase_recorded_back():
    # The b's (phase "sched late") are read again in "sched early" (a lower-rank phase recorded
    # back: its nodes sit right after their operands, not at a phase start): merged at the deepest
    # b, the shallow chains' reader would run before its b. They stay apart; results match eager.
    fn = _phased("sched late", "sched later", back="sched early")
    with phalanx.phase("sched early"):
        pass        # rank "sched early" below the others (ranks are given on first use)
    instances = [(n, torch.ones(2)) for n in (1, 2, 3, 4)]
    graph = phalanx.Batcher(fn).record(instances)
    schedule = schedule_graph(graph, "depth")
    verify_schedule(graph, schedule)
    from tests.oracle import assert_matches_eager
    assert_matches_eager(fn, instances, batcher=phalanx.Batcher(fn, verify=True))
