"""Typewise frontier and step reward against their brute-force definitions (schedule/typewise.py)."""
from __future__ import annotations

import random

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from phalanx.schedule.base import Frontier
from phalanx.schedule.typewise import TypewiseFrontier, TypewiseLinks, reward
from tests.helpers import any_graph, make_graph


def ancestors(graph) -> list[set[int]]:
    """Transitive producers of every node (node ids are topological)."""
    producer, consumer = graph.edges
    result: list[set[int]] = [set() for _ in range(graph.num_nodes)]
    preds: list[set[int]] = [set() for _ in range(graph.num_nodes)]
    for p, c in zip(producer.tolist(), consumer.tolist(), strict=True):
        preds[c].add(p)
    for n in range(graph.num_nodes):
        for p in preds[n]:
            result[n] |= {p} | result[p]
    return result


def brute_typewise(graph, executed: set[int], sid: int, anc: list[set[int]]) -> set[int]:
    """Remaining sid-nodes with no unexecuted sid-ancestor (paths through other types ignored)."""
    sig = graph.node_sig.tolist()
    return {n for n in range(graph.num_nodes)
            if sig[n] == sid and n not in executed and not any(sig[a] == sid and a not in executed for a in anc[n])}


def brute_nearest_links(graph) -> set[tuple[int, int]]:
    """(m, n): same type, m an ancestor of n by a path with no inner node of that type."""
    sig = graph.node_sig.tolist()
    producer, consumer = graph.edges
    succ: list[set[int]] = [set() for _ in range(graph.num_nodes)]
    for p, c in zip(producer.tolist(), consumer.tolist(), strict=True):
        succ[p].add(c)
    links = set()
    for m in range(graph.num_nodes):
        stack, seen = list(succ[m]), set()
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            if sig[x] == sig[m]:
                links.add((m, x))
            else:
                stack.extend(succ[x])
    return links


@settings(max_examples=150, deadline=None)
@given(any_graph(max_nodes=14))
@example(make_graph([], []))
@example(make_graph([0], [[]]))
def test_nearest_links_match_definition(graph):
    links = TypewiseLinks(graph)
    got = {(m, int(n)) for m in range(graph.num_nodes) for n in links.target[links.start[m]:links.start[m + 1]]}
    assert got == brute_nearest_links(graph)
    assert links.num_ancestors.tolist() == [sum(1 for _, n in got if n == x) for x in range(graph.num_nodes)]


@settings(max_examples=150, deadline=None)
@given(any_graph(max_nodes=14), st.randoms(use_true_random=False))
@example(make_graph([], []), random.Random(0))
@example(make_graph([0], [[]]), random.Random(0))
@example(make_graph([0] * 31 + [1], [[]] + [[0]] * 30 + [list(range(1, 31))]), random.Random(1))   # wide: CSR path
def test_typewise_sizes_and_rewards_match_definition(graph, rnd):
    anc = ancestors(graph)
    frontier, typewise = Frontier(graph), TypewiseFrontier(graph)
    executed: set[int] = set()
    mask = np.zeros(graph.num_nodes, dtype=bool)
    num_sigs = len(graph.sigs)
    while True:
        for sid in range(num_sigs):
            expected = brute_typewise(graph, executed, sid, anc)
            assert typewise.size[sid] == len(expected)
            assert set(typewise.members(sid, mask).tolist()) == expected
            ready = set(frontier.ready_nodes(sid).tolist())
            assert ready <= expected   # ready nodes are always in the typewise frontier
        if frontier.done:
            break
        sid = rnd.choice(frontier.ready_sids())
        r = reward(frontier.ready_count(sid), int(typewise.size[sid]))
        assert -1.0 <= r <= 0.0
        assert r == -1.0 + frontier.ready_count(sid) / len(brute_typewise(graph, executed, sid, anc))
        batch = frontier.run(sid)
        typewise.run(batch)
        executed |= set(batch.tolist())
        mask[batch] = True
    assert typewise.size.sum() == 0


def test_wide_links_fall_back_to_csr_ranges():
    # Node 0 links to 30 same-type nodes: a padded link table would be mostly padding.
    graph = make_graph([0] * 31 + [1], [[]] + [[0]] * 30 + [list(range(1, 31))])
    frontier, typewise = Frontier(graph), TypewiseFrontier(graph)
    assert typewise.table is None and frontier.cons_table is None
    assert typewise.size.tolist() == [1, 1]
    typewise.run(frontier.run(0))
    assert typewise.size.tolist() == [30, 1]


def test_reward_is_zero_for_a_perfect_batch():
    # Two chains a0 -> b1 -> a2 and a3: running a0 and a3 together leaves a2 for later: reward
    # -1 + 2/2 = 0 (a2 has an unexecuted A-ancestor, so it is not in A's typewise frontier).
    graph = make_graph([0, 1, 0, 0], [[], [0], [1], []])
    frontier, typewise = Frontier(graph), TypewiseFrontier(graph)
    assert typewise.size.tolist() == [2, 1]
    assert reward(frontier.ready_count(0), typewise.size[0]) == 0.0
    typewise.run(frontier.run(0))
    assert typewise.size.tolist() == [1, 1]
    typewise.run(frontier.run(1))
    assert reward(frontier.ready_count(0), typewise.size[0]) == 0.0


def test_a_partial_batch_is_penalised():
    # a0 ready; a2 is in A's typewise frontier too (its only ancestor is B) but not ready yet.
    graph = make_graph([0, 1, 0], [[], [], [1]])
    frontier, typewise = Frontier(graph), TypewiseFrontier(graph)
    assert typewise.size[0] == 2
    assert reward(frontier.ready_count(0), typewise.size[0]) == -0.5
