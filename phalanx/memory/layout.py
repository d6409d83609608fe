"""Arena layout: which row of which arena holds each value.

Every value of one abstract value (shape, dtype) lives in one arena, a single tensor with a leading
row dimension. Rows are single-assignment: each is written once, by the batch producing it, before
any read (NOTE: [Single-assignment arenas] in runtime/executor.py). Hard constraint: each batch
writes its outputs to consecutive rows, in the batch's node order, so a batch's outputs are one
``copy_`` into a slice.

``plan_layout`` assigns rows in schedule order. The PQ-tree planner (memory/pqtree.py) can instead
reorder nodes inside batches and batches inside arenas so more operand lists read a slice; it
produces the same Layout type.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import GraphArrays
from ..schedule.base import Schedule


@dataclass(frozen=True, eq=False)
class Layout:
    """``value_row[v]``: row of value v in arena ``graph.value_aval_id[v]``; ``arena_rows[a]``: rows of
    arena a; ``batches``: the schedule's batches in the node order the layout chose."""

    value_row: np.ndarray
    arena_rows: np.ndarray
    batches: tuple[np.ndarray, ...]


def plan_layout(graph: GraphArrays, schedule: Schedule) -> Layout:
    value_row = np.full(graph.num_values, -1, dtype=np.int64)
    arena_rows = np.zeros(len(graph.avals), dtype=np.int64)
    for nodes, sid in zip(schedule.batches, schedule.sids, strict=True):
        first = graph.node_first_value[nodes]
        for k in range(graph.sigs[sid].num_outputs):
            vids = first + k
            arena = graph.value_aval_id[vids[0]]
            lo = arena_rows[arena]
            value_row[vids] = np.arange(lo, lo + len(nodes))
            arena_rows[arena] = lo + len(nodes)
    return Layout(value_row, arena_rows, schedule.batches)


def verify_layout(graph: GraphArrays, layout: Layout, outputs_consecutive: bool = False) -> None:
    """Raise AssertionError unless every value has a distinct row inside its arena (no two live
    values overlap: rows are single-assignment), and, if asked, each batch's outputs are consecutive."""
    assert (layout.value_row >= 0).all(), "a value has no row"
    key = graph.value_aval_id * (int(layout.arena_rows.max(initial=0)) + 1) + layout.value_row
    assert len(np.unique(key)) == graph.num_values, "two values share an arena row"
    assert (layout.value_row < layout.arena_rows[graph.value_aval_id]).all(), "row outside its arena"
    for nodes in layout.batches if outputs_consecutive else ():
        for k in range(graph.sigs[graph.node_sig[nodes[0]]].num_outputs):
            rows = layout.value_row[graph.node_first_value[nodes] + k]
            assert (np.diff(rows) == 1).all(), "a batch's outputs are not consecutive rows"
