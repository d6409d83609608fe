"""Schedules, the Frontier, and the Policy interface every batching policy implements.

A Schedule is an ordered list of batches; each batch is an array of node ids of ONE op type, all
of whose inputs are produced by earlier batches. A policy makes a schedule for a frozen graph.

Frontier-driven policies (agenda, fsm) are pure: ``choose(frontier) -> sid`` reads the frontier
and returns the op type to run next; the shared ``Policy.schedule`` loop runs every ready node of
that type and repeats (ED-Batch's MDP: state = frontier, action = a type, step = one batch). The
depth policy needs no frontier and overrides ``schedule`` with a vectorized grouping.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import GraphArrays


@dataclass(frozen=True, eq=False)
class Schedule:
    """``batches[i]`` is an int64 array of node ids, all of op type ``sids[i]``."""

    batches: tuple[np.ndarray, ...]
    sids: tuple[int, ...]
    policy: str

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_nodes(self) -> int:
        return sum(len(b) for b in self.batches)


def ranges(start: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Concatenation of the CSR slices ``[start[n], start[n+1])`` for ``n`` in ``nodes``."""
    lo = start[nodes]
    lengths = start[nodes + 1] - lo
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(lo - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return offsets + np.arange(total)


class Frontier:
    """The ready nodes of a partially executed graph, grouped by op type, updated in O(work done).

    ``ready_count(sid)``, ``ready_sids()`` and the per-type remaining counts are what policies read;
    ``run(sid)`` executes (in the scheduling sense) every ready node of that type and returns them,
    in the order they became ready (nodes that became ready in one step: by id).

    NOTE: [Lean frontier] a step's cost is dominated by per-call overhead (numpy: about a
    microsecond a call), not by its nodes, so a step makes as few calls as possible. A large batch
    takes about ten numpy calls whatever its size: consumers come from a padded
    [nodes, max out-degree] table (padding points at a sentinel node that never becomes ready),
    pending counts drop with one ``subtract.at``, the nodes that became ready are sorted once and
    split by op type with one ``bincount``. A small batch (most steps near the end of a schedule)
    walks its few edges in plain Python instead. Graphs with a few very wide nodes read consumers
    as CSR ranges.
    """

    SMALL = 16   # batches up to this many nodes take the plain-Python path

    def __init__(self, graph: GraphArrays):
        self.graph = graph
        n = graph.num_nodes
        self.num_sigs = len(graph.sigs)
        self.node_sig = graph.node_sig
        self.node_depth = graph.node_depth
        # Slot n is the sentinel that padded consumer slots point at; it never reaches 0.
        self.pending = np.empty(n + 1, dtype=np.int64)
        self.pending[:n] = graph.num_producers
        self.pending[n] = np.iinfo(np.int64).max
        self.cons_start, self.cons = graph.consumers
        self.cons_table = graph.consumer_table
        self._ready: dict[int, list[np.ndarray]] = {}
        self._count = np.zeros(self.num_sigs, dtype=np.int64)
        self.remaining = np.bincount(graph.node_sig, minlength=self.num_sigs)
        self.remaining_depth = np.bincount(graph.node_sig, weights=graph.node_depth,
                                           minlength=self.num_sigs)
        self.left = n
        self.phased = n > 0 and graph.node_phase.max() > graph.node_phase.min()
        self._add_ready(np.flatnonzero(self.pending[:n] == 0))

    def _add_ready(self, nodes: np.ndarray) -> None:
        """Nodes that just became ready, sorted by id."""
        if len(nodes) == 0:
            return
        sigs = self.node_sig[nodes]
        per_sig = np.bincount(sigs, minlength=self.num_sigs)
        self._count += per_sig
        present = np.flatnonzero(per_sig)
        if len(present) == 1:
            self._push(int(present[0]), nodes)
        else:
            for sid in present.tolist():
                self._push(sid, nodes[sigs == sid])

    def _push(self, sid: int, nodes: np.ndarray) -> None:
        chunks = self._ready.get(sid)
        if chunks is None:
            self._ready[sid] = [nodes]
        else:
            chunks.append(nodes)

    @property
    def done(self) -> bool:
        return self.left == 0

    def ready_sids(self) -> list[int]:
        return sorted(self._ready)

    def ready_count(self, sid: int) -> int:
        return int(self._count[sid])

    def ready_counts(self) -> np.ndarray:
        """Ready nodes per op type; the same array for the frontier's life, updated in place."""
        return self._count

    def ready_nodes(self, sid: int) -> np.ndarray:
        chunks = self._ready.get(sid, ())
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.zeros(0, np.int64)

    def run(self, sid: int, phase: int | None = None) -> np.ndarray:
        chunks = self._ready.pop(sid, None)
        if not chunks:
            raise ValueError(f"op type {sid} has no ready nodes")
        batch = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        self._count[sid] = 0
        if self.phased:
            batch = self._one_phase(sid, batch, phase)
        size = len(batch)
        self.remaining[sid] -= size
        self.left -= size
        if size <= self.SMALL:
            self._run_small(sid, batch)
            return batch
        self.remaining_depth[sid] -= self.node_depth[batch].sum()
        if self.cons_table is not None:
            consumers = self.cons_table[batch].reshape(-1)
        else:
            consumers = self.cons[ranges(self.cons_start, batch)]
        if len(consumers):
            pending = self.pending
            np.subtract.at(pending, consumers, 1)
            hit = consumers[pending[consumers] == 0]
            if len(hit) > 1:
                # A node whose last producers share this batch is hit once per edge from them.
                hit.sort()
                fresh = hit[1:] != hit[:-1]
                if not fresh.all():
                    hit = hit[np.concatenate(([True], fresh))]
            self._add_ready(hit)
        return batch

    def _run_small(self, sid: int, batch: np.ndarray) -> None:
        """``run``'s bookkeeping for a few nodes: their few edges in plain Python (NOTE: [Lean frontier])."""
        pending, node_sig = self.pending, self.node_sig
        self.remaining_depth[sid] -= sum(self.node_depth[batch].tolist())
        if self.cons_table is not None:
            consumers = self.cons_table[batch].ravel().tolist()
        else:
            consumers = self.cons[ranges(self.cons_start, batch)].tolist()
        fresh = []
        for c in consumers:
            k = pending[c] - 1
            pending[c] = k
            if k == 0:      # each node reaches 0 exactly once: no duplicates
                fresh.append(c)
        if not fresh:
            return
        fresh.sort()
        sigs = node_sig[fresh].tolist()
        first = sigs[0]
        if sigs.count(first) == len(sigs):
            self._count[first] += len(fresh)
            self._push(first, np.array(fresh, dtype=np.int64))
            return
        by_sig: dict[int, list[int]] = {}
        for c, t in zip(fresh, sigs, strict=True):
            by_sig.setdefault(t, []).append(c)
        for t in sorted(by_sig):
            self._count[t] += len(by_sig[t])
            self._push(t, np.array(by_sig[t], dtype=np.int64))

    def _one_phase(self, sid: int, batch: np.ndarray, phase: int | None) -> np.ndarray:
        """Nodes of different program phases never share a batch: keep ``phase``, by default the
        phase of the shallowest ready node (it ranks first, NOTE: [Phase depth]); the rest stay ready."""
        phases = self.graph.node_phase[batch]
        keep = phases == (phases[np.argmin(self.graph.node_depth[batch])] if phase is None else phase)
        if keep.all():
            return batch
        rest = batch[~keep]
        self._push(sid, rest)
        self._count[sid] += len(rest)
        return batch[keep]




class Policy:
    """A batching policy. Subclasses implement ``choose`` (frontier policies) or ``schedule``."""

    name = "policy"

    def choose(self, frontier: Frontier) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement choose() or schedule()")

    def schedule(self, graph: GraphArrays) -> Schedule:
        frontier = Frontier(graph)
        batches, sids = [], []
        while not frontier.done:
            sid = self.choose(frontier)
            batches.append(frontier.run(sid))
            sids.append(sid)
        return Schedule(tuple(batches), tuple(sids), self.name)


def verify_schedule(graph: GraphArrays, schedule: Schedule) -> None:
    """Raise AssertionError unless every node runs exactly once, after its producers, in a batch of
    one op type."""
    n = graph.num_nodes
    batch_of = np.full(n, -1, dtype=np.int64)
    for i, (nodes, sid) in enumerate(zip(schedule.batches, schedule.sids, strict=True)):
        assert len(nodes) > 0, f"batch {i} is empty"
        assert (graph.node_sig[nodes] == sid).all(), f"batch {i} mixes op types"
        assert (batch_of[nodes] == -1).all(), f"batch {i} repeats a node"
        batch_of[nodes] = i
    assert (batch_of >= 0).all(), f"{int((batch_of < 0).sum())} nodes never scheduled"
    producer, consumer = graph.edges
    late = batch_of[producer] >= batch_of[consumer]
    assert not late.any(), f"node {int(consumer[late][0])} runs before its input node {int(producer[late][0])}"


def format_schedule(graph: GraphArrays, schedule: Schedule) -> str:
    """Deterministic text form: one line per batch."""
    lines = [f"schedule[{schedule.policy}] {len(schedule)} batches, {schedule.num_nodes} nodes"]
    for i, (nodes, sid) in enumerate(zip(schedule.batches, schedule.sids, strict=True)):
        lines.append(f"  b{i:<4d} x{len(nodes):<5d} {graph.sigs[sid].name}")
    return "\n".join(lines)
