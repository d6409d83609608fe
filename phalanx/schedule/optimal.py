"""The optimal policy: the exact minimum number of batches, by branch and bound (small graphs only).

For evaluating the other policies: ``lower_bound <= optimal <= any policy``. Exponential in the
worst case, so it refuses graphs over ``max_nodes`` nodes and gives up after ``time_limit``
seconds, with a PhalanxError naming the limit.

NOTE: [Whole batches suffice] Searching only over "run ALL ready nodes of one type" (ED-Batch's
MDP) loses nothing. Take any valid schedule; if batch i of type t leaves out a node v of type t
that is ready at i, move v from its later batch j into batch i: v's producers ran before i, its
consumers run after j > i, so the schedule stays valid and has no more batches (batch j may empty
and vanish). Each move moves a node strictly earlier, so repeating ends in a schedule of whole
ready sets with at most as many batches.

Search: depth-first over the op types with ready nodes, on states held as bitmasks (executed set,
ready set). Pruned by ``batches so far + remaining lower bound >= best`` and by memoizing the
fewest batches at which each executed set was reached. The remaining lower bound is
``sum over types t of max over ready nodes n of S_t(n)``, where S_t(n) is the longest chain of
t-nodes on a path starting at n: the unexecuted nodes are closed under descendants, so S_t is
unchanged by execution, and the longest chain in the remainder starts at a ready node.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import PhalanxError
from ..ir.graph import GraphArrays
from .agenda import AgendaPolicy
from .base import Frontier, Policy, Schedule


class OptimalPolicy(Policy):
    """Exact minimum-batch schedules by branch and bound (see module docstring).

    **Arguments:**
    - ``max_nodes``: refuse larger graphs (default 200).
    - ``time_limit``: seconds before giving up (default 10).
    """

    name = "optimal"

    def __init__(self, max_nodes: int = 200, time_limit: float = 10.0):
        self.max_nodes = max_nodes
        self.time_limit = time_limit

    def schedule(self, graph: GraphArrays) -> Schedule:
        if graph.num_nodes > self.max_nodes:
            raise PhalanxError(
                f"optimal policy: graph has {graph.num_nodes} nodes, over its node limit of {self.max_nodes} "
                f"(exact search is exponential); raise OptimalPolicy(max_nodes=...) or use lower_bound()")
        # Search over (phase, op type) keys: nodes of different phases never share a batch.
        stride = len(graph.sigs)
        keys = _BranchAndBound(graph, self.time_limit, graph.node_sig + stride * graph.node_phase).solve()
        sids = [k % stride for k in keys]
        frontier = Frontier(graph)
        batches = tuple(frontier.run(k % stride, k // stride) for k in keys)
        assert frontier.done
        return Schedule(batches, tuple(sids), self.name)


def _bits(mask: int):
    """Indices of the set bits of ``mask``."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class _BranchAndBound:
    def __init__(self, graph: GraphArrays, time_limit: float, node_key: np.ndarray):
        n = graph.num_nodes
        self.graph = graph
        self.time_limit = time_limit
        self.node_sig = node_key.tolist()
        types = sorted(set(self.node_sig))
        self.type_mask = {t: 0 for t in types}
        for i, t in enumerate(self.node_sig):
            self.type_mask[t] |= 1 << i
        producer, consumer = graph.edges
        self.pred_mask = [0] * n
        self.consumers: list[list[int]] = [[] for _ in range(n)]
        for p, c in sorted(set(zip(producer.tolist(), consumer.tolist(), strict=True))):
            self.pred_mask[c] |= 1 << p
            self.consumers[p].append(c)
        # starts[n][j]: longest chain of types[j]-nodes on a path starting at n (node ids are
        # topological, so a reverse sweep sees consumers first).
        column = {t: j for j, t in enumerate(types)}
        starts = np.zeros((n, len(types)), dtype=np.int64)
        for i in range(n - 1, -1, -1):
            if self.consumers[i]:
                starts[i] = starts[self.consumers[i]].max(axis=0)
            starts[i, column[self.node_sig[i]]] += 1
        self.starts = starts.tolist()
        self.num_types = len(types)

    def remaining_bound(self, ready: int) -> int:
        best = [0] * self.num_types
        for i in _bits(ready):
            row = self.starts[i]
            best = [a if a >= b else b for a, b in zip(best, row, strict=True)]
        return sum(best)

    def step(self, executed: int, ready: int, t: int) -> tuple[int, int]:
        """(executed, ready) after running every ready node of type t."""
        batch = ready & self.type_mask[t]
        executed |= batch
        ready &= ~batch
        for i in _bits(batch):
            for c in self.consumers[i]:
                if self.pred_mask[c] & ~executed == 0:
                    ready |= 1 << c
        return executed, ready

    def solve(self) -> list[int]:
        if self.graph.num_nodes == 0:
            return []
        # Start from a good heuristic schedule so pruning bites at once.
        incumbent = AgendaPolicy().schedule(self.graph)
        self.best = len(incumbent)
        self.best_path = [self.node_sig[b[0]] for b in incumbent.batches]
        self.seen: dict[int, int] = {}
        self.path: list[int] = []
        self.expanded = 0
        self.deadline = time.perf_counter() + self.time_limit
        ready = 0
        for i, pm in enumerate(self.pred_mask):
            if pm == 0:
                ready |= 1 << i
        self.search(0, ready, 0)
        return self.best_path

    def search(self, executed: int, ready: int, depth: int) -> None:
        if ready == 0:   # nothing ready in a DAG means nothing left
            if depth < self.best:
                self.best, self.best_path = depth, list(self.path)
            return
        if depth + self.remaining_bound(ready) >= self.best:
            return
        reached = self.seen.get(executed)
        if reached is not None and reached <= depth:
            return
        self.seen[executed] = depth
        self.expanded += 1
        if self.expanded % 1024 == 1 and time.perf_counter() > self.deadline:
            raise PhalanxError(
                f"optimal policy: gave up after its time limit of {self.time_limit:g} s on a graph of "
                f"{self.graph.num_nodes} nodes (best found {self.best} batches); raise "
                f"OptimalPolicy(time_limit=...) or use a smaller graph")
        children = []
        for t, mask in self.type_mask.items():
            count = (ready & mask).bit_count()
            if count:
                child = self.step(executed, ready, t)
                children.append((self.remaining_bound(child[1]), -count, t, child))
        children.sort()
        for _, _, t, (child_executed, child_ready) in children:
            self.path.append(t)
            self.search(child_executed, child_ready, depth + 1)
            self.path.pop()
