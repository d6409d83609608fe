"""The typewise frontier (ED-Batch) and the reward of a scheduling step.

The typewise frontier of op type t is the set of remaining t-nodes with no unexecuted ancestor OF
TYPE t; paths through other types are ignored. It always contains the ready t-nodes, and a batch
can never hold more t-nodes than it (two t-nodes on one path never share a batch). So

    reward(a) = -1 + |ready(a)| / |typewise_frontier(a)|      (in [-1, 0])

is 0 exactly when a step runs type a's whole typewise frontier: a perfect batch.

NOTE: [Nearest same-type links] A t-node n has an unexecuted t-ancestor iff one of its *nearest*
t-ancestors (t-ancestors m reached by a path m -> ... -> n whose inner nodes are not t) is
unexecuted: the last t-node on any path from a t-ancestor to n is a nearest one, and a node runs
only after all its ancestors. So we link each node m to its nearest same-type descendants once per
graph, keep per node the number of unexecuted nearest same-type ancestors, and decrement along the
links of every executed batch: a node joins its type's typewise frontier when its count hits 0.
Each step costs O(batch + links leaving it), vectorized with numpy.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import GraphArrays
from ..ir.graph import padded_csr
from .base import ranges


class TypewiseLinks:
    """Nearest same-type links of one graph (NOTE: [Nearest same-type links]), computed once.

    **Fields:**
    - ``start``, ``target``: CSR; the nearest same-type descendants of node m are
      ``target[start[m]:start[m+1]]`` (each listed once).
    - ``num_ancestors``: per node, its number of nearest same-type ancestors.
    """

    def __init__(self, graph: GraphArrays):
        n = graph.num_nodes
        node_sig = graph.node_sig
        cons_start, cons = graph.consumers
        # A search from m only needs to enter nodes that lead to some m-typed node; this prunes the
        # long same-type-free tails (e.g. from a leaf embedding up a whole chain).
        leads_to = self._leads_to_type(graph)
        leads_by_type = {int(t): leads_to[:, j].tolist() for j, t in enumerate(graph.used_sids)}
        start = np.zeros(n + 1, dtype=np.int64)
        targets: list[int] = []
        cons_list = cons.tolist()
        cons_bounds = cons_start.tolist()
        sig_list = node_sig.tolist()
        for m in range(n):
            t = sig_list[m]
            col = leads_by_type[t]
            found: list[int] = []
            seen = set()
            stack = cons_list[cons_bounds[m]:cons_bounds[m + 1]]
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                if sig_list[x] == t:
                    found.append(x)
                elif col[x]:
                    stack.extend(cons_list[cons_bounds[x]:cons_bounds[x + 1]])
            found.sort()
            targets.extend(found)
            start[m + 1] = len(targets)
        self.start = start
        self.target = np.asarray(targets, dtype=np.int64)
        self.num_ancestors = np.bincount(self.target, minlength=n).astype(np.int64)
        self.table = padded_csr(self.start, self.target, n)   # see TypewiseFrontier.run

    @staticmethod
    def _leads_to_type(graph: GraphArrays) -> np.ndarray:
        """bool [nodes, used types]: whether some node of that type is a strict descendant."""
        n, types = graph.num_nodes, graph.used_sids
        leads = np.zeros((n, len(types)), dtype=bool)
        if n == 0:
            return leads
        producer, consumer = graph.edges
        column = np.searchsorted(types, graph.node_sig)
        below = np.zeros((n, len(types)), dtype=bool)   # "is or leads to" per type
        below[np.arange(n), column] = True
        # Reverse depth order: a consumer is always strictly deeper than its producer.
        depth = graph.node_depth
        order = np.argsort(-depth[consumer], kind="stable")
        producer, consumer = producer[order], consumer[order]
        cuts = np.flatnonzero(np.diff(depth[consumer])) + 1
        for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(consumer)])), strict=True):
            p, c = producer[lo:hi], consumer[lo:hi]
            np.logical_or.at(leads, p, below[c])
            below[p] |= leads[p]
        return leads


class TypewiseFrontier:
    """Size of every type's typewise frontier, updated as batches run.

    ``size[sid]`` is |typewise_frontier(sid)|. Call ``run(batch)`` with the nodes of each batch the
    ordinary Frontier runs (one type, all ready), in schedule order.

    **Example:**

    >>> tw = TypewiseFrontier(graph); frontier = Frontier(graph)
    >>> r = reward(frontier.ready_count(sid), tw.size[sid]); tw.run(frontier.run(sid))
    """

    def __init__(self, graph: GraphArrays, links: TypewiseLinks | None = None):
        self.links = links if links is not None else TypewiseLinks(graph)
        self.node_sig = graph.node_sig
        n = graph.num_nodes
        # As in the Frontier (NOTE: [Lean frontier]): links padded into a table whose padding
        # points at a sentinel slot n that never reaches 0.
        self.pending = np.empty(n + 1, dtype=np.int64)
        self.pending[:n] = self.links.num_ancestors
        self.pending[n] = np.iinfo(np.int64).max
        self.table = self.links.table
        self.size = np.bincount(graph.node_sig[self.pending[:n] == 0], minlength=len(graph.sigs)).astype(np.int64)

    def run(self, batch: np.ndarray) -> None:
        sid = int(self.node_sig[batch[0]])
        self.size[sid] -= len(batch)
        if self.table is not None:
            linked = self.table[batch].reshape(-1)
        else:
            linked = self.links.target[ranges(self.links.start, batch)]
        if len(linked):
            # All links of a batch stay within its type; repeated targets need every decrement.
            pending = self.pending
            np.subtract.at(pending, linked, 1)
            joined = linked[pending[linked] == 0]
            if len(joined) > 1:
                joined.sort()
                self.size[sid] += 1 + int(np.count_nonzero(joined[1:] != joined[:-1]))
            else:
                self.size[sid] += len(joined)

    def members(self, sid: int, executed: np.ndarray) -> np.ndarray:
        """Node ids of type ``sid``'s typewise frontier (``executed``: bool per node). For tests and
        debugging; O(nodes)."""
        return np.flatnonzero((self.pending[:-1] == 0) & (self.node_sig == sid) & ~executed)


def reward(ready: int, typewise_size: int) -> float:
    """ED-Batch reward of running ``ready`` nodes of a type whose typewise frontier has
    ``typewise_size`` nodes: ``-1 + ready / typewise_size``."""
    return -1.0 + ready / typewise_size

