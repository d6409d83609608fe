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
    # Short and long chains of "a" followed by one "b": depth runs b twice, agenda waits.
    def fn(instance):
        n, x = instance
        return chain("a" * n + "b")(x)
    graph = phalanx.Batcher(fn).record([(1, torch.ones(2)), (3, torch.ones(2))])
    depth, agenda = schedule_graph(graph, "depth"), schedule_graph(graph, "agenda")
    assert len(depth) > len(agenda)


def test_empty_graph():
    graph = phalanx.Batcher(chain("a")).record([])
    for policy in ("depth", "agenda"):
        assert len(schedule_graph(graph, policy)) == 0
    assert lower_bound(graph) == 0
