"""Arena layout: which row of which arena holds each value.

Every value of one abstract value (shape, dtype) lives in one arena, a single tensor with a leading
row dimension. Rows are single-assignment: each is written once, by the batch producing it, before
any read (NOTE: [Single-assignment arenas] in runtime/executor.py). Hard constraint: each batch
writes its outputs to consecutive rows, in the batch's node order, so a batch's outputs are one
``copy_`` into a slice.

``plan_layout`` assigns rows in schedule order, each batch's nodes in *reader order* (NOTE: [Reader
order]); in an inference flush the blocks of a run of twin batches (NOTE: [Op-type groups],
cells/group.py) go output by output, member by member, so each output of the run is one slice. The memory planner (memory/planner.py, ``plan=``) can instead search node orders and arena
orders so more operand lists read a slice; it produces the same Layout type.

NOTE: [Reader order] A batch's rows are read by later batches; a read is a slice (no gather) when
the values it reads sit in consecutive rows in the reader's order. So each batch is ordered by its
*first reader*: walking the schedule backwards (every reader is then already ordered), a node's key
is the smallest (reader batch, operand position, reader's row) over the reads of its outputs; nodes
nobody reads go last, in schedule order. For a chain (an LSTM over sentences) the step t+1 batch
reads a prefix of step t's rows in place (sentences that go on come first, in step t+1's order); a
producer read once per node (an input projection hoisted out of the steps) is laid out step by
step, so every step reads one slice of it; a tree's left and right children of one depth become
two slices when one parent batch reads both. First reads are found for the whole flush at once,
then each batch that has two or more nodes someone reads is sorted (a batch's order depends on its
readers' final rows, so the batches are visited in turn), no search. Natively (memory/_plan.c,
NOTE: [Native plan]) that is one C pass over the operands and one merge sort per batch not
already in order (about a microsecond a batch); ``reader_order_numpy`` is the same in whole-flush
numpy passes (``_first_reads``) plus a few numpy calls per batch, the fallback without the
extension. Either costs microseconds where the planner's strategies cost milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import GraphArrays
from ..ir.op_table import op_type_table
from ..schedule.base import Schedule
from ..schedule.groups import group_runs
from . import native


@dataclass(frozen=True, eq=False)
class Layout:
    """``value_row[v]``: row of value v in arena ``graph.value_aval_id[v]``; ``arena_rows[a]``: rows of
    arena a; ``batches``: the schedule's batches in the node order the layout chose. ``output_vids``:
    ``output_values`` of these batches when the layout computed them, with every (batch, output)
    block in consecutive rows (``plan_layout``; the plan stage then skips recomputing and checking
    them); None otherwise. ``order`` and ``node_start``: ``batches`` concatenated and each batch's
    start in it (batch b is ``order[node_start[b]:node_start[b+1]]``) when the layout made them
    (``plan_layout``), so the steps do not make them again; None otherwise."""

    value_row: np.ndarray
    arena_rows: np.ndarray
    batches: tuple[np.ndarray, ...]
    output_vids: np.ndarray | None = None
    order: np.ndarray | None = None
    node_start: np.ndarray | None = None
    groups: tuple = ()      # (first batch, members) per run of twin batches (NOTE: [Op-type groups])


def plan_layout(graph: GraphArrays, schedule: Schedule, reorder: bool = True) -> Layout:
    """Rows in schedule order: batch by batch, output by output, each batch's nodes in reader order
    (NOTE: [Reader order]; ``reorder=False``: in the schedule's own order). Vectorized: a value's
    row is its (batch, output) block's first row in its arena plus its place in the block."""
    value_row = np.full(graph.num_values, -1, dtype=np.int64)
    batches, order, start = _reader_order(graph, schedule.batches) if reorder else concatenated(schedule.batches)
    vids, block_size = _output_blocks(graph, batches, schedule.sids, order, start)
    arena_rows = np.zeros(len(graph.avals), dtype=np.int64)
    groups = group_runs(graph, schedule, order, start)
    if not len(vids):
        return Layout(value_row, arena_rows, batches, vids, order, start)
    block_start = np.zeros(len(block_size) + 1, dtype=np.int64)
    np.add.accumulate(block_size, out=block_start[1:])
    block_arena = graph.value_aval_id[vids[block_start[:-1]]]
    arena_rows += np.bincount(block_arena, weights=block_size, minlength=len(graph.avals)).astype(np.int64)
    if not groups and arena_rows[block_arena[0]] == len(vids):        # one arena: rows in output order
        value_row[vids] = np.arange(len(vids))
        return Layout(value_row, arena_rows, batches, vids, order, start)
    # Blocks in row order: (batch, output), except each group run's: (output, member).
    seq = _group_blocks(graph, schedule.sids, groups, len(block_size)) if groups else None
    # Each block's first row: the rows of the blocks before it (in row order) in its arena.
    block_row = np.zeros(len(block_size), dtype=np.int64)
    for a in arena_rows.nonzero()[0].tolist():
        mine = (block_arena == a).nonzero()[0] if seq is None else seq[block_arena[seq] == a]
        block_row[mine] = np.add.accumulate(block_size[mine]) - block_size[mine]
    value_row[vids] = np.arange(len(vids)) + (block_row - block_start[:-1]).repeat(block_size)
    return Layout(value_row, arena_rows, batches, vids, order, start, groups)


def _group_blocks(graph: GraphArrays, sids, groups, num_blocks: int) -> np.ndarray:
    """The (batch, output) blocks in the order their rows are assigned: NOTE: [Op-type groups] puts a
    run's blocks output by output, member by member, so each output of the run is one slice."""
    types = op_type_table(graph.sigs, sids)
    num_out = types.num_out[types.slot[np.array(sids, dtype=np.int64)]]
    first = np.zeros(len(num_out) + 1, dtype=np.int64)      # batch b's blocks: first[b]:first[b+1]
    np.add.accumulate(num_out, out=first[1:])
    head, members = np.array(groups, dtype=np.int64).T
    outs = num_out[head]                # every member of a run has its head's outputs
    count = members * outs
    lo = first[head]
    # Position i of a run's blocks is output i // members of member i % members.
    i = np.arange(int(count.sum())) - (np.add.accumulate(count) - count).repeat(count)
    m, k = members.repeat(count), outs.repeat(count)
    seq = np.arange(num_blocks)
    seq[lo.repeat(count) + i] = lo.repeat(count) + (i % m) * k + i // m
    return seq


def reader_order(graph: GraphArrays, batches: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Each batch's nodes ordered by their first reader (NOTE: [Reader order]): natively in one pass
    (NOTE: [Native plan] in memory/_plan.c), else ``reader_order_numpy``."""
    return _reader_order(graph, batches)[0]


def concatenated(batches) -> tuple[tuple, np.ndarray, np.ndarray]:
    """``batches`` as a tuple, the batches concatenated, and each one's start in that."""
    order = np.concatenate(batches) if len(batches) else np.zeros(0, dtype=np.int64)
    start = np.zeros(len(batches) + 1, dtype=np.int64)
    np.add.accumulate(np.fromiter(map(len, batches), dtype=np.int64, count=len(batches)), out=start[1:])
    return tuple(batches), order, start


def _reader_order(graph: GraphArrays, batches) -> tuple[tuple, np.ndarray, np.ndarray]:
    """``reader_order``, with its batches concatenated and their starts (``concatenated``)."""
    if native.reader_order is None or not batches:
        return concatenated(reader_order_numpy(graph, batches))
    _, order, start = concatenated(batches)
    done = native.reader_order(order, start, graph.arg_start, graph.arg_code, graph.value_node)  # sorts order
    out = list(batches)
    if done:
        bounds = start.tolist()
        for b in done:
            out[b] = order[bounds[b]:bounds[b + 1]]
    return tuple(out), order, start


def reader_order_numpy(graph: GraphArrays, batches: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """``reader_order`` in numpy: whole-flush passes, then a few numpy calls per batch that has two
    or more nodes someone reads (the native twin's reference, and its fallback)."""
    num = len(batches)
    lazy = (graph.arg_code >= 0).nonzero()[0] if num else ()
    if not len(lazy):
        return tuple(batches)
    _, order, start = concatenated(batches)
    sizes = start[1:] - start[:-1]
    n = graph.num_nodes
    batch_of = np.full(n, num, dtype=np.int64)
    batch_of[order] = np.arange(num).repeat(sizes)
    row = np.arange(n)          # position inside its batch
    row[order] = np.arange(len(order)) - start[:-1].repeat(sizes)
    # Every read of a node's output; its static key (reader batch, operand position).
    reader = graph.arg_owner[lazy]
    producer = graph.value_node[graph.arg_code[lazy]]
    position = lazy - graph.arg_start[reader]
    stride = int(position.max()) + 1
    static_of, reader_of = _first_reads(n, reader, producer, batch_of[reader] * stride + position,
                                        (num + 1) * stride)
    # Sort keys: static key, then the reader's row (its batch is later: final when this one sorts).
    width = int(sizes.max()) + 1
    static_in, reader_in = static_of[order] * width, reader_of[order]
    bounds = start.tolist()
    # Batches of one node, or whose nodes nobody reads, keep their order: skip them.
    read = np.logical_or.reduceat(static_in < (num + 1) * stride * width, bounds[:-1])
    out = list(batches)
    for b in ((sizes > 1) & read).nonzero()[0][::-1].tolist():
        lo, hi = bounds[b], bounds[b + 1]
        nodes = order[lo:hi][(static_in[lo:hi] + row[reader_in[lo:hi]]).argsort(kind="stable")]
        out[b] = nodes
        row[nodes] = _POSITIONS[:hi - lo] if hi - lo <= len(_POSITIONS) else np.arange(hi - lo)
    return tuple(out)


_POSITIONS = np.arange(4096)


def _first_reads(n: int, reader, producer, static, unread: int) -> tuple[np.ndarray, np.ndarray]:
    """Per node, the static key and the reader of its first read: the smallest static key; of two
    reads with the same static key, the later reader (only the readers' final rows could tell them
    apart). Unread nodes: the key ``unread`` (past every read), "read" by themselves so they keep
    their order. One ``minimum.at`` over (static key, reversed reader) finds both when that fits
    an int64; otherwise the key first, then a scatter of the readers of first reads."""
    big = n + 1
    if unread * big < 2 ** 62:
        first = (unread * big + n) - np.arange(n)
        np.minimum.at(first, producer, static * big + (n - reader))
        return first // big, n - first % big
    static_of = np.full(n, unread, dtype=np.int64)
    np.minimum.at(static_of, producer, static)
    first = static == static_of[producer]
    reader_of = np.arange(n)
    reader_of[producer[first]] = reader[first]      # of equal keys the last (largest) reader wins
    return static_of, reader_of


def output_values(graph: GraphArrays, batches, sids) -> np.ndarray:
    """The values ``batches`` produce, batch by batch, output by output, in each batch's node order:
    one segment of ``len(batch)`` values per (batch, output)."""
    return _output_blocks(graph, batches, sids)[0]


def _output_blocks(graph: GraphArrays, batches, sids, order=None, start=None) -> tuple[np.ndarray, np.ndarray]:
    """``output_values`` and the size of each of its (batch, output) segments (``order``, ``start``:
    ``batches`` concatenated and their starts, made here when not given)."""
    if not batches:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    types = op_type_table(graph.sigs, sids)
    if order is None:
        _, order, start = concatenated(batches)
    sizes = start[1:] - start[:-1]
    first = graph.node_first_value[order]
    if types.single_output:
        return first, sizes
    # Block (b, k) is output k of batch b's nodes: ``first`` of its nodes, plus k.
    num_out = types.num_out[types.slot[np.array(sids, dtype=np.int64)]]
    block_size = sizes.repeat(num_out)
    block_start = np.add.accumulate(block_size) - block_size
    node_start = start[:-1]
    k = np.arange(len(block_size)) - (np.add.accumulate(num_out) - num_out).repeat(num_out)
    node = np.arange(int(block_size.sum())) + (node_start.repeat(num_out) - block_start).repeat(block_size)
    return first[node] + k.repeat(block_size), block_size


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
