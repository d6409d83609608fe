"""The lean Frontier (schedule/base.py) against a plain per-node reference, step by step.

The reference states the semantics directly: a node is ready once all its producers ran; ``run``
takes every ready node of the type (of one phase, when phases differ), in the order they became
ready, nodes that became ready in one step by id. Both frontiers are driven by the same random
choices, so every reachable state is compared, and both code paths of ``run`` (small batches in
plain Python, large ones vectorized) are exercised by moving the threshold.
"""
import dataclasses
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.schedule import AgendaPolicy, FSMPolicy
from phalanx.schedule.base import Frontier
from tests.helpers import any_graph, make_graph, random_lattices, random_tree_forest


class ReferenceFrontier:
    def __init__(self, graph):
        self.graph = graph
        n = graph.num_nodes
        producer, consumer = graph.edges
        self.pending = [0] * n
        self.consumers = [[] for _ in range(n)]
        for p, c in zip(producer.tolist(), consumer.tolist(), strict=True):
            self.pending[c] += 1
            self.consumers[p].append(c)
        self.ready: list[int] = [i for i in range(n) if self.pending[i] == 0]   # in ready order
        self.sig = graph.node_sig.tolist()
        self.remaining = np.bincount(graph.node_sig, minlength=len(graph.sigs))
        self.remaining_depth = np.bincount(graph.node_sig, weights=graph.node_depth, minlength=len(graph.sigs))
        self.left = n

    def counts(self):
        return np.bincount([self.sig[i] for i in self.ready], minlength=len(self.graph.sigs))

    def run(self, sid, phase=None):
        batch = [i for i in self.ready if self.sig[i] == sid]
        phases = self.graph.node_phase
        if len(set(phases[batch].tolist())) > 1:
            if phase is None:
                depth = self.graph.node_depth[batch]
                phase = int(phases[batch[int(np.argmin(depth))]])
            batch = [i for i in batch if phases[i] == phase]
        taken = set(batch)
        self.ready = [i for i in self.ready if i not in taken]
        fresh = []
        for x in batch:
            for c in self.consumers[x]:
                self.pending[c] -= 1
                if self.pending[c] == 0:
                    fresh.append(c)
        self.ready.extend(sorted(fresh))
        self.remaining[sid] -= len(batch)
        self.remaining_depth[sid] -= self.graph.node_depth[batch].sum()
        self.left -= len(batch)
        return batch


def with_phases(graph, rng):
    """The graph with phases that never decrease along an edge (as recorded programs have them)."""
    if graph.num_nodes == 0:
        return graph
    cut = rng.integers(0, graph.num_nodes + 1)
    phase = (np.arange(graph.num_nodes) >= cut).astype(np.int64)
    return dataclasses.replace(graph, node_phase=phase)


def drive_both(graph, seed, small):
    rnd = random.Random(seed)
    frontier, ref = Frontier(graph), ReferenceFrontier(graph)
    frontier.SMALL = small
    steps = 0
    while not ref.left == 0:
        assert not frontier.done
        counts = ref.counts()
        assert frontier.ready_sids() == sorted(set(ref.sig[i] for i in ref.ready))
        assert frontier.ready_counts().tolist() == counts.tolist()
        sid = rnd.choice(frontier.ready_sids())
        assert frontier.ready_nodes(sid).tolist() == [i for i in ref.ready if ref.sig[i] == sid]
        phase = None
        if rnd.random() < 0.3:
            phase = int(rnd.choice(graph.node_phase[frontier.ready_nodes(sid)].tolist()))
        assert frontier.run(sid, phase).tolist() == ref.run(sid, phase)
        assert frontier.remaining.tolist() == ref.remaining.tolist()
        assert frontier.remaining_depth.tolist() == ref.remaining_depth.tolist()
        steps += 1
    assert frontier.done and frontier.ready_sids() == []
    return steps


@settings(max_examples=60, deadline=None)
@given(graph=any_graph(max_nodes=24), seed=st.integers(0, 2**16), small=st.sampled_from([0, 2, 12, 10**9]),
       phased=st.booleans())
def test_frontier_matches_the_reference_on_random_graphs(graph, seed, small, phased):
    if phased:
        graph = with_phases(graph, np.random.default_rng(seed))
    drive_both(graph, seed, small)


@pytest.mark.parametrize("small", [0, 12])
def test_frontier_matches_the_reference_on_larger_forests_and_lattices(small):
    rng = np.random.default_rng(3)
    for graph in (random_tree_forest(rng, 20, 12), random_lattices(rng, 8, 14)):
        assert drive_both(graph, 7, small) > 5


def test_wide_nodes_use_csr_ranges_with_the_same_result():
    # One source read by 40 nodes: padding every node to width 40 would be wasteful.
    graph = make_graph([0] + [1] * 40 + [2], [[]] + [[0]] * 40 + [list(range(1, 41))])
    assert Frontier(graph).cons_table is None
    assert drive_both(graph, 0, 0) == 3


def reference_schedule(policy, graph):
    """What ``policy.schedule`` must produce: its own choices over the reference frontier."""
    ref, sids, batches = ReferenceFrontier(graph), [], []
    shim = Frontier(graph)   # only for choose(): kept in the reference's state
    while ref.left:
        sid = policy.choose(shim)
        batch = ref.run(sid)
        assert shim.run(sid).tolist() == batch
        sids.append(sid)
        batches.append(batch)
    return sids, batches


@settings(max_examples=30, deadline=None)
@given(graph=any_graph(max_nodes=24))
def test_agenda_and_greedy_fsm_schedules_equal_the_reference(graph):
    for policy in (AgendaPolicy(), FSMPolicy(unknown_types="fallback")):
        schedule = policy.schedule(graph)
        sids, batches = reference_schedule(policy, graph)
        assert list(schedule.sids) == sids
        assert [b.tolist() for b in schedule.batches] == batches
