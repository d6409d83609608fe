"""The depth policy (TensorFlow Fold): one batch per (depth, phase, op type), in depth order.

Depth is recorded inline (NOTE: [Inline depth] in ir/graph.py), so nodes at one depth never depend
on each other and grouping is a single vectorized sort: no frontier, no traversal."""
from __future__ import annotations

import numpy as np

from ..ir.graph import GraphArrays
from .base import Policy, Schedule


class DepthPolicy(Policy):
    name = "depth"

    def schedule(self, graph: GraphArrays) -> Schedule:
        if graph.num_nodes == 0:
            return Schedule((), (), self.name)
        # Depth first: it already orders phases (NOTE: [Phase depth]); phase splits a depth level.
        order = np.lexsort((graph.node_sig, graph.node_phase, graph.node_depth))
        sig = graph.node_sig[order]
        depth = graph.node_depth[order]
        phase = graph.node_phase[order]
        cuts = np.flatnonzero((sig[1:] != sig[:-1]) | (depth[1:] != depth[:-1]) | (phase[1:] != phase[:-1])) + 1
        bounds = [0, *cuts.tolist(), len(order)]
        # Plain slices: np.split costs several microseconds per piece.
        batches = tuple(order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]))
        sids = tuple(sig[bounds[:-1]].tolist())
        return Schedule(batches, sids, self.name)
