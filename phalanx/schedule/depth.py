"""The depth policy (TensorFlow Fold): one batch per (depth, phase, op type), in depth order, with
sinks postponed (NOTE: [Postponed sinks]).

Depth is recorded inline (NOTE: [Inline depth] in ir/graph.py), so nodes at one depth never depend
on each other and grouping is a single vectorized sort (a radix sort of one combined key where
it fits 16 bits, ``_group_order``): no frontier, no traversal.

NOTE: [Postponed sinks] a node whose values no other node reads (a sink: the classifier on a tree's
root, a tagger's per-token scorer) may run at any depth from its own to the end of its phase. Pure
depth grouping runs one batch of a sink type per depth it was recorded at (TreeLSTM, batch 64: 26
root classifier batches at 26 root depths). So per (phase, op type), the sinks at depths where no
non-sink of that type runs (they would otherwise need a batch of their own) move together to the
deepest of those depths, when they span more than one: that type then runs one batch more than its
non-sinks need, never more than before. Sinks that share a depth with non-sinks of their type stay
there (they ride in that batch for free). A node read only by nodes of other phases (an encoder's
padded memory, read by the decoder phase) counts as a sink of its own phase, when the merged batch
is still before every such reader (a lower-rank phase recorded back sits right after its operands).
Vectorized up to a Python pass over the batches.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import GraphArrays
from .base import Policy, Schedule
from .groups import twin_rank


class DepthPolicy(Policy):
    name = "depth"

    def schedule(self, graph: GraphArrays) -> Schedule:
        if graph.num_nodes == 0:
            return Schedule((), (), self.name)
        # Depth first: it already orders phases (NOTE: [Phase depth]); phase splits a depth level.
        # Within a level, twin op types side by side (NOTE: [Op-type groups], schedule/groups.py).
        rank = twin_rank(graph)
        order, key = _group_order(graph.node_depth, graph.node_phase,
                                  graph.node_sig if rank is None else rank[graph.node_sig])
        cuts = (key[1:] != key[:-1]).nonzero()[0] + 1
        bounds = [0, *cuts.tolist(), len(order)]
        # Plain slices: np.split costs several microseconds per piece.
        batches = [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        heads = order[bounds[:-1]]
        sids = graph.node_sig[heads].tolist()
        batches, sids = _postpone_sinks(graph, order, bounds, batches, sids, graph.node_phase[heads].tolist())
        return Schedule(tuple(batches), tuple(sids), self.name)


def _group_order(depth: np.ndarray, phase: np.ndarray, sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.lexsort((sig, phase, depth))`` and the sorted nodes' group keys (equal exactly when
    depth, phase and sig are), as ONE stable argsort of a combined key: a radix sort when the key
    fits 16 bits (a few thousand (depth, phase, op type) groups: ~3x faster than the lexsort's
    three merge sorts), else a merge sort of int64 keys."""
    lows = (int(depth.min()), int(phase.min()), int(sig.min()))
    spans = (int(depth.max()) - lows[0] + 1, int(phase.max()) - lows[1] + 1, int(sig.max()) - lows[2] + 1)
    groups = spans[0] * spans[1] * spans[2]
    if groups >= 2 ** 62:       # never in practice: the lexsort, and its keys as a structured compare
        order = np.lexsort((sig, phase, depth))
        key = np.zeros(len(order), dtype=np.int64)
        key[1:] = np.add.accumulate((sig[order][1:] != sig[order][:-1]) | (phase[order][1:] != phase[order][:-1])
                                    | (depth[order][1:] != depth[order][:-1]))
        return order, key
    key = ((depth - lows[0]) * spans[1] + (phase - lows[1])) * spans[2] + (sig - lows[2])
    if groups <= 2 ** 16:
        key = key.astype(np.uint16)
    order = key.argsort(kind="stable")
    return order, key[order]


def _postpone_sinks(graph: GraphArrays, order, bounds, batches: list, sids: list, phases: list):
    """Merge the batches made only of sinks, per (op type, phase), into the last of them (NOTE:
    [Postponed sinks]): it is the deepest, so every merged node's operands are ready there."""
    codes = graph.arg_code
    producer = graph.value_node[codes[codes >= 0]]
    first_reader = None
    if graph.num_nodes and graph.node_phase.min() != graph.node_phase.max():
        # A node read only by nodes of other phases (an encoder memory read by the decoder) is a
        # sink of its own phase: it may run anywhere up to its first reader's depth.
        reader = np.repeat(np.arange(graph.num_nodes), np.diff(graph.arg_start))[codes >= 0]
        other = graph.node_phase[reader] != graph.node_phase[producer]
        first_reader = np.full(graph.num_nodes, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_reader, producer[other], graph.node_depth[reader[other]])
        producer = producer[~other]
    sink = np.bincount(producer, minlength=graph.num_nodes) == 0
    only_sinks = np.logical_and.reduceat(sink[order], bounds[:-1]).tolist()
    lone: dict[tuple[int, int], list[int]] = {}
    for b, flag in enumerate(only_sinks):
        if flag:
            lone.setdefault((sids[b], phases[b]), []).append(b)
    merged = [bs for bs in lone.values() if len(bs) > 1]
    if first_reader is not None:        # only where the deepest of them is before every reader
        depth = graph.node_depth
        merged = [bs for bs in merged
                  if first_reader[np.concatenate([batches[b] for b in bs])].min() > depth[batches[bs[-1]][0]]]
    if not merged:
        return batches, sids
    dropped = set()
    for bs in merged:
        batches[bs[-1]] = np.concatenate([batches[b] for b in bs])
        dropped.update(bs[:-1])
    keep = [b for b in range(len(batches)) if b not in dropped]
    return [batches[b] for b in keep], [sids[b] for b in keep]
