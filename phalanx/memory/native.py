"""The plan stage's per-batch loops: native (memory/_plan.c, NOTE: [Native plan]) when the
extension was built, else the pure-Python twins below, which behave the same.
``PHALANX_NATIVE=0`` in the environment selects the twins (``*_py``, always defined: tests compare
the two).

- ``reader_order(order, bounds, arg_start, arg_code, value_node)``: NOTE: [Reader order] of a whole
  flush: sorts ``order`` (the batches concatenated; batch b is ``order[bounds[b]:bounds[b+1]]``)
  in place, returns the batches it sorted (None when no node reads another). Native only: its
  twin is memory/layout.py's numpy ``reader_order`` (``reader_order`` here is then None).
- ``list_reads(order, node_start, list_batch, list_pos, arg_start, arg_code, value_row,
  value_aval_id, codes, rows, broken, head, arena)``: every operand list's entries and whether each
  is a slice, in one pass, filled into the last five arrays. Native only: its twin is
  runtime/steps.py's numpy ``_list_reads`` (``list_reads`` here is then None).
- ``gather_runs(gathered, list_batch, list_pos, arena, list_start, rows, host)``: NOTE: [Fused
  gathers] of a flush in one pass: the rows of every gathered list, then of every run, written
  into ``host``; returns (entries written, lengths, runs as (batch, arena, first position, lists)).
  Native only: its twin is runtime/steps.py's numpy ``_gather_operands``.
- ``fill_operands(target, index, kind, arena, lo, size, views)``: ``target[index[i]] = (kind,
  arena[i], views[i])``, or ``(kind, arena[i], (lo[i], lo[i] + size[i]))`` when ``views`` is None;
  ``index`` None means ``i``.
- ``assemble_steps(step_type, batches, sids, sigs, sizes, lists, outs, node_start, operands,
  outputs, inst_of, fused_of, stacked)``: one ``step_type`` per batch, as runtime/steps.py's
  ``build_steps`` describes.

Integer arguments are int64 numpy arrays (the native module reads them through the buffer protocol).
"""
from __future__ import annotations

import os


def fill_operands_py(target, index, kind, arena, lo, size, views) -> None:
    at = range(len(arena)) if index is None else index.tolist()
    if views is not None:
        for i, a, view in zip(at, arena.tolist(), views[:len(arena)], strict=True):
            target[i] = (kind, a, view)
        return
    for i, a, first, n in zip(at, arena.tolist(), lo.tolist(), size.tolist(), strict=True):
        target[i] = (kind, a, (first, first + n))


def assemble_steps_py(step_type, batches, sids, sigs, sizes, lists, outs, node_start, operands, outputs,
                      inst_of, fused_of, stacked) -> list:
    steps = []
    for b, (nodes, sid, size, l0, l1, o0, o1, n0, n1) in enumerate(zip(
            batches, sids, sizes.tolist(), lists[:-1].tolist(), lists[1:].tolist(), outs[:-1].tolist(),
            outs[1:].tolist(), node_start[:-1].tolist(), node_start[1:].tolist(), strict=True)):
        fused = fused_of.get(b, ())
        whole = None
        if len(fused) == 1 and len(fused[0][2]) == l1 - l0 and sid not in stacked:
            whole = (fused[0][0], fused[0][1], [size] * (l1 - l0))     # NOTE: [Whole reads]
        outs_b = outputs[o0:o1]
        steps.append(step_type(sigs[sid], nodes, size, operands[l0:l1], outs_b, inst_of[n0:n1], fused, whole,
                               _joint(outs_b) if o1 - o0 > 1 else None))
    return steps


def _joint(outputs: list) -> "tuple | None":
    """NOTE: [Joint writes] (runtime/steps.py): (arena, lo, hi) if two or more outputs are row
    slices (kind 0) of one arena, each right after the last."""
    if len(outputs) < 2 or outputs[0][0] != 0:
        return None
    _, arena, (lo, hi) = outputs[0]
    for kind, other, rows in outputs[1:]:
        if kind != 0 or other != arena or rows[0] != hi:
            return None
        hi = rows[1]
    return (arena, lo, hi)


NATIVE = False
reader_order = list_reads = gather_runs = None
fill_operands, assemble_steps = fill_operands_py, assemble_steps_py
if os.environ.get("PHALANX_NATIVE", "1") != "0":
    try:
        from ._plan import assemble_steps, fill_operands, gather_runs, list_reads, reader_order  # noqa: F811
        NATIVE = True
    except ImportError:       # the extension was not built (no compiler at install time)
        pass
