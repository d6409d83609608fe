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
from ..schedule.base import Schedule, ranges


@dataclass(frozen=True, eq=False)
class Layout:
    """``value_row[v]``: row of value v in arena ``graph.value_aval_id[v]``; ``arena_rows[a]``: rows of
    arena a; ``batches``: the schedule's batches in the node order the layout chose. ``output_vids``:
    ``output_values`` of these batches when the layout computed them, with every (batch, output)
    block in consecutive rows (``plan_layout``; the plan stage then skips recomputing and checking
    them); None otherwise."""

    value_row: np.ndarray
    arena_rows: np.ndarray
    batches: tuple[np.ndarray, ...]
    output_vids: np.ndarray | None = None


def plan_layout(graph: GraphArrays, schedule: Schedule) -> Layout:
    """Rows in schedule order: batch by batch, output by output, each batch's nodes in its order.
    Vectorized: a value's row is its rank among the values of its arena in that order."""
    value_row = np.full(graph.num_values, -1, dtype=np.int64)
    vids = output_values(graph, schedule.batches, schedule.sids)
    arena = graph.value_aval_id[vids]
    arena_rows = np.bincount(arena, minlength=len(graph.avals)).astype(np.int64)
    if len(vids) and (arena == arena[0]).all():
        value_row[vids] = np.arange(len(vids))
    elif len(vids):
        by_arena = np.argsort(arena, kind="stable")
        arena_start = np.cumsum(arena_rows) - arena_rows
        value_row[vids[by_arena]] = np.arange(len(vids)) - arena_start[arena[by_arena]]
    return Layout(value_row, arena_rows, schedule.batches, output_vids=vids)


def output_values(graph: GraphArrays, batches, sids) -> np.ndarray:
    """The values ``batches`` produce, batch by batch, output by output, in each batch's node order:
    one segment of ``len(batch)`` values per (batch, output)."""
    if not batches:
        return np.zeros(0, dtype=np.int64)
    sizes = np.array([len(b) for b in batches], dtype=np.int64)
    num_out = np.array([graph.sigs[sid].num_outputs for sid in sids], dtype=np.int64)
    first = graph.node_first_value[np.concatenate(batches)]
    node_start = np.zeros(len(batches) + 1, dtype=np.int64)
    np.cumsum(sizes, out=node_start[1:])
    out_batch = np.repeat(np.arange(len(batches)), num_out)
    k_of = np.arange(len(out_batch)) - np.repeat(np.cumsum(num_out) - num_out, num_out)
    return first[ranges(node_start, out_batch)] + np.repeat(k_of, sizes[out_batch])


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
