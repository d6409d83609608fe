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
    ``run(sid)`` executes (in the scheduling sense) every ready node of that type and returns them.
    """

    def __init__(self, graph: GraphArrays):
        self.graph = graph
        self.num_sigs = len(graph.sigs)
        self.pending = graph.num_producers.copy()
        self.cons_start, self.cons = graph.consumers
        self._ready: dict[int, list[np.ndarray]] = {}
        self._count = np.zeros(self.num_sigs, dtype=np.int64)
        self.remaining = np.bincount(graph.node_sig, minlength=self.num_sigs)
        self.remaining_depth = np.bincount(graph.node_sig, weights=graph.node_depth,
                                           minlength=self.num_sigs)
        self.left = graph.num_nodes
        self.phased = graph.num_nodes > 0 and graph.node_phase.max() > graph.node_phase.min()
        self._add_ready(np.flatnonzero(self.pending == 0))

    def _add_ready(self, nodes: np.ndarray) -> None:
        if len(nodes) == 0:
            return
        sigs = self.graph.node_sig[nodes]
        if len(nodes) > 1 and (sigs[0] != sigs).any():
            order = np.argsort(sigs, kind="stable")
            nodes, sigs = nodes[order], sigs[order]
            cuts = np.flatnonzero(sigs[1:] != sigs[:-1]) + 1
            for part in np.split(nodes, cuts):
                self._push(int(self.graph.node_sig[part[0]]), part)
        else:
            self._push(int(sigs[0]), nodes)

    def _push(self, sid: int, nodes: np.ndarray) -> None:
        self._ready.setdefault(sid, []).append(nodes)
        self._count[sid] += len(nodes)

    @property
    def done(self) -> bool:
        return self.left == 0

    def ready_sids(self) -> list[int]:
        return sorted(self._ready)

    def ready_count(self, sid: int) -> int:
        return int(self._count[sid])

    def ready_counts(self) -> np.ndarray:
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
        self.remaining[sid] -= len(batch)
        self.remaining_depth[sid] -= self.graph.node_depth[batch].sum()
        self.left -= len(batch)
        consumers = self.cons[ranges(self.cons_start, batch)]
        if len(consumers):
            unique, counts = np.unique(consumers, return_counts=True)
            self.pending[unique] -= counts
            self._add_ready(unique[self.pending[unique] == 0])
        return batch

    def _one_phase(self, sid: int, batch: np.ndarray, phase: int | None) -> np.ndarray:
        """Nodes of different program phases never share a batch: keep ``phase``, by default the
        phase of the shallowest ready node (it ranks first, NOTE: [Phase depth]); the rest stay ready."""
        phases = self.graph.node_phase[batch]
        keep = phases == (phases[np.argmin(self.graph.node_depth[batch])] if phase is None else phase)
        if keep.all():
            return batch
        self._push(sid, batch[~keep])
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
