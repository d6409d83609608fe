"""The executor's per-batch loops: native (runtime/_groups.c) when the extension was built, else the
Python twins below, which behave the same. ``PHALANX_NATIVE=0`` in the environment selects the
twins (``*_py``, always defined: tests compare the two).

- ``group_reads(members, arenas, read)``: NOTE: [Native group reads] (runtime/_groups.c): the views
  a run of twin batches (NOTE: [Op-type groups], cells/group.py) computes into and reads: None when
  an output is not one arena slice over every member's rows, else ``(outputs, operands, joined)``:
  one view per output; per operand one view over every member's rows where they are adjacent in
  one arena (``joined[p]``), else the list of each member's own read (``read(op, arenas)`` for an
  operand that is not a row slice).
"""
from __future__ import annotations

import os

from .steps import SLICE


def group_reads_py(members: list, arenas: list, read):
    if not members:
        return None
    into = []
    for k in range(len(members[0].outputs)):
        joint = _one_slice([m.outputs[k] for m in members], arenas)
        if joint is None:
            return None
        into.append(joint)
    operands, joined = [], []
    for p in range(len(members[0].operands)):
        ops = [m.operands[p] for m in members]
        joint = _one_slice(ops, arenas)
        joined.append(joint is not None)
        operands.append(joint if joint is not None else [
            arenas[w][rows[0]:rows[1]] if kind == SLICE else read((kind, w, rows), arenas) for kind, w, rows in ops])
    return into, operands, tuple(joined)


def _one_slice(ops: list, arenas: list):
    """The members' reads (or writes) ``ops`` as one arena slice, where each is a slice of one arena
    starting where the one before ends; else None. (``where`` and ``payload`` are tensors for other
    kinds of operand: compared only once the kind is a slice.)"""
    kind, arena, rows = ops[0]
    if kind != SLICE:
        return None
    hi = rows[1]
    for kind_m, arena_m, rows_m in ops[1:]:
        if kind_m != SLICE or arena_m != arena or rows_m[0] != hi:
            return None
        hi = rows_m[1]
    return arenas[arena][rows[0]:hi]


NATIVE = False
group_reads = group_reads_py
if os.environ.get("PHALANX_NATIVE", "1") != "0":
    try:
        from ._groups import group_reads  # noqa: F811
        NATIVE = True
    except ImportError:       # the extension was not built (no compiler at install time)
        pass
