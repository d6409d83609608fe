"""Executor: runs a schedule as one batched kernel call per batch, reading operands from arenas.

``build_steps`` (the plan stage) turns (graph, schedule, layout) into a list of Steps: per batch,
how to read each operand list (a slice view when its rows are consecutive and in batch order,
otherwise ONE ``index_select``) and where to write each output. ``run_inference`` executes the steps
under no_grad. ``run_training`` does the same inside one ``torch.autograd.Function`` whose backward
walks the steps in reverse, so results are ordinary autograd tensors and ``loss.backward()`` works.

NOTE: [Single-assignment arenas] every arena row is written exactly once, by the batch producing
it, before any batch reads it. Reads of rows that are already written are therefore stable, and in
training we read through ``.data`` views: they share memory but have their own version counter, so
autograd's in-place check does not fire when later batches write other rows of the same arena.

NOTE: [Batched backward] training runs each batch's kernel with grad enabled on detached operand
tensors and keeps (operands, outputs). Backward allocates one gradient arena per float arena,
seeds it with the result gradients, and for each batch in reverse order calls
``torch.autograd.grad`` once (outputs -> operands and the cell's parameters), then adds operand
gradients into the gradient arenas with the same slice / index that read them (``index_add_``
accumulates duplicates). Parameter gradients are summed and returned by the Function.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BatchExecutionError, PhalanxError
from ..ir.graph import GraphArrays
from ..ir.signature import ArgKind, Signature
from ..memory.layout import Layout
from ..schedule.base import Schedule
from ..stats import ReadCounts
from .kernels import kernel_for

# Operand read kinds (and output write kinds: SLICE or SCATTER).
SLICE, GATHER, NUMBERS, TENSORS = 0, 1, 2, 3
SCATTER = GATHER


@dataclass(slots=True, eq=False)
class Step:
    """One batch: ``operands[p] = (kind, arena_or_dtype, payload)``; ``outputs[k] = (kind, arena, rows)``
    with kind SLICE (rows = (lo, hi)) or SCATTER (rows = index tensor)."""

    sig: Signature
    nodes: np.ndarray
    size: int
    operands: list
    outputs: list


def build_steps(graph: GraphArrays, schedule: Schedule, layout: Layout) -> tuple[list[Step], ReadCounts]:
    counts = ReadCounts()
    steps = []
    value_row, value_arena = layout.value_row, graph.value_aval_id
    imms = graph.imms
    for nodes, sid in zip(layout.batches, schedule.sids, strict=True):
        sig = graph.sigs[sid]
        size = len(nodes)
        codes = graph.operand_codes(nodes)
        operands = []
        for p, kind in enumerate(sig.in_kinds):
            column = codes[:, p]
            if kind is ArgKind.LAZY:
                rows = value_row[column]
                arena = int(value_arena[column[0]])
                counts.operand_lists += 1
                lo = int(rows[0])
                if size == 1 or (rows[-1] - lo == size - 1 and (np.diff(rows) == 1).all()):
                    operands.append((SLICE, arena, (lo, lo + size)))
                    counts.in_place += 1
                else:
                    operands.append((GATHER, arena, torch.from_numpy(rows)))
                    counts.gathers += 1
                    counts.gather_bytes += size * sig.in_avals[p].nbytes
            elif kind is ArgKind.NUMBER:
                operands.append((NUMBERS, sig.in_avals[p].dtype, [imms[-1 - c] for c in column.tolist()]))
            else:
                operands.append((TENSORS, None, [imms[-1 - c] for c in column.tolist()]))
        first = graph.node_first_value[nodes]
        outputs = []
        for k in range(sig.num_outputs):
            rows = value_row[first + k]
            arena = int(value_arena[first[0] + k])
            lo = int(rows[0])
            counts.output_blocks += 1
            if size == 1 or (rows[-1] - lo == size - 1 and (np.diff(rows) == 1).all()):
                outputs.append((SLICE, arena, (lo, lo + size)))
            else:
                outputs.append((SCATTER, arena, torch.from_numpy(rows)))
                counts.scattered_outputs += 1
        steps.append(Step(sig, nodes, size, operands, outputs))
    return steps, counts


def allocate_arenas(graph: GraphArrays, layout: Layout) -> list[torch.Tensor]:
    return [torch.empty((int(n), *a.shape), dtype=a.dtype) for a, n in zip(graph.avals, layout.arena_rows, strict=True)]


def _read(op, arenas) -> torch.Tensor:
    kind, where, payload = op
    if kind == SLICE:
        return arenas[where][payload[0]:payload[1]]
    if kind == GATHER:
        return arenas[where].index_select(0, payload)
    if kind == NUMBERS:
        return torch.tensor(payload, dtype=where)
    return torch.stack([t.detach() for t in payload])


def _call(step: Step, operands: list) -> tuple:
    try:
        return kernel_for(step.sig, operands, step.size)(operands, step.size)
    except PhalanxError:
        raise
    except Exception as e:
        raise BatchExecutionError(f"{step.sig.name}: batched call over {step.size} nodes failed: "
                                  f"{type(e).__name__}: {e}") from e


def _write(step: Step, outs: tuple, arenas: list[torch.Tensor]) -> None:
    for (kind, arena, rows), out in zip(step.outputs, outs, strict=True):
        if kind == SLICE:
            arenas[arena][rows[0]:rows[1]].copy_(out)
        else:
            arenas[arena].index_copy_(0, rows, out)


def _output_grad(output, garenas) -> torch.Tensor:
    kind, arena, rows = output
    if kind == SLICE:
        return garenas[arena][rows[0]:rows[1]]
    return garenas[arena].index_select(0, rows)


def run_inference(steps: list[Step], arenas: list[torch.Tensor], profile=None) -> None:
    """Run every step under no_grad. ``profile``: a Stats whose per-op times are filled in."""
    with torch.no_grad():
        for step in steps:
            start = time.perf_counter() if profile is not None else 0.0
            _write(step, _call(step, [_read(op, arenas) for op in step.operands]), arenas)
            if profile is not None:
                profile.add_op_time(step.sig.name, step.size, time.perf_counter() - start)


class TrainingRun:
    """State shared by the forward and backward of one flush (see NOTE: [Batched backward])."""

    def __init__(self, steps: list[Step], arenas: list[torch.Tensor], result_index: list,
                 grad_inputs: list[torch.Tensor], stats=None, profile: bool = False):
        self.steps = steps
        self.arenas = arenas
        self.result_index = result_index      # [(arena, index tensor)] for each Function output
        self.grad_inputs = grad_inputs
        self.saved: list = []
        self.stats = stats                    # its backward_s is set when backward runs
        self.profile = stats if profile else None

    def forward(self) -> tuple[torch.Tensor, ...]:
        arenas, saved = self.arenas, self.saved
        with torch.enable_grad():
            for step in self.steps:
                start = time.perf_counter() if self.profile is not None else 0.0
                operands = []
                for op in step.operands:
                    kind = op[0]
                    if kind == SLICE:
                        t = arenas[op[1]][op[2][0]:op[2][1]].data
                    else:
                        t = _read(op, arenas)
                    # Arena reads always join the backward; stacked tensors only if one requires grad;
                    # numbers never.
                    if t.is_floating_point() and (kind <= GATHER or (kind == TENSORS and any(x.requires_grad
                                                                                              for x in op[2]))):
                        t.requires_grad_()
                    operands.append(t)
                outs = _call(step, operands)
                saved.append((operands, outs))
                with torch.no_grad():
                    _write(step, outs, arenas)
                if self.profile is not None:
                    self.profile.add_op_time(step.sig.name, step.size, time.perf_counter() - start)
        return tuple(arenas[a].index_select(0, idx) for a, idx in self.result_index)

    def backward(self, grads) -> tuple:
        start = time.perf_counter()
        arenas = self.arenas
        garenas = [torch.zeros_like(a) if a.is_floating_point() else None for a in arenas]
        for (arena, idx), g in zip(self.result_index, grads, strict=True):
            if g is not None and garenas[arena] is not None:
                garenas[arena].index_add_(0, idx, g)
        position = {id(t): i for i, t in enumerate(self.grad_inputs)}
        input_grads: list = [None] * len(self.grad_inputs)

        def accumulate(i, g):
            input_grads[i] = g if input_grads[i] is None else input_grads[i] + g

        for step, (operands, outs) in zip(reversed(self.steps), reversed(self.saved), strict=True):
            step_start = time.perf_counter() if self.profile is not None else 0.0
            out_list, gout_list = [], []
            for output, out in zip(step.outputs, outs, strict=True):
                if out.requires_grad:
                    out_list.append(out)
                    gout_list.append(_output_grad(output, garenas))
            if not out_list:
                continue
            wrt_ops = [p for p, t in enumerate(operands) if t.requires_grad]
            leaves = [t for t in step.sig.grad_leaves if id(t) in position]
            if not wrt_ops and not leaves:
                continue
            # retain_graph: a cell may read a tensor derived from parameters outside the run
            # (W2 = 2 * W); that graph is shared by every batch. Ours is freed with self.saved.
            grads_all = torch.autograd.grad(out_list, [operands[p] for p in wrt_ops] + leaves, gout_list,
                                            allow_unused=True, retain_graph=True)
            for p, g in zip(wrt_ops, grads_all[:len(wrt_ops)], strict=True):
                if g is None:
                    continue
                kind, where, payload = step.operands[p]
                if kind == SLICE:
                    garenas[where][payload[0]:payload[1]] += g
                elif kind == GATHER:
                    target = garenas[where]
                    if g.untyped_storage().data_ptr() == target.untyped_storage().data_ptr():
                        g = g.clone()   # autograd may hand back the output-gradient view itself
                    target.index_add_(0, payload, g)
                elif kind == TENSORS:
                    for row, t in enumerate(payload):
                        if id(t) in position:
                            accumulate(position[id(t)], g[row])
            for leaf, g in zip(leaves, grads_all[len(wrt_ops):], strict=True):
                if g is not None:
                    accumulate(position[id(leaf)], g)
            if self.profile is not None:
                self.profile.add_op_time(step.sig.name, step.size, time.perf_counter() - step_start, "backward_s")
        self.saved = []   # the per-batch graphs are freed: a second backward is an error
        if self.stats is not None:
            self.stats.backward_s = time.perf_counter() - start
        return tuple(input_grads)


class FlushFunction(torch.autograd.Function):
    """One autograd node for a whole flush: inputs are the parameters and per-instance tensors that
    require grad; outputs are the result rows, one tensor per result arena."""

    @staticmethod
    def forward(ctx, run: TrainingRun, *grad_inputs):
        ctx.set_materialize_grads(False)
        ctx.run = run
        outs = run.forward()
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return outs

    @staticmethod
    def backward(ctx, *grads):
        run = ctx.run
        if not run.saved and run.steps:
            raise PhalanxError("backward through a phalanx flush twice is not supported (its batched graph was freed)")
        return (None, *run.backward(grads))
