"""The optimal policy against brute force, and every policy against the lower bound and optimum."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings

from phalanx.errors import PhalanxError
from phalanx.schedule import POLICIES, FSMPolicy, OptimalPolicy, lower_bound, make_policy, verify_schedule
from tests.helpers import any_graph, dags, make_graph, random_lattices, random_tree_forest


def brute_force_min_batches(graph) -> int:
    """Fewest batches over ALL valid schedules: breadth-first over executed sets, where a batch is
    any nonempty subset of the ready nodes of one type (so this does not assume whole batches)."""
    n = graph.num_nodes
    sig = graph.node_sig.tolist()
    preds = [0] * n
    for p, c in zip(*(e.tolist() for e in graph.edges), strict=True):
        preds[c] |= 1 << p
    full = (1 << n) - 1
    layer, seen, steps = {0}, {0}, 0
    while full not in layer:
        nxt = set()
        for done in layer:
            ready = [i for i in range(n) if not done >> i & 1 and preds[i] & ~done == 0]
            for t in {sig[i] for i in ready}:
                of_type = [i for i in ready if sig[i] == t]
                for pick in range(1, 1 << len(of_type)):
                    state = done
                    for j, i in enumerate(of_type):
                        if pick >> j & 1:
                            state |= 1 << i
                    if state not in seen:
                        seen.add(state)
                        nxt.add(state)
        layer, steps = nxt, steps + 1
    return steps


def all_policies(graph):
    fsm = FSMPolicy.train_on_graphs([graph], max_episodes=20, eval_every=10) if graph.num_nodes else FSMPolicy()
    return {"depth": make_policy("depth"), "agenda": make_policy("agenda"), "fsm": fsm,
            "fsm-untrained": FSMPolicy(), "optimal": OptimalPolicy()}


def test_policies_are_registered():
    assert {"depth", "agenda", "fsm", "optimal"} <= set(POLICIES)
    assert isinstance(make_policy("optimal"), OptimalPolicy)
    assert isinstance(make_policy("fsm"), FSMPolicy)


@settings(max_examples=60, deadline=None)
@given(any_graph(max_nodes=24))
@example(make_graph([], []))
@example(make_graph([0], [[]]))
def test_every_policy_makes_a_valid_schedule_between_bound_and_optimum(graph):
    bound = lower_bound(graph)
    lengths = {}
    for name, policy in all_policies(graph).items():
        schedule = policy.schedule(graph)
        verify_schedule(graph, schedule)
        lengths[name] = len(schedule)
    assert all(bound <= lengths["optimal"] <= n for n in lengths.values()), (bound, lengths)


@settings(max_examples=120, deadline=None)
@given(dags(max_nodes=9, max_types=3))
def test_optimal_equals_brute_force_on_small_graphs(graph):
    optimal = OptimalPolicy().schedule(graph)
    verify_schedule(graph, optimal)
    assert len(optimal) == brute_force_min_batches(graph)
    assert lower_bound(graph) <= len(optimal)


def test_optimal_beats_heuristics_where_they_fail():
    # a0 a1 a2 ready with b3 -> a4, all read by c5: running B first lets all four A's share one
    # batch. (Without c5 every A is a sink and depth postpones them together: NOTE: [Postponed sinks].)
    graph = make_graph([0, 0, 0, 1, 0, 2], [[], [], [], [], [3], [0, 1, 2, 4]])
    assert len(OptimalPolicy().schedule(graph)) == 3 == lower_bound(graph)
    assert len(make_policy("depth").schedule(graph)) == 4
    sinks_only = make_graph([0, 0, 0, 1, 0], [[], [], [], [], [3]])
    assert len(make_policy("depth").schedule(sinks_only)) == 2 == lower_bound(sinks_only)


def test_optimal_on_medium_trees_and_lattices():
    rng = np.random.default_rng(3)
    for graph in (random_tree_forest(rng, 6, 8), random_lattices(rng, 5, 8)):
        schedule = OptimalPolicy().schedule(graph)
        verify_schedule(graph, schedule)
        assert lower_bound(graph) <= len(schedule) <= len(make_policy("agenda").schedule(graph))


def test_node_limit_is_named():
    graph = make_graph([0] * 5, [[]] * 5)
    with pytest.raises(PhalanxError, match="node limit of 4"):
        OptimalPolicy(max_nodes=4).schedule(graph)


def test_time_limit_is_named():
    graph = random_lattices(np.random.default_rng(0), 6, 10, p_word=0.9)
    assert len(make_policy("agenda").schedule(graph)) > lower_bound(graph)   # so the search must expand
    with pytest.raises(PhalanxError, match="time limit of 0 s"):
        OptimalPolicy(time_limit=0).schedule(graph)
