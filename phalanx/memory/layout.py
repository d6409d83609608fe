"""Arena layout: which row of which arena holds each value.

Every value of one abstract value (shape, dtype) lives in one arena, a single tensor with a leading
row dimension. Rows are single-assignment: each is written once, by the batch producing it, before
any read (NOTE: [Single-assignment arenas] in runtime/executor.py). Hard constraint: each batch
writes its outputs to consecutive rows, in the batch's node order, so a batch's outputs are one
``copy_`` into a slice.

``plan_layout`` assigns rows in schedule order, each batch's nodes in *reader order* (NOTE: [Reader
order]). The memory planner (memory/planner.py, ``plan=``) can instead search node orders and arena
orders so more operand lists read a slice; it produces the same Layout type.

NOTE: [Reader order] A batch's rows are read by later batches; a read is a slice (no gather) when
the values it reads sit in consecutive rows in the reader's order. So each batch is ordered by its
*first reader*: walking the schedule backwards (every reader is then already ordered), a node's key
is the smallest (reader batch, operand position, reader's row) over the reads of its outputs; nodes
nobody reads go last, in schedule order. For a chain (an LSTM over sentences) the step t+1 batch
reads a prefix of step t's rows in place (sentences that go on come first, in step t+1's order); a
producer read once per node (an input projection hoisted out of the steps) is laid out step by
step, so every step reads one slice of it; a tree's left and right children of one depth become
two slices when one parent batch reads both. One numpy pass per batch, no search: it costs ~10 us
a batch where the planner's strategies cost milliseconds.
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


def plan_layout(graph: GraphArrays, schedule: Schedule, reorder: bool = True) -> Layout:
    """Rows in schedule order: batch by batch, output by output, each batch's nodes in reader order
    (NOTE: [Reader order]; ``reorder=False``: in the schedule's own order). Vectorized: a value's
    row is its rank among the values of its arena in that order."""
    value_row = np.full(graph.num_values, -1, dtype=np.int64)
    batches = reader_order(graph, schedule.batches) if reorder else schedule.batches
    vids = output_values(graph, batches, schedule.sids)
    arena = graph.value_aval_id[vids]
    arena_rows = np.bincount(arena, minlength=len(graph.avals)).astype(np.int64)
    if len(vids) and (arena == arena[0]).all():
        value_row[vids] = np.arange(len(vids))
    elif len(vids):
        by_arena = np.argsort(arena, kind="stable")
        arena_start = np.cumsum(arena_rows) - arena_rows
        value_row[vids[by_arena]] = np.arange(len(vids)) - arena_start[arena[by_arena]]
    return Layout(value_row, arena_rows, batches, output_vids=vids)


def reader_order(graph: GraphArrays, batches: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Each batch's nodes ordered by their first reader (NOTE: [Reader order])."""
    num = len(batches)
    lazy = np.flatnonzero(graph.arg_code >= 0) if num else ()
    if not len(lazy):
        return tuple(batches)
    sizes = np.fromiter(map(len, batches), dtype=np.int64, count=num)
    order = np.concatenate(batches)
    start = np.zeros(num + 1, dtype=np.int64)
    np.cumsum(sizes, out=start[1:])
    batch_of = np.full(graph.num_nodes, num, dtype=np.int64)
    batch_of[order] = np.repeat(np.arange(num), sizes)
    row = np.arange(graph.num_nodes, dtype=np.int64)          # position inside its batch
    row[order] = np.arange(len(order)) - np.repeat(start[:-1], sizes)
    # Every read of a node's output; its static key (reader batch, operand position) in the high part.
    reader = graph.arg_owner[lazy]
    producer = graph.value_node[graph.arg_code[lazy]]
    position = lazy - graph.arg_start[reader]
    width = int(sizes.max()) + 1
    static = (batch_of[reader] * (int(position.max()) + 1) + position) * width
    # Each node's first read by static key (of two reads with the same static key, either: only
    # their readers' final rows could tell them apart). Unread nodes: the largest static key, and
    # "read" by themselves, so they keep their order.
    static_of = np.full(graph.num_nodes, (num + 1) * (int(position.max()) + 1) * width, dtype=np.int64)
    np.minimum.at(static_of, producer, static)
    first = static == static_of[producer]
    reader_of = np.arange(graph.num_nodes, dtype=np.int64)
    reader_of[producer[first]] = reader[first]
    out = list(batches)
    positions = np.arange(width)
    for b in range(num - 1, -1, -1):      # readers are later batches: already in their final order
        nodes = out[b]
        if len(nodes) < 2:
            continue
        nodes = nodes[(static_of[nodes] + row[reader_of[nodes]]).argsort(kind="stable")]
        out[b] = nodes
        row[nodes] = positions[:len(nodes)]
    return tuple(out)


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
