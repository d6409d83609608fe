"""Lower bound on the number of batches of any valid schedule (ED-Batch).

Two nodes of one type on a common path can never share a batch, so for each type t the longest
chain of t-nodes along any path is a lower bound for t alone, and batches of different types are
disjoint: ``lower_bound = #unbatchable + sum over t of max chain_t``. phalanx has no unbatchable
nodes (every op type batches), so the first term is 0.

chain_t(n) = [type(n) == t] + max over producers p of chain_t(p), computed level by level over the
recorded depth with numpy (O(nodes x types))."""
from __future__ import annotations

import numpy as np

from ..ir.graph import GraphArrays


def chain_lengths(graph: GraphArrays) -> tuple[np.ndarray, np.ndarray]:
    """(types, L) with L[n, j] = longest chain of nodes of type ``types[j]`` ending at node n."""
    types, column = np.unique(graph.node_sig, return_inverse=True)
    n = graph.num_nodes
    table = np.zeros((n, len(types)), dtype=np.int64)
    if n == 0:
        return types, table
    producer, consumer = graph.edges
    depth = graph.node_depth
    edge_order = np.lexsort((consumer, depth[consumer]))
    producer, consumer = producer[edge_order], consumer[edge_order]
    edge_depth = depth[consumer]
    node_order = np.argsort(depth, kind="stable")
    node_cuts = np.searchsorted(depth[node_order], np.arange(depth.max() + 2))
    edge_cuts = np.searchsorted(edge_depth, np.arange(depth.max() + 2))
    for d in range(depth.max() + 1):
        lo, hi = edge_cuts[d], edge_cuts[d + 1]
        if hi > lo:
            c, p = consumer[lo:hi], producer[lo:hi]
            starts = np.flatnonzero(np.concatenate(([True], c[1:] != c[:-1])))
            table[c[starts]] = np.maximum.reduceat(table[p], starts, axis=0)
        nodes = node_order[node_cuts[d]:node_cuts[d + 1]]
        table[nodes, column[nodes]] += 1
    return types, table


def lower_bound(graph: GraphArrays, unbatchable: int = 0) -> int:
    if graph.num_nodes == 0:
        return unbatchable
    _, table = chain_lengths(graph)
    return unbatchable + int(table.max(axis=0).sum())
