"""The memory planner: choose each batch's node order and every value's arena row so that as many
operand lists as possible are read in place (a slice view) instead of gathered.

NOTE: [Operand lists as chains] Once a batch's node order is fixed, the operand list of argument
position p is a sequence of values v_1..v_m. It can be read as a view exactly when v_1..v_m sit in
consecutive rows in that order, i.e. when every link v_i -> v_{i+1} is an adjacency of the final
arena order. A set of accepted lists is feasible exactly when its links form vertex-disjoint
paths (every value at most one successor and one predecessor, no cycle); the arena order is then
those paths concatenated. ``_LinkPlanner`` accepts lists greedily, largest byte savings first,
checking each link in O(1) (a path is tracked by its head and tail), and rolls a list back when a
link conflicts; rejected lists are gathered with one ``index_select``.

NOTE: [Why outputs are soft] ED-Batch requires each batch's outputs to be adjacent because its
kernels write them in place. phalanx kernels return a fresh tensor that is copied into the arena
either way, so a scattered write (``index_copy_``) costs about what a slice copy does. Output
blocks are therefore soft constraints with a small weight: kept when free, dropped when they
would cost an operand view. Scattered outputs are counted in the stats.

Batch node orders come from one of four strategies, and the planner keeps the best one under
its objective:
- ``reader``: the default layout's order (NOTE: [Reader order] in memory/layout.py): each batch
  ordered by its first reader, later batches first.
- ``instance``: nodes ordered by instance (largest instance first), then record order. Chains
  (taggers, decoders) become prefixes of the previous step's block.
- ``producer``: walking the schedule forward, each batch is ordered by where its first lazy
  operand lives (producer batch, then the producer's position in it), so a batch that reads
  several producer blocks (a tagger's scorer reading every step's state) reads them in block
  order, consistent with the chains inside the blocks.
- ``pqtree``: per arena, a PQ-tree (memory/pqtree.py, Booth & Lueker 1976) is reduced with every
  operand list as an unordered consecutive set, larger byte savings first, dropping those that
  would make the system unsatisfiable; a batch's order then follows the arena order of its largest
  accepted operand list, so coupled lists of one batch are aligned wherever the arrangement allows.

Objective: ``bytes`` (default) accepts lists largest first and keeps the layout with the most
bytes in place (least gather traffic); ``lists`` accepts smallest first and keeps the layout with
the most lists in place (fewest gather launches, which is what counts where launches dominate).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..ir.graph import GraphArrays
from ..ir.signature import ArgKind
from ..schedule.base import Schedule
from .layout import Layout, reader_order

# Output blocks weigh this fraction of their bytes: below any operand list, above nothing.
_OUTPUT_WEIGHT = 1e-3


@dataclass(frozen=True)
class PlanReport:
    """Which strategy won and what it placed (the executor's ReadCounts has the full picture)."""

    strategy: str
    in_place: int
    in_place_bytes: int
    seconds: float
    accepted: frozenset = frozenset()     # (batch index, position) of operand lists planned as views


class _LinkPlanner:
    """Greedy acceptance of ordered lists whose links must form disjoint paths (see NOTE above)."""

    def __init__(self, num_values: int):
        self.succ = np.full(num_values, -1, dtype=np.int64).tolist()
        self.pred = list(self.succ)
        # Valid only at path ends: tail_head[tail] = head of its path, head_tail[head] = its tail.
        self.tail_head = list(range(num_values))
        self.head_tail = list(range(num_values))

    def try_accept(self, seq: list[int]) -> bool:
        succ, pred, tail_head, head_tail = self.succ, self.pred, self.tail_head, self.head_tail
        log = []
        for u, v in zip(seq, seq[1:]):
            if succ[u] == v:
                continue
            h = tail_head[u]
            if succ[u] != -1 or pred[v] != -1 or h == v:
                for u2, v2, h2, t2, old_ht, old_th in reversed(log):
                    succ[u2] = -1
                    pred[v2] = -1
                    head_tail[h2] = old_ht
                    tail_head[t2] = old_th
                return False
            t = head_tail[v]
            log.append((u, v, h, t, head_tail[h], tail_head[t]))
            succ[u] = v
            pred[v] = u
            head_tail[h] = t
            tail_head[t] = h
        return True

    def order(self, values_in_production_order) -> list[int]:
        """Every path, emitted when its head is met in production order."""
        succ, pred = self.succ, self.pred
        out = []
        for v in values_in_production_order:
            if pred[v] == -1:
                while v != -1:
                    out.append(v)
                    v = succ[v]
        return out


def _instance_orders(graph: GraphArrays, schedule: Schedule) -> list[np.ndarray]:
    sizes = np.bincount(graph.node_inst, minlength=int(graph.node_inst.max(initial=-1)) + 1)
    rank = np.empty(len(sizes), dtype=np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    return [nodes[np.lexsort((nodes, rank[graph.node_inst[nodes]]))] for nodes in schedule.batches]


def _producer_orders(graph: GraphArrays, schedule: Schedule) -> list[np.ndarray]:
    batch_of = np.empty(graph.num_nodes, dtype=np.int64)
    for i, nodes in enumerate(schedule.batches):
        batch_of[nodes] = i
    rank = np.zeros(graph.num_nodes, dtype=np.int64)
    orders = []
    for nodes, sid in zip(_instance_orders(graph, schedule), schedule.sids, strict=True):
        kinds = graph.sigs[sid].in_kinds
        if ArgKind.LAZY in kinds:
            producers = graph.value_node[_fixed_codes(graph, nodes, len(kinds))[:, kinds.index(ArgKind.LAZY)]]
            nodes = nodes[np.lexsort((rank[producers], batch_of[producers]))]
        orders.append(nodes)
        rank[nodes] = np.arange(len(nodes))
    return orders


def _pqtree_orders(graph: GraphArrays, schedule: Schedule, lists) -> list[np.ndarray]:
    from .pqtree import PQTree

    trees: dict[int, PQTree] = {}
    accepted: dict[int, tuple[int, int]] = {}        # batch -> (bytes, position) of its best accepted list
    for weight, arena, batch_index, p, seq in sorted(lists, key=lambda x: -x[0]):
        if p < 0:
            continue
        tree = trees.get(arena)
        if tree is None:
            tree = trees[arena] = PQTree(np.flatnonzero(graph.value_aval_id == arena).tolist())
        if tree.reduce(seq) and batch_index not in accepted:
            accepted[batch_index] = (weight, p)
    position = np.zeros(graph.num_values, dtype=np.int64)
    for tree in trees.values():
        frontier = tree.frontier()
        position[frontier] = np.arange(len(frontier))
    orders = []
    for i, nodes in enumerate(schedule.batches):
        if i in accepted:
            p = accepted[i][1]
            codes = _fixed_codes(graph, nodes, p + 1)[:, p]
            nodes = nodes[np.argsort(position[codes], kind="stable")]
        orders.append(nodes)
    return orders


def _operand_lists(graph: GraphArrays, schedule: Schedule, orders: list[np.ndarray]):
    """(weight, arena, batch index, position or -1-k for output k, value sequence) per list."""
    lists = []
    for i, (nodes, sid) in enumerate(zip(orders, schedule.sids, strict=True)):
        sig = graph.sigs[sid]
        lazy = [p for p, k in enumerate(sig.in_kinds) if k is ArgKind.LAZY]
        if lazy:
            codes = _fixed_codes(graph, nodes, len(sig.in_kinds))
            for p in lazy:
                seq = codes[:, p].tolist()
                if len(set(seq)) == len(seq):          # a view cannot repeat a row
                    lists.append((len(seq) * sig.in_avals[p].nbytes, int(graph.value_aval_id[seq[0]]), i, p, seq))
        first = graph.node_first_value[nodes]
        for k, out in enumerate(sig.out_avals):
            seq = (first + k).tolist()
            lists.append((_OUTPUT_WEIGHT * len(seq) * out.nbytes, int(graph.value_aval_id[seq[0]]), i, -1 - k, seq))
    return lists


_ACCEPT_ORDER = {
    "bytes": lambda x: -x[0],                 # largest byte savings first (outputs weigh little)
    "lists": lambda x: (x[3] < 0, x[0]),      # operand lists before outputs, smallest first
}


def _layout_for(graph: GraphArrays, schedule: Schedule, orders: list[np.ndarray], strategy: str,
                objective: str = "bytes"):
    lists = _operand_lists(graph, schedule, orders)
    links = _LinkPlanner(graph.num_values)
    in_place_bytes = 0
    accepted = set()
    for weight, _, batch_index, p, seq in sorted(lists, key=_ACCEPT_ORDER[objective]):
        if links.try_accept(seq) and p >= 0:
            accepted.add((batch_index, p))
            in_place_bytes += weight
    production = [v for n, s in zip(orders, schedule.sids, strict=True)
                  for v in (graph.node_first_value[n][:, None] + np.arange(graph.sigs[s].num_outputs)).ravel().tolist()]
    order = np.asarray(links.order(production), dtype=np.int64)
    value_row = np.empty(graph.num_values, dtype=np.int64)
    arena_rows = np.zeros(len(graph.avals), dtype=np.int64)
    arena_of = graph.value_aval_id[order]
    for a in range(len(graph.avals)):
        mine = order[arena_of == a]
        value_row[mine] = np.arange(len(mine))
        arena_rows[a] = len(mine)
    report = PlanReport(strategy, len(accepted), int(in_place_bytes), 0.0, frozenset(accepted))
    return Layout(value_row, arena_rows, tuple(orders)), report


STRATEGIES = ("reader", "instance", "producer", "pqtree")
OBJECTIVES = tuple(_ACCEPT_ORDER)


def plan_memory(graph: GraphArrays, schedule: Schedule, strategy: str = "auto",
                objective: str = "bytes") -> tuple[Layout, PlanReport]:
    """Plan with ``strategy`` (``instance``, ``producer``, ``pqtree``), or ``auto``: each in that
    order until every operand list is in place; the best layout under ``objective`` (``bytes`` in
    place, or number of ``lists`` in place) wins."""
    start = time.perf_counter()
    if strategy not in ("auto", *STRATEGIES):
        raise ValueError(f"unknown planning strategy {strategy!r}; known: auto, {', '.join(STRATEGIES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown planning objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    score = (lambda r: r.in_place_bytes) if objective == "bytes" else (lambda r: (r.in_place, r.in_place_bytes))
    instance_orders = _instance_orders(graph, schedule)
    best = None
    for name in (STRATEGIES if strategy == "auto" else (strategy,)):
        if best is not None and best[1].in_place == _num_operand_lists(graph, schedule):
            break
        if name == "reader":
            orders = list(reader_order(graph, schedule.batches))
        elif name == "instance":
            orders = instance_orders
        elif name == "producer":
            orders = _producer_orders(graph, schedule)
        else:
            orders = _pqtree_orders(graph, schedule, _operand_lists(graph, schedule, instance_orders))
        layout, report = _layout_for(graph, schedule, orders, name, objective)
        if best is None or score(report) > score(best[1]):
            best = (layout, report)
    layout, report = best
    return layout, PlanReport(report.strategy, report.in_place, report.in_place_bytes, time.perf_counter() - start,
                              report.accepted)


def verify_plan(graph: GraphArrays, schedule: Schedule, layout: Layout, report: PlanReport) -> None:
    """Raise AssertionError unless the layout is valid (verify_layout), every batch is a permutation
    of the scheduled one, and every operand list the planner accepted is read in place: its rows
    are consecutive and in the batch's node order."""
    from .layout import verify_layout

    verify_layout(graph, layout)
    for i, (nodes, planned) in enumerate(zip(schedule.batches, layout.batches, strict=True)):
        assert np.array_equal(np.sort(nodes), np.sort(planned)), f"batch {i} was changed by the planner"
    for i, p in report.accepted:
        rows = layout.value_row[_fixed_codes(graph, layout.batches[i], p + 1)[:, p]]
        assert (np.diff(rows) == 1).all(), f"operand list {p} of batch {i} was accepted but is not in place"


def _num_operand_lists(graph: GraphArrays, schedule: Schedule) -> int:
    per_sig = {sid: sum(k is ArgKind.LAZY for k in graph.sigs[sid].in_kinds) for sid in set(schedule.sids)}
    return sum(per_sig[sid] for sid in schedule.sids)


def _fixed_codes(graph: GraphArrays, nodes: np.ndarray, arity: int) -> np.ndarray:
    """[len(nodes), arity] operand codes of the first ``arity`` operands: a ragged node's operand
    count varies within its op type (frontend/ragged.py), its fixed operands come first."""
    if len(nodes) == 0:
        return np.zeros((0, arity), dtype=np.int64)
    return graph.arg_code[graph.arg_start[nodes][:, None] + np.arange(arity)]
