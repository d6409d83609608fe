"""Distinct rows: a batch whose rows repeat runs once per distinct row (training and inference).

NOTE: [Distinct rows] a cell whose operands are all numbers (a TreeLSTM leaf's word id, a tagger's
embedding lookup) computes the same outputs for the same numbers: every leaf of one word in a
mini-batch repeats the embedding lookup, the input GEMM and the gate math, forward and backward
(a mini-batch of 64 EWT trees: 1521 leaves, 660 distinct words). In a flush (a training one:
``TrainingRun.forward``; an inference one: ``run_inference``) such a batch runs its kernel on its
distinct rows only (``torch.unique`` over the numbers' bits, so -0.0 and
0.0 or two NaN payloads stay apart) and writes each row's outputs from its distinct row (one
``index_select`` per output, into its arena rows). The backward sums the output gradients of
repeated rows into their distinct row (``index_add_``), which is exact: every repeat has the same
Jacobian, so ``sum_i J^T g_i = J^T sum_i g_i``. The weight GEMMs shrink with the rows (the input
GEMM, its input gradient and its deferred weight gradient, NOTE: [Deferred GEMM gradients]).

Only where that is sound: a traced cell program (aten ops, no user code) with no random op and no
mutation (dropout draws a mask per row; a buffer update counts calls), and every operand a number
or rows of an earlier distinct-rows batch (NOTE: [Row classes]).
Only where it pays: at least ``MIN_ROWS`` rows and at most ``MAX_FRACTION`` of them distinct (the
``unique`` and the row copies cost tens of microseconds). Forward values are the same computation
on the same inputs; gradients are summed in another order (float rounding).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from ..cells.aot import program_of
from ..ir.signature import Signature
from .steps import GATHER, NUMBERS, SLICE, Step

MIN_ROWS = 32
MAX_FRACTION = 0.75

_PURE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # program -> bool


@dataclass(slots=True, eq=False)
class DistinctRows:
    """A batch run on its distinct rows: ``step`` (size = distinct rows, their first instances, for
    error messages and NOTE: [Rows the loss does not use]), ``inverse`` (row -> distinct row),
    ``first`` (distinct row -> the batch's row it was read from) where operands are arena rows
    (NOTE: [Row classes]), their gradients go back there."""

    step: Step
    inverse: torch.Tensor
    first: "torch.Tensor | None" = None


def _pure_graph(graph: fx.Graph) -> bool:
    """No op of ``graph`` draws random numbers or mutates a tensor."""
    for node in graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
            if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
                return False
        elif node.op in ("call_module", "call_method"):
            return False
    return True


def pure(sig: Signature, flags: tuple) -> bool:
    """Are ``sig``'s outputs a function of its operands and parameters alone, row by row?"""
    if "ragged" in sig.meta or "stack_dim" in sig.meta:
        return False
    return _pure_program(program_of(sig, flags))


def _pure_program(program) -> bool:
    if program is None or program.mode != "traced" or program.graph is None or not program.options.distinct_rows:
        return False
    found = _PURE.get(program)
    if found is None:
        found = _PURE[program] = _pure_graph(program.graph)
    return found


_MACS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # program -> GEMM MACs per row
# Inference runs a batch on its distinct rows only where each row's GEMMs do at least this many
# multiply-adds (a 256 x 256 weight): below it the unique and the row copies cost more than the
# GEMM rows they save (the tagger at hidden 64: 16K per row, 1.13x slower with, same process). A
# batch with no GEMM (an embedding lookup) still runs on its distinct rows: it is cheap, and the
# batches that read its rows can then (NOTE: [Row classes]). Training saves the backward's GEMMs too.
MIN_INFERENCE_MACS = 256 * 256


def worth_in_inference(sig: Signature, flags: tuple) -> bool:
    return _worth_program(program_of(sig, flags))


def _worth_program(program) -> bool:
    if program is None or program.graph is None:
        return False
    macs = _MACS.get(program)
    if macs is None:
        macs = 0
        for node in program.graph.nodes:
            if node.op == "call_function" and node.target in (torch.ops.aten.addmm.default, torch.ops.aten.mm.default):
                val = getattr(node.args[-1], "meta", {}).get("val")
                if isinstance(val, torch.Tensor) and val.dim() == 2:
                    macs += val.shape[0] * val.shape[1]
        _MACS[program] = macs
    return macs == 0 or macs >= MIN_INFERENCE_MACS


def _bits(t: torch.Tensor) -> "torch.Tensor | None":
    """A number column as integers that are equal exactly when the values are the same bits."""
    if t.dtype.is_complex:
        return None
    if t.dtype.is_floating_point:
        t = t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


class RowClasses:
    """NOTE: [Row classes] the rows a distinct-rows batch writes are equal exactly when they come from
    one distinct row: the flush numbers those classes (per arena, -1 for rows of other batches), so
    a later batch reading only such rows (a tagger token's input projection of its embedding) and
    numbers runs on its distinct operand rows too. Its operand gradients (summed over the repeats)
    go to each class's first row read, not spread over the repeats: the rows of one class are
    summed anyway by the backward of the batch that made them (``sum_rows``), the class's only
    producer. ``futile``: op types of this flush whose batch could not or did not pay (rows of no
    class, too few repeats), not tried again (a TreeLSTM's internal nodes)."""

    def __init__(self):
        self.of: dict[int, torch.Tensor] = {}       # arena -> class of each row
        self.count = 0
        self.futile: set[int] = set()

    def key(self, op, operand: torch.Tensor) -> "torch.Tensor | None":
        kind, where, payload = op
        if kind == NUMBERS:
            return _bits(operand)
        found = self.of.get(where)
        if found is None:
            return None
        if kind == SLICE:
            return found[payload[0]:payload[1]]
        return found.index_select(0, payload) if kind == GATHER else None

    def assign(self, step: Step, inverse: torch.Tensor, count: int, arenas: list) -> None:
        ids = inverse + self.count
        for kind, arena, rows in step.outputs:
            found = self.of.get(arena)
            if found is None:
                found = self.of[arena] = torch.full((len(arenas[arena]),), -1, dtype=ids.dtype, device=ids.device)
            if kind == SLICE:
                found[rows[0]:rows[1]] = ids
            else:
                found.index_copy_(0, rows, ids)
        self.count += count


def _row_ids(keys: list) -> tuple[int, torch.Tensor]:
    """(number of distinct rows, each row's distinct id) over several key columns: one 1-D
    ``unique`` per column, the ids combined column by column (``unique(dim=0)`` over stacked columns
    sorts whole rows and took ~0.8 ms per TreeLSTM mini-batch, more than the leaf's GEMM it saves at
    hidden 64). Combined ids stay below rows**2, so int64 never overflows."""
    found, inverse = torch.unique(keys[0], return_inverse=True)
    count = len(found)
    for key in keys[1:]:
        found, column = torch.unique(key, return_inverse=True)
        found, inverse = torch.unique(inverse * len(found) + column, return_inverse=True)
        count = len(found)
    return count, inverse


def candidate(step: Step, classes: RowClasses) -> bool:
    """Could ``step`` run on its distinct rows (before its operands are read)? Enough rows, an op type
    not found futile in this flush, every operand numbers or rows of a distinct-rows batch."""
    if step.size < MIN_ROWS or not step.operands or step.sig.sid in classes.futile:
        return False
    return all(kind == NUMBERS or (kind in (SLICE, GATHER) and where in classes.of)
               for kind, where, _ in step.operands)


def distinct_rows(step: Step, operands: list, flags: tuple,
                  classes: RowClasses) -> "tuple[DistinctRows, list] | None":
    """(the batch on its distinct rows, their operands), or None where it does not apply or pay. For
    a step ``candidate`` accepts."""
    size = step.size
    sid = step.sig.sid
    lazy = any(kind != NUMBERS for kind, _, _ in step.operands)
    if not pure(step.sig, flags):
        classes.futile.add(sid)
        return None
    keys = [classes.key(op, t) for op, t in zip(step.operands, operands, strict=True)]
    if any(k is None or k.dim() != 1 for k in keys):
        classes.futile.add(sid)
        return None
    rows_read = [k for op, k in zip(step.operands, keys, strict=True) if op[0] != NUMBERS]
    if rows_read and bool(torch.stack(rows_read).lt(0).any()):
        classes.futile.add(sid)         # reads rows of no class
        return None
    count, inverse = _row_ids(keys)
    if count > MAX_FRACTION * size:
        classes.futile.add(sid)
        return None
    first = _first_rows(inverse, count, size)
    picked = [t.index_select(0, first) if op[0] == NUMBERS
              else t.detach().index_select(0, first).requires_grad_(t.requires_grad)
              for op, t in zip(step.operands, operands, strict=True)]
    at = first.cpu().numpy()
    sub = Step(step.sig, step.nodes[at], count, step.operands, step.outputs, np.asarray(step.insts)[at])
    return DistinctRows(sub, inverse, first if lazy else None), picked


def on_distinct_numbers(program, numbers: list) -> "list | None":
    """Every row's outputs of ``program`` over number columns alone (the prefix of a reduced ragged
    program over every row of its op type in an inference flush: a lattice node's embedding and
    input projection of its character), computed once per distinct row and copied to the rest by one
    ``index_select`` per output (NOTE: [Distinct rows]); None where that is unsound or would not pay
    (the same rules as a batch's)."""
    size = len(numbers[0]) if numbers else 0
    if size < MIN_ROWS or not _pure_program(program) or not _worth_program(program):
        return None
    keys = [_bits(n) for n in numbers]
    if any(k is None or k.dim() != 1 for k in keys):
        return None
    count, inverse = _row_ids(keys)
    if count > MAX_FRACTION * size:
        return None
    first = _first_rows(inverse, count, size)
    outs = program([n.index_select(0, first) for n in numbers], count)
    return [o.index_select(0, inverse) for o in outs]


def _first_rows(inverse: torch.Tensor, count: int, size: int) -> torch.Tensor:
    """Each distinct row's first row (the one its operands are read from)."""
    rows = torch.arange(size, device=inverse.device)
    return torch.full((count,), size, dtype=rows.dtype, device=rows.device).scatter_reduce_(0, inverse, rows, "amin")


def write_rows(step: Step, outs, inverse: torch.Tensor, arenas: list) -> None:
    """Every row's outputs from its distinct row, straight into the arena rows."""
    for (kind, arena, rows), out in zip(step.outputs, outs, strict=True):
        out = out.detach()
        if kind == SLICE:
            torch.index_select(out, 0, inverse, out=arenas[arena][rows[0]:rows[1]])
        else:
            arenas[arena].index_copy_(0, rows, out.index_select(0, inverse))


def sum_rows(grad: torch.Tensor, inverse: torch.Tensor, count: int) -> torch.Tensor:
    """Output gradients of all rows summed into their distinct rows."""
    return grad.new_zeros((count, *grad.shape[1:])).index_add_(0, inverse, grad)


__all__ = ["DistinctRows", "MAX_FRACTION", "MIN_INFERENCE_MACS", "MIN_ROWS", "RowClasses", "candidate",
           "distinct_rows", "on_distinct_numbers", "pure", "sum_rows", "worth_in_inference", "write_rows"]
