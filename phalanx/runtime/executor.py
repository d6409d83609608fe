"""Executor: runs a schedule as one batched kernel call per batch, reading operands from arenas.

``build_steps`` (the plan stage, runtime/steps.py) turns (graph, schedule, layout) into a list of
Steps: per batch, how to read each operand list and where to write each output, with reads fused
and writes joined where they can be (NOTE: [Fused gathers], [Whole reads], [Joint writes] there).
``run_inference`` executes the steps under no_grad. ``TrainingRun`` does the same inside one
``torch.autograd.Function`` whose backward walks the steps in reverse, so results are ordinary
autograd tensors and ``loss.backward()`` works.

NOTE: [Single-assignment arenas] every arena row is written exactly once, by the batch producing
it, before any batch reads it. Reads of rows that are already written are therefore stable, and in
training we read through ``.data`` views: they share memory but have their own version counter, so
autograd's in-place check does not fire when later batches write other rows of the same arena.

NOTE: [Batched backward] training runs each batch's kernel with grad enabled on detached operand
tensors and parameter aliases (NOTE: [Parameters in the batched backward], runtime/params.py) and
keeps (operands, outputs). Backward allocates one gradient arena per float arena, seeds it with the
result gradients, and for each batch in reverse order asks the autograd engine once for the
gradients of outputs -> operands and the aliases (``_batch_grad``), then adds operand gradients into
the gradient arenas with the same slice / index that read them (``index_add_`` accumulates
duplicates). Parameter gradients are summed in place and returned once by the Function. Where
saved-tensor hooks are active (an enclosing ``torch.utils.checkpoint``), the forward runs under
identity hooks, so the checkpoint never tries to recompute the flush's private graphs.

NOTE: [Rows the loss does not use] in a batched backward a row whose output cotangent is exactly
zero still meets the row's forward values in every parameter gradient (``X^T G``): an unused
instance with an inf or NaN would poison every other instance's gradients, where eager code never
touches it. A zero row contributes exactly zero otherwise, so excluding it changes nothing for
finite values. Checking every batch costs a reduction per batch; instead the gradients are
checked once at the end (they are finite in the normal case) and only if one is not, the backward
is redone skipping zero rows: a batch with some zero rows is re-run on its nonzero rows only.

NOTE: [Double backward] with ``create_graph=True`` (gradient penalties) the backward re-runs the
flush as ordinary autograd ops on the real parameters (cloned arena reads, in-place arena writes)
and differentiates that, so the gradients themselves have a graph. It costs a second forward and
is used only then.
"""
from __future__ import annotations

import contextlib
import threading
import time

import torch

from ..cells.aot import program_of
from ..cells.group import Scratch, grouped_program
from ..cells.sparse import dense_gradients
from ..errors import BatchExecutionError, PhalanxError
from ..ir.graph import GraphArrays
from ..ir.signature import Signature
from ..memory.layout import Layout
from .kernels import data_dependent_error, is_data_dependent, kernel_for
from .native import group_reads
from .distinct import RowClasses, candidate, distinct_rows, sum_rows, worth_in_inference, write_rows
from .params import FlushParams
from .ragged import ragged_row, ragged_subset
# Re-exported: runtime/ragged.py, debug/ and tests read the plan's names from here.
from .steps import (BROADCAST, EXTERNAL, GATHER, NUMBERS, SCATTER, SLICE, TENSORS, Step, _to_device,  # noqa: F401
                    build_steps)

def allocate_arenas(graph: GraphArrays, layout: Layout) -> list[torch.Tensor]:
    return [torch.empty((int(n), *a.shape), dtype=a.dtype, device=graph.device)
            for a, n in zip(graph.avals, layout.arena_rows, strict=True)]


class ArenaPool:
    """NOTE: [Arena pool] a fresh arena is fresh pages: the first write of every row faults its page
    in (on a VM, most of a small batch's output write: a BiLSTM tagger's h/c writes took 2.5x
    longer into fresh arenas than into touched ones), every flush again, since the allocator hands
    large blocks back to the OS. An inference flush whose arenas die with it (``Batcher._run``:
    its results are ``index_select`` copies, and nothing else keeps an arena) may instead take its
    arenas as the leading rows of buffers kept from the last flush, grown (with some slack) when a
    flush needs more rows. Rows are still written before they are read (NOTE: [Single-assignment
    arenas]), so stale contents are never seen. Training arenas live on in the backward and fiber
    rounds' arenas are their results: those keep ``allocate_arenas``. The cost: a Batcher holds
    buffers of the value kinds (shape, dtype) its last inference flush used, each as large as the
    largest flush that used it, and drops other kinds, so a model whose value shapes keep changing
    does not accumulate buffers; ``Batcher.release_memory()`` drops them all."""

    SLACK = 1.25

    def __init__(self):
        self.buffers: dict = {}     # (shape, dtype, device, inference mode, k-th arena of that kind) -> tensor

    def allocate(self, graph: GraphArrays, layout: Layout) -> list[torch.Tensor]:
        arenas, seen = [], {}
        device, buffers = graph.device, self.buffers
        # tensors made under inference_mode may not be written outside it: each mode its own buffers
        inference = torch.is_inference_mode_enabled()
        for a, n in zip(graph.avals, layout.arena_rows, strict=True):
            n = int(n)
            kind = (a.shape, a.dtype, device, inference)
            k = seen[kind] = seen.get(kind, -1) + 1
            key = (*kind, k)
            buf = buffers.get(key)
            if buf is None or len(buf) < n:
                buf = buffers[key] = torch.empty((int(n * self.SLACK) + 1, *a.shape), dtype=a.dtype, device=device)
            arenas.append(buf[:n])
        if len(buffers) > len(arenas):      # kinds (shape, dtype, ...) this flush did not use: not kept
            for key in [key for key in buffers if key[:4] not in seen]:
                del buffers[key]
        return arenas

    def release(self) -> None:
        self.buffers.clear()


def _read(op, arenas) -> torch.Tensor:
    kind, where, payload = op
    if kind == SLICE:
        return arenas[where][payload[0]:payload[1]]
    if kind == GATHER:
        return arenas[where].index_select(0, payload)
    if kind == NUMBERS:
        return payload
    if kind == BROADCAST:
        return payload.detach().unsqueeze(0).expand(where, *payload.shape)
    if kind == EXTERNAL:
        return where.detach().index_select(0, payload)
    return torch.stack([t.detach() for t in payload])


def _read_all(step: Step, arenas) -> list:
    """Every operand of a step; each run of fused gathers is ONE ``index_select`` cut into views."""
    if not step.fused:
        return [_read(op, arenas) for op in step.operands]
    operands: list = [None] * len(step.operands)
    for arena, index, positions in step.fused:
        for p, part in zip(positions, arenas[arena].index_select(0, index).split(step.size), strict=True):
            operands[p] = part
    return [_read(op, arenas) if t is None else t for op, t in zip(step.operands, operands, strict=True)]


def _flags(sig: Signature) -> tuple:
    return tuple(m.training for m in sig.modules)


def _consumable(step: Step, meta: dict) -> bool:
    """May the step's kernel overwrite the operands ``meta["consumes"]`` names (NOTE: [Consumed
    operands], cells/inplace.py)? Their rows are read by this step only (single-assignment arenas:
    nothing else reads or rewrites them), so yes when each is an arena slice or a fresh gather."""
    consumes = meta.get("consumes")
    if not consumes or "ragged" in meta:
        return False
    operands = step.operands
    return all(operands[p][0] <= GATHER for p in consumes)


def _all_slices(outputs: list) -> bool:
    for o in outputs:
        if o[0] != SLICE:
            return False
    return True


def _call(step: Step, operands: list, kernels: dict, consume: bool = False, arenas: "list | None" = None):
    """The step's batched outputs; with ``arenas`` (inference) outputs the kernel writes straight into
    their arena rows are written there and the result is None (NOTE: [Direct outputs])."""
    sig = step.sig
    try:
        entry = kernels.get(sig.sid)
        if entry is None:
            entry = kernels[sig.sid] = _kernel_entry(kernel_for(sig, operands, step.size, _flags(sig)), arenas)
        kernel, run, direct, every = entry
        if run is None:
            if getattr(kernel, "program", None) is None:
                return kernel(operands, step.size)      # no consume, no direct outputs
            run = kernel
        else:
            kernel.calls += 1
        if direct is not None and arenas is not None and _all_slices(step.outputs):
            # NOTE: [Direct outputs] (cells/inplace.py): those outputs land in their arena rows
            outputs = step.outputs
            into = [arenas[a][r[0]:r[1]] if d else None for (_, a, r), d in zip(outputs, direct, strict=True)]
            outs = run(operands, step.size, consume, into)
            if not every:
                for (_, a, r), d, out in zip(outputs, direct, outs, strict=True):
                    if not d:
                        arenas[a][r[0]:r[1]] = out
            return None
        return run(operands, step.size, consume) if consume else run(operands, step.size)
    except PhalanxError:
        raise
    except Exception as e:
        if is_data_dependent(e):
            raise data_dependent_error(sig, e) from e
        raise _localize(step, operands, e) from e


def _kernel_entry(kernel, arenas) -> tuple:
    """(kernel, the bound no_grad program or None, which outputs it computes into the caller's rows,
    whether that is all of them), once per flush and op type (NOTE: [Bound programs], cells/program.py)."""
    program = getattr(kernel, "program", None)
    if program is None or arenas is None:
        return kernel, None, None, False
    direct = program.direct_outputs()
    return kernel, program.bind(), direct, direct is not None and all(direct)


def _localize(step: Step, operands: list, error: Exception) -> BatchExecutionError:
    """The batch failed: find the first row whose per-instance call fails too, to name its instance."""
    from ..frontend.recorder import run_unrecorded

    sig = step.sig
    summary = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    with torch.no_grad():
        for row in range(step.size):
            try:
                row_ops = ragged_row(sig, operands, row) if "ragged" in sig.meta else [op[row] for op in operands]
                run_unrecorded(sig.fn, row_ops, sig.name, sig.in_avals)
            except Exception as e:  # noqa: BLE001  (this row's own error is what we report)
                cause = e.__cause__ if isinstance(e, PhalanxError) and e.__cause__ is not None else e
                err = BatchExecutionError(
                    f"instance {int(step.insts[row])}: {sig.name} fails on its operands "
                    f"({', '.join(repr(a) for a in sig.in_avals)}): {type(cause).__name__}: {cause}")
                err.instance = int(step.insts[row])
                return err
    return BatchExecutionError(f"{sig.name}: batched call over {step.size} nodes (instances "
                               f"{sorted(set(step.insts.tolist()))[:8]}...) failed: {summary}")


def _write(step: Step, outs: tuple, arenas: list[torch.Tensor], adopt: bool = False) -> None:
    """Write a batch's outputs into their arena rows. ``adopt`` (inference only): an output that
    fills its whole arena and owns its memory becomes the arena instead (no copy; arenas are
    single-assignment, so nothing writes it again)."""
    joint = step.joint
    if joint is not None:       # NOTE: [Joint writes]
        torch.cat(outs, out=arenas[joint[0]][joint[1]:joint[2]])
        return
    for (kind, arena, rows), out in zip(step.outputs, outs, strict=True):
        if kind == SLICE:
            lo, hi = rows
            if adopt and lo == 0 and hi == len(arenas[arena]) and _adoptable(out, arenas[arena]):
                arenas[arena] = out
            else:
                arenas[arena][lo:hi] = out      # one C call (slicing, then copy_, is two)
        else:
            arenas[arena].index_copy_(0, rows, out)


def _adoptable(out: torch.Tensor, target: torch.Tensor) -> bool:
    return out._base is None and out.dtype == target.dtype and out.shape == target.shape and out.is_contiguous()


def _output_grad(output, garenas) -> torch.Tensor:
    kind, arena, rows = output
    if kind == SLICE:
        return garenas[arena][rows[0]:rows[1]]
    return garenas[arena].index_select(0, rows)


# NOTE: [Inference-mode flush] a no_grad flush whose every op type is a traced cell program runs its
# steps under ``torch.inference_mode``: ops skip autograd's dispatch and views skip version-counter
# / view bookkeeping (measured: ~3.5% of the tagger's execution at hidden 8, ~1% at 64). What it
# makes are inference tensors, which must never reach the user (autograd may not save them; they
# cannot be written outside inference_mode). They do not: the arenas are allocated outside it
# (normal tensors, written in place), an output is copied into its arena instead of adopted as the
# arena (``_write``'s ``adopt``), and results are read from the arenas afterwards, outside it
# (``Batcher._run``'s copies, fiber rounds' rows). Values cached during a flush are keyed by the
# mode (hoisted values: NOTE: [Hoist cache key]). Only traced programs: they run aten ops and
# nothing else, where a native, vmap or ragged kernel, a probe or a vmap-mode cell runs the user's
# own code, which may keep a tensor it makes (an attention map saved for inspection) and must get
# the normal tensor it would get under no_grad.
INFERENCE_MODE = True


def run_inference(steps: list[Step], arenas: list[torch.Tensor], profile=None) -> None:
    """Run every step without autograd. ``profile``: a Stats whose per-op times are filled in.

    NOTE: [Direct steps] most batches of a long chain (an LSTM step per position) are an op type
    whose cell program computes every output straight into its arena rows (NOTE: [Direct outputs],
    cells/inplace.py). Once an op type's first batch has run (probing and binding its kernel), its
    later batches skip ``_call``'s per-batch decisions: the program and its parameter prefix come
    from ``CellProgram.direct_call`` once per flush, and a batch is its operand reads, its output
    rows and one call. Other steps take the general path. A step heading a run of twin batches
    (``step.group``) runs the run as one batch where it can (NOTE: [Op-type groups], cells/group.py).
    Under NOTE: [Inference-mode flush]."""
    kernels: dict = {}
    direct: dict = {}       # op type -> NOTE: [Direct steps] entry, or False where there is none
    inference = INFERENCE_MODE and not torch.is_inference_mode_enabled() and _only_traced_programs(steps)
    scratch = Scratch()     # temporaries of grouped batches (NOTE: [Op-type groups])
    classes = RowClasses()  # NOTE: [Distinct rows], [Row classes]
    plain: dict = {}        # kernels as distinct-rows batches call them (no direct outputs: rows are copied)
    with torch.inference_mode() if inference else torch.no_grad():
        b, num = 0, len(steps)
        while b < num:
            step = steps[b]
            start = time.perf_counter() if profile is not None else 0.0
            if candidate(step, classes) and _run_distinct(step, arenas, plain, classes):
                if profile is not None:
                    profile.add_op_time(step.sig.name, step.size, time.perf_counter() - start)
                b += 1
                continue
            if step.group and _run_group(steps, b, arenas, kernels, direct, scratch):     # NOTE: [Op-type groups]
                if profile is not None:
                    members = steps[b:b + step.group + 1]
                    profile.add_op_time(step.sig.name, sum(s.size for s in members), time.perf_counter() - start)
                b += step.group + 1
                continue
            found = direct.get(step.sig.sid)
            if not (found and _run_direct(step, arenas, found)):
                _run_step(step, arenas, kernels, adopt=not inference)
                if found is None:
                    direct[step.sig.sid] = _direct_entry(step.sig, kernels.get(step.sig.sid))
            if profile is not None:
                profile.add_op_time(step.sig.name, step.size, time.perf_counter() - start)
            b += 1


def _run_distinct(step: Step, arenas: list, kernels: dict, classes: RowClasses) -> bool:
    """NOTE: [Distinct rows] in inference: the batch on its distinct rows, every row's outputs copied
    from its distinct row into the arena; False (nothing done) where it does not apply or pay."""
    flags = _flags(step.sig)
    if not worth_in_inference(step.sig, flags):
        classes.futile.add(step.sig.sid)
        return False
    found = distinct_rows(step, _read_all(step, arenas), flags, classes)
    if found is None:
        return False
    distinct, operands = found
    outs = _call(distinct.step, operands, kernels)
    write_rows(step, outs, distinct.inverse, arenas)
    classes.assign(step, distinct.inverse, distinct.step.size, arenas)
    return True


def _only_traced_programs(steps: list[Step]) -> bool:
    """Does no user code run in these steps (NOTE: [Inference-mode flush])? Every op type's kernel is
    a traced, uncompiled cell program: aten ops only, no probing. (A cell's first flush, before its
    program is traced, runs under no_grad.)"""
    for sig in _op_types(steps):
        program = program_of(sig, _flags(sig))
        if program is None or program.mode != "traced" or program.compiled is not None or "ragged" in sig.meta:
            return False
    return True


def _op_types(steps: list[Step]):
    """Each op type of ``steps`` once, in order of first batch."""
    return {step.sig.sid: step.sig for step in steps}.values()


def _run_step(step: Step, arenas: list, kernels: dict, adopt: bool = True) -> None:
    whole = step.whole
    meta = step.sig.meta
    if whole is not None:       # NOTE: [Whole reads]: fresh operands, the kernel's to keep
        outs = _call(step, arenas[whole[0]].index_select(0, whole[1]).split_with_sizes(whole[2]), kernels,
                     "consumes" in meta and "ragged" not in meta, arenas)
    else:
        outs = _stacked_reads(step, arenas) if "stack_dim" in meta else None
        if outs is None:
            outs = _call(step, _read_all(step, arenas), kernels, _consumable(step, meta), arenas)
    if outs is not None:
        _write(step, outs, arenas, adopt)


def _direct_entry(sig: Signature, entry: "tuple | None"):
    """(kernel, prefix, program, consuming program or None, consumed positions) for NOTE: [Direct
    steps], or False."""
    if entry is None or entry[1] is None or not entry[3] or "ragged" in sig.meta or "stack_dim" in sig.meta:
        return False
    kernel = entry[0]
    program = kernel.program
    plain = program.direct_call(False)
    if plain is None:
        return False
    consumes = tuple(sig.meta.get("consumes", ())) if program.consumable else ()
    consuming = program.direct_call(True) if consumes else None
    return kernel, plain[1], plain[0], consuming[0] if consuming is not None else None, consumes


def _run_direct(step: Step, arenas: list, found: tuple) -> bool:
    """One batch by NOTE: [Direct steps]; False (nothing done) where an output is scattered or the
    batch is empty (the program's contract is size >= 1)."""
    kernel, prefix, program, consuming, consumes = found
    if not step.size:
        return False
    into = [arenas[a][r[0]:r[1]] for kind, a, r in step.outputs if kind == SLICE]
    if len(into) != len(step.outputs):
        return False
    operands = _direct_operands(step, arenas)
    # NOTE: [Whole reads] are fresh operands, the kernel's to keep; else as _consumable
    if consumes and (step.whole is not None or all(step.operands[p][0] <= GATHER for p in consumes)):
        program = consuming
    try:
        program(step.size, *prefix, *operands, *into)
    except PhalanxError:
        raise
    except Exception as e:
        if is_data_dependent(e):
            raise data_dependent_error(step.sig, e) from e
        raise _localize(step, operands, e) from e
    kernel.calls += 1
    return True


def _run_group(steps: list, b: int, arenas: list, kernels: dict, direct: dict, scratch: Scratch) -> bool:
    """Steps ``b .. b + steps[b].group`` (twin op types at one depth) as one batch by NOTE: [Op-type
    groups] (cells/group.py); False (nothing done) where that does not apply: a member's op type
    has no direct step (NOTE: [Direct steps]) or no program yet, an output is scattered, or the
    members' rows of an output are not one slice."""
    head = steps[b]
    members = steps[b:b + head.group + 1]
    prefixes = []
    for m in members:
        f = direct.get(m.sig.sid)
        if f is None:
            f = _bind_direct(m, arenas, kernels, direct)
        if not f:
            return False
        prefixes.append(f[1])
    # Outputs: one slice each; operands: one slice where the members' rows are adjacent, else each
    # one's read (NOTE: [Native group reads])
    found = group_reads(members, arenas, _read)
    if found is None:
        return False
    into, operands, joined = found
    sizes = [m.size for m in members]
    entry = direct[head.sig.sid]
    # NOTE: [Consumed operands]: only a joined slice (rows nothing else reads) may be overwritten
    consume = bool(entry[4]) and all(joined[p] for p in entry[4])
    run = grouped_program(entry[0].program, consume, joined, len(members))
    if run is None:
        return False
    try:
        run(into[0].shape[0], sizes, prefixes, operands, into, scratch)
    except PhalanxError:
        raise
    except Exception as e:
        if is_data_dependent(e):
            raise data_dependent_error(head.sig, e) from e
        for m in members:       # name the instance whose own call fails, if one does
            err = _localize(m, _direct_operands(m, arenas), e)
            if getattr(err, "instance", None) is not None:
                raise err from e
        raise _localize(head, _direct_operands(head, arenas), e) from e
    for m in members:
        direct[m.sig.sid][0].calls += 1
    return True


def _bind_direct(step: Step, arenas: list, kernels: dict, direct: dict):
    """The NOTE: [Direct steps] entry of a group member's op type before its first batch of the flush
    has run, where its kernel needs no probe (a traced program); None where it does (the general
    path binds it)."""
    sig = step.sig
    flags = _flags(sig)
    meta = sig.meta
    if sig.kernels.get(flags) is None and "kernel" not in meta and (
            "aot" not in meta or meta["aot"].program(flags) is None):
        return None
    entry = kernels.get(sig.sid)
    if entry is None:
        entry = kernels[sig.sid] = _kernel_entry(kernel_for(sig, (), step.size, flags), arenas)
    found = direct[sig.sid] = _direct_entry(sig, entry)
    return found


def _direct_operands(step: Step, arenas: list) -> list:
    """A step's operands as NOTE: [Direct steps] read them: a whole read cut into views, fused
    gathers, else each operand (a slice inline: the commonest read of a chain)."""
    whole = step.whole
    if whole is not None:
        return list(arenas[whole[0]].index_select(0, whole[1]).split_with_sizes(whole[2]))
    if step.fused:
        return _read_all(step, arenas)
    return [arenas[w][p[0]:p[1]] if k == SLICE else _read((k, w, p), arenas) for k, w, p in step.operands]


def _stacked_reads(step: Step, arenas: list) -> "tuple | None":
    """NOTE: [Stacked reads] a batched ``torch.stack`` of gathered operand lists (a decoder's
    per-step logits, each read from its own fiber round) would copy every list once into a gather
    and once more into the stack; instead each list is read straight into its slot of the output
    (``index_select(out=...)``). Only once the probe has chosen the stack itself for this op type
    (shifted, or native for a negative dim: checked against the per-instance oracle), and when the
    operands are exactly the stacked slots."""
    sig = step.sig
    kernel, d = sig.kernels.get(()), sig.meta["stack_dim"]
    stacked = sig.out_avals[0]
    if kernel is None or kernel.mode not in ("shifted", "native") or d is None:
        return None
    slot_shape = stacked.shape[:d - 1] + stacked.shape[d:]
    if stacked.shape[d - 1] != len(step.operands) or any(a.shape != slot_shape or a.dtype != stacked.dtype
                                                         for a in sig.in_avals):
        return None
    out = torch.empty((step.size, *stacked.shape), dtype=stacked.dtype, device=arenas[0].device)
    for p, op in enumerate(step.operands):
        kind, where, payload = op
        slot = out.select(d, p)
        if kind == EXTERNAL:
            torch.index_select(where.detach(), 0, payload, out=slot)
        elif kind == GATHER:
            torch.index_select(arenas[where], 0, payload, out=slot)
        else:
            slot.copy_(_read(op, arenas))
    return (out,)


def _keep(t):
    return t


_TOP_HOOKS = getattr(getattr(torch._C, "_autograd", None), "_top_saved_tensors_default_hooks", None)


def _identity_saved_tensor_hooks():
    """Identity saved-tensor hooks over the flush's forward only where some are active (an enclosing
    ``torch.utils.checkpoint``; NOTE: [Batched backward]): each saved tensor goes through two Python
    calls under them, dozens per batch, which a plain training step does not need to pay."""
    if _TOP_HOOKS is not None and _TOP_HOOKS(False) is None:
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_keep, _keep)


_ENGINE = getattr(torch.autograd.Variable, "_execution_engine", None)


def _batch_grad(outputs: list, inputs: list, grad_outputs: list) -> tuple:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, retain_graph=True)``
    straight through the autograd engine: the Python wrapper's argument normalization and checks
    (which our own, well-formed tensors never need) cost ~35 us per call, i.e. per batch."""
    if _ENGINE is None:
        return torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, retain_graph=True)
    return _ENGINE.run_backward(tuple(outputs), tuple(grad_outputs), True, False, tuple(inputs), True, False)


def _begin_flush(steps: list[Step]) -> None:
    """Announce a training flush to the traced programs it runs (NOTE: [Hoist cache key],
    cells/program.py): their hoisted values (a transposed or concatenated weight and its autograd
    graph) are then computed once per flush and op type, not once per batch. Only programs whose
    kernel is known already (their first flush still computes per batch)."""
    for sig in _op_types(steps):
        for kernel in (sig.meta.get("kernel"), *sig.kernels.values()):
            program = getattr(kernel, "program", None)
            if program is not None:
                program.begin_flush()
            elif hasattr(kernel, "begin_flush"):    # a ragged op type's reduced programs
                kernel.begin_flush()


class TrainingBuffers:
    """NOTE: [Training buffers] a training flush's arenas (written in its forward, read until its
    backward ends) and its backward's gradient arenas are large and, allocated fresh, are fresh
    pages every flush: the first write of every row faults its page in (a TreeLSTM at hidden 256
    zeroed its gradient arenas at a third of memset speed). A Batcher keeps a few such buffers
    instead. Unlike an inference flush's (NOTE: [Arena pool]), a training flush's arenas outlive
    the call that made them, for as long as its backward may still run: so a buffer is *checked
    out* by the flush that takes it and comes back only when that flush's backward has finished
    (``TrainingRun.backward``; gradient arenas at the end of their backward pass). A flush whose
    backward never runs (evaluation with grad on, an exception) never gives its buffers back: they
    die with it, and the next flush takes others or new ones. Two flushes forward before either
    backward each hold their own. Stale rows are never seen: arena rows are written before they
    are read (NOTE: [Single-assignment arenas]) and gradient arenas are zeroed when taken. The
    cost: up to ``KEEP`` idle buffers of each of the ``KINDS`` row kinds last given back, per
    Batcher, each as large as the largest flush that used it (``Batcher.release_memory()`` drops
    them). Thread-safe: a backward may run on another thread."""

    SLACK = 1.25
    KEEP = 4            # idle buffers per kind (row shape, dtype, device)
    KINDS = 8           # kinds kept, the most recently given back

    def __init__(self):
        self.free: dict[tuple, list[torch.Tensor]] = {}     # kind -> idle buffers; kinds oldest first
        self._lock = threading.Lock()

    def take(self, rows: int, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        """A [rows, *shape] tensor: leading rows of an idle buffer (the smallest that fits), or new."""
        with self._lock:
            idle = self.free.get((tuple(shape), dtype, device))
            if idle:
                best = None
                for i, buf in enumerate(idle):
                    if len(buf) >= rows and (best is None or len(buf) < len(idle[best])):
                        best = i
                if best is not None:
                    return idle.pop(best)[:rows]
        return torch.empty((int(rows * self.SLACK) + 1, *shape), dtype=dtype, device=device)[:rows]

    def arenas(self, graph: GraphArrays, layout: Layout) -> list[torch.Tensor]:
        device = torch.device(graph.device)
        if device.type != "cpu" and device.index is None:      # as tensors name it ("cuda" -> "cuda:0")
            device = torch.empty(0, device=device).device
        return [self.take(int(n), a.shape, a.dtype, device) for a, n in zip(graph.avals, layout.arena_rows, strict=True)]

    def give_back(self, tensors) -> None:
        """The buffers under ``tensors`` (from ``take``) are idle again."""
        with self._lock:
            free = self.free
            for t in tensors:
                if t is None:
                    continue
                buf = t if t._base is None else t._base
                kind = (tuple(buf.shape[1:]), buf.dtype, buf.device)
                idle = free.pop(kind, None) or []
                idle.append(buf)
                free[kind] = idle[-self.KEEP:]          # re-inserted: the most recent kind
            while len(free) > self.KINDS:
                del free[next(iter(free))]

    def idle(self) -> list[torch.Tensor]:
        """Every idle buffer (tests, debugging)."""
        with self._lock:
            return [buf for bufs in self.free.values() for buf in bufs]

    def release(self) -> None:
        with self._lock:
            self.free.clear()


class TrainingRun:
    """State shared by the forward and backward of one flush (see NOTE: [Batched backward]).
    ``buffers``: where ``arenas`` came from and go back to after the backward, and where the
    gradient arenas come from (NOTE: [Training buffers])."""

    def __init__(self, steps: list[Step], arenas: list[torch.Tensor], result_index: list,
                 params: FlushParams, buffers: TrainingBuffers, stats=None, profile: bool = False):
        self.steps = steps
        self.arenas = arenas
        self.buffers = buffers
        self.result_index = result_index      # [(arena, index tensor)] for each Function output
        self.params = params
        self.saved: list = []
        self.stats = stats                    # its backward_s is set when backward runs
        self.profile = stats if profile else None
        self.kernels: dict = {}

    def _operands(self, step: Step) -> list:
        arenas, operands = self.arenas, []
        whole = step.whole
        if whole is not None:       # NOTE: [Whole reads]: arena rows, so every float one joins the backward
            operands = list(arenas[whole[0]].index_select(0, whole[1]).split_with_sizes(whole[2]))
            if operands[0].is_floating_point():
                for t in operands:
                    t.requires_grad_()
            return operands
        fused = _read_all(step, arenas) if step.fused else None
        for p, op in enumerate(step.operands):
            kind = op[0]
            if fused is not None:
                t = fused[p].data if kind == SLICE else fused[p]
            else:
                t = arenas[op[1]][op[2][0]:op[2][1]].data if kind == SLICE else _read(op, arenas)
            # Arena reads always join the backward; per-instance tensors only if one requires grad;
            # numbers never.
            if t.is_floating_point() and (kind <= GATHER or (kind == TENSORS and any(x.requires_grad for x in op[2]))
                                          or (kind == BROADCAST and op[2].requires_grad)
                                          or (kind == EXTERNAL and op[1].requires_grad)):
                t.requires_grad_()
            operands.append(t)
        return operands

    def forward(self) -> tuple[torch.Tensor, ...]:
        arenas, saved, take = self.arenas, self.saved, self.params.gemms.take
        classes = RowClasses()      # NOTE: [Row classes]
        _begin_flush(self.steps)
        with torch.enable_grad(), _identity_saved_tensor_hooks(), self.params:
            for step in self.steps:
                start = time.perf_counter() if self.profile is not None else 0.0
                operands = self._operands(step)
                found = distinct_rows(step, operands, _flags(step.sig), classes) if candidate(step, classes) else None
                if found is None:
                    outs = _call(step, operands, self.kernels)
                    # NOTE: [Deferred GEMM gradients]: the batch's deferred GEMMs (entry, X_b, out_b)
                    saved.append((operands, outs, take(), None))
                    _write(step, [o.detach() for o in outs], arenas)     # no autograd record, no no_grad block
                else:       # NOTE: [Distinct rows]: the kernel runs on the distinct rows only
                    distinct, operands = found
                    outs = _call(distinct.step, operands, self.kernels)
                    saved.append((operands, outs, take(), distinct))
                    write_rows(step, outs, distinct.inverse, arenas)
                    classes.assign(step, distinct.inverse, distinct.step.size, arenas)
                if self.profile is not None:
                    self.profile.add_op_time(step.sig.name, step.size, time.perf_counter() - start)
        return tuple(arenas[a].index_select(0, idx) for a, idx in self.result_index)

    def backward(self, grads) -> tuple:
        start = time.perf_counter()
        raw = self._backward_pass(grads, skip_zero_rows=False)
        # A sum is finite if every entry is (an overflowing sum of finite entries only takes the
        # slow path, which is as correct): one pass per gradient instead of isfinite's several. A
        # row-sparse gradient is checked on its values, before ``finish`` densifies it.
        sums = [(g._values() if g.is_sparse else g).sum() for g in raw if g is not None]
        if sums and not bool(torch.isfinite(torch.stack(sums)).all()):   # one device-to-host read
            # NOTE: [Rows the loss does not use]
            raw = self._backward_pass(grads, skip_zero_rows=True)
        input_grads = self.params.finish(raw)
        self.saved = []   # the per-batch graphs are freed: a second backward is an error
        self.buffers.give_back(self.arenas)      # NOTE: [Training buffers]: nothing reads them any more
        self.arenas = [a[:0] for a in self.arenas]
        if self.stats is not None:
            self.stats.backward_s += time.perf_counter() - start   # fibers: summed over rounds
        return tuple(input_grads)

    def _backward_pass(self, grads, skip_zero_rows: bool) -> list:
        arenas, inputs, buffers = self.arenas, self.params.inputs, self.buffers
        garenas = [buffers.take(len(a), a.shape[1:], a.dtype, a.device).zero_() if a.is_floating_point() else None
                   for a in arenas]         # NOTE: [Training buffers]
        for (arena, idx), g in zip(self.result_index, grads, strict=True):
            if g is not None and garenas[arena] is not None:
                garenas[arena].index_add_(0, idx, g)
        input_grads: list = [None] * len(inputs)
        owned = [False] * len(inputs)
        self.params.clear_pending()

        def accumulate(i, g):
            # In place from the second gradient on (a fresh sum per batch allocated and wrote a
            # parameter-sized tensor every batch); the first may alias autograd's own buffers.
            acc = input_grads[i]
            if acc is None:
                input_grads[i] = g
            elif owned[i] and (g.is_sparse or not acc.is_sparse):
                acc.add_(g)
            else:       # dense + sparse (not sparse + dense: torch refuses that order)
                input_grads[i], owned[i] = (g + acc if acc.is_sparse and not g.is_sparse else acc + g), True

        for step, (operands, outs, deferred, distinct) in zip(reversed(self.steps), reversed(self.saved), strict=True):
            step_start = time.perf_counter() if self.profile is not None else 0.0
            out_list, gout_list = [], []
            for output, out in zip(step.outputs, outs, strict=True):
                if out.requires_grad:
                    out_list.append(out)
                    gout_list.append(_output_grad(output, garenas))
            if not out_list:
                continue
            ran, first = step, None     # the batch its kernel ran: on its distinct rows only (NOTE: [Distinct rows])
            if distinct is not None:
                ran, first = distinct.step, distinct.first
                gout_list = [sum_rows(g, distinct.inverse, ran.size) for g in gout_list]
            wrt = self.params.wrt.get(step.sig.sid, ())
            wrt_ops = [p for p, t in enumerate(operands) if t.requires_grad]
            if not wrt_ops and not wrt and not deferred:
                continue
            rows = op_rows = None
            if skip_zero_rows:
                live = torch.zeros(ran.size, dtype=torch.bool, device=out_list[0].device)
                for g in gout_list:
                    live |= g.reshape(ran.size, -1).ne(0).any(1)
                if not bool(live.any()):
                    continue
                if not bool(live.all()):
                    rows = live.nonzero().squeeze(1)
                    operands, out_list, gout_list, op_rows, deferred = self._rerun_rows(ran, operands, rows,
                                                                                         gout_list)
            # retain_graph: the slow path of NOTE: [Rows the loss does not use] may walk it again.
            # The deferred GEMMs' outputs are inputs too: the engine captures their G_b there.
            inputs = [operands[p] for p in wrt_ops]
            inputs += [t for _, t in wrt]
            if deferred:
                inputs += [out for _, _, out in deferred]
            grads_all = _batch_grad(out_list, inputs, gout_list)
            n_ops, op_grads = len(wrt_ops), grads_all[:len(wrt_ops)]
            if deferred:
                for (entry, x, _), g in zip(deferred, grads_all[n_ops + len(wrt):], strict=True):
                    if g is not None:
                        entry.add(x, g)
            if first is not None:       # NOTE: [Row classes]: each distinct row's gradient to the row it was read from
                rows = first if rows is None else first.index_select(0, rows)
            whole = step.whole
            if whole is not None and rows is None and n_ops == len(operands) and all(g is not None for g in op_grads):
                # NOTE: [Whole reads]: the operands' gradients go back with the index that read them,
                # in one index_add_ (a cat of them is one launch where one index_add_ each is four).
                garenas[whole[0]].index_add_(0, whole[1], torch.cat(op_grads))
                op_grads = wrt_ops = ()
            for p, g in zip(wrt_ops, op_grads, strict=True):
                if g is not None:
                    self._add_operand_grad(step.operands[p], g, garenas, rows if op_rows is None else op_rows[p],
                                           accumulate)
            for (k, _), g in zip(wrt, grads_all[n_ops:n_ops + len(wrt)], strict=True):
                if g is not None:
                    accumulate(k, g)
            if self.profile is not None:
                self.profile.add_op_time(step.sig.name, step.size, time.perf_counter() - step_start, "backward_s")
        for k, g in self.params.weight_gradients():     # NOTE: [Deferred weight gradients]
            accumulate(k, g)
        # A gradient the engine passed straight through (a cell returning an operand) may be a view
        # of a gradient arena: the user keeps it, the buffer goes back (NOTE: [Training buffers]).
        pooled = {g.untyped_storage().data_ptr() for g in garenas if g is not None}
        for i, g in enumerate(input_grads):
            if g is not None and not g.is_sparse and g.untyped_storage().data_ptr() in pooled:
                input_grads[i] = g.clone()
        buffers.give_back(garenas)
        return input_grads

    def _rerun_rows(self, step: Step, operands: list, rows: torch.Tensor, gout_list: list):
        """The batch again, on ``rows`` only (fresh graph), with their output gradients."""
        op_rows = None
        if "ragged" in step.sig.meta:
            # A ragged argument's values are member rows, not node rows (NOTE: [Ragged kernels]).
            sub, op_rows = ragged_subset(step.sig, operands, rows)
        else:
            sub = [op.detach().index_select(0, rows).requires_grad_(op.requires_grad) for op in operands]
        sub_step = Step(step.sig, step.nodes, len(rows), step.operands, step.outputs, step.insts[rows.cpu().numpy()])
        with torch.enable_grad(), self.params:
            outs = _call(sub_step, sub, self.kernels)
        out_list = [o for o in outs if o.requires_grad]
        return sub, out_list, [g.index_select(0, rows) for g in gout_list], op_rows, self.params.gemms.take()

    def _add_operand_grad(self, op, g, garenas, rows, accumulate) -> None:
        kind, where, payload = op
        position = self.params.position
        if kind == SLICE:
            if rows is None:
                garenas[where][payload[0]:payload[1]] += g
            else:
                garenas[where].index_add_(0, rows + payload[0], g)
        elif kind == GATHER:
            target = garenas[where]
            index = payload if rows is None else payload.index_select(0, rows)
            if g.untyped_storage().data_ptr() == target.untyped_storage().data_ptr():
                g = g.clone()   # autograd may hand back the output-gradient view itself
            target.index_add_(0, index, g)
        elif kind == BROADCAST:
            if id(payload) in position:
                accumulate(position[id(payload)], g.sum(0))
        elif kind == EXTERNAL:
            if id(where) in position:
                index = payload if rows is None else payload.index_select(0, rows)
                accumulate(position[id(where)], torch.zeros_like(where).index_add_(0, index, g))
        elif kind == TENSORS:
            picked = range(len(payload)) if rows is None else rows.tolist()
            for g_row, r in zip(g, picked, strict=True):
                t = payload[r]
                if id(t) in position:
                    accumulate(position[id(t)], g_row)
                elif hasattr(t, "_phalanx_origin") and id(t._phalanx_origin[0]) in position:
                    base, row = t._phalanx_origin          # a row of an earlier round, read in a mixed list
                    full = torch.zeros_like(base)
                    full[row] = g_row
                    accumulate(position[id(base)], full)

    def recompute(self) -> list[torch.Tensor]:
        """The flush again as ordinary autograd ops on the real tensors (NOTE: [Double backward])."""
        arenas = [torch.zeros_like(a) for a in self.arenas]
        kernels: dict = {}
        for step in self.steps:
            operands = []
            for kind, where, payload in step.operands:
                if kind == SLICE:
                    operands.append(arenas[where][payload[0]:payload[1]].clone())
                elif kind == GATHER:
                    operands.append(arenas[where].index_select(0, payload))
                elif kind == NUMBERS:
                    operands.append(payload)
                elif kind == BROADCAST:
                    operands.append(payload.unsqueeze(0).expand(where, *payload.shape))
                elif kind == EXTERNAL:
                    operands.append(where.index_select(0, payload))
                else:
                    operands.append(torch.stack(payload))
            outs = _call(step, operands, kernels)
            for (kind, arena, rows), out in zip(step.outputs, outs, strict=True):
                if kind == SLICE:
                    arenas[arena][rows[0]:rows[1]] = out
                else:
                    arenas[arena].index_copy_(0, rows, out)
        return [arenas[a].index_select(0, idx) for a, idx in self.result_index]


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
            raise PhalanxError("backward through a phalanx flush twice is not supported (its batched graph was freed); "
                               "pass retain_graph=True only to backward calls that do not reach a phalanx result")
        if torch.is_grad_enabled():
            # create_graph=True: differentiate a differentiable re-run (NOTE: [Double backward]).
            with torch.enable_grad(), dense_gradients():
                results = run.recompute()
            pairs = [(r, g) for r, g in zip(results, grads, strict=True) if g is not None and r.requires_grad]
            inputs = run.params.inputs
            got = torch.autograd.grad([r for r, _ in pairs], inputs, [g for _, g in pairs], create_graph=True,
                                      allow_unused=True) if pairs else [None] * len(inputs)
            return (None, *run.params.finish(got))
        return (None, *run.backward(grads))
