"""The ahead-of-time state of one cell signature in a running Batcher: its traced programs (one per
training-flags tuple of the cell's modules) and the splits the recorder asks for.

The recorder makes one ``AotCell`` per cell signature when the Batcher's ``cells`` option is on
(frontend/recorder.py ``_new_signature``) and traces the program for the current flags at once, so
a cell whose body branches on tensor data is refused while recording, before anything runs. The
executor's kernel choice (runtime/kernels.py ``kernel_for``) asks for the program of the flags it
runs with. A cell that cannot be traced (it reads a closure tensor, calls something make_fx cannot
follow, draws random numbers under vmap) falls back to the probe-checked kernels; ``errors`` keeps
the reason for ``phalanx explain``.
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import torch
from torch import nn

from ..errors import CellDataDependentError, CellTraceError, DataDependentError
from ..ir.aval import AVal
from ..ir.signature import ArgKind
from .build import CellSplit, auto_split, compile_cell
from .kernel import CellKernel
from .options import CellOptions
from .program import CellProgram, HoistCache, ParamReader


def program_of(sig, flags: tuple) -> "CellProgram | None":
    """The cell program a flush runs for op type ``sig`` with its modules' training ``flags``, where
    one is installed or already traced (this never traces or probes); None otherwise."""
    meta = sig.meta
    if "kernel" in meta:
        return getattr(meta["kernel"], "program", None)
    aot = meta.get("aot")
    return aot.programs.get(flags) if aot is not None else None


class AotCell:
    """Programs of one cell signature, traced lazily per training-flags tuple."""

    def __init__(self, name: str, fn, module: nn.Module | None, in_avals: tuple[AVal, ...],
                 in_kinds: tuple[ArgKind, ...], options: CellOptions, device=None):
        self.name = name
        self.device = device
        self.fn = fn
        self.module = module
        self.in_avals = in_avals
        self.in_kinds = in_kinds
        self.options = options
        self.programs: dict[tuple, CellProgram | None] = {}
        self.errors: dict[tuple, str] = {}
        self.splits: dict[tuple, CellSplit | None] = {}
        # A split needs two operands, one of them recorded (lazy), and the option on.
        self.may_split = options.split and len(in_avals) >= 2 and ArgKind.LAZY in in_kinds

    def program(self, flags: tuple) -> CellProgram | None:
        """The traced program for ``flags``; None when the cell cannot be traced (see ``errors``).
        A data-dependent body raises ``DataDependentError`` (it is never batched)."""
        if flags not in self.programs:
            try:
                self.programs[flags] = _compile_shared(self.fn, self.module, self.in_avals, self.in_kinds,
                                                       self.options, self.name, self.device)
            except CellDataDependentError as e:
                raise DataDependentError(
                    f"{self.name} branches on tensor data inside the cell, so it cannot be batched soundly "
                    f"({str(e).splitlines()[0]}). Move the decision out of the cell into the per-instance "
                    f"code, where phalanx fibers suspend the instance and batch the rest, or make the cell "
                    f"branch-free (torch.where)") from e
            except CellTraceError as e:
                self.programs[flags] = None
                self.errors[flags] = str(e).splitlines()[0]
        return self.programs[flags]

    def kernel(self, flags: tuple) -> CellKernel | None:
        program = self.program(flags)
        return CellKernel(None, program) if program is not None else None

    def split(self, flags: tuple, keep: tuple[int, ...]) -> CellSplit | None:
        """The prefix over operands ``keep`` and the rest, or None when it would move no GEMM."""
        key = (flags, keep)
        if key not in self.splits:
            program = self.program(flags)
            self.splits[key] = auto_split(program, keep) if program is not None else None
        return self.splits[key]


# NOTE: [Shared traces] tracing costs ~0.1 s per make_fx pass (four per program), so programs are
# shared between cells of the same *structure*: the same module class and forward, the same plain
# attributes (sizes, flags, eps, strings) and training flags in every submodule, parameters and
# buffers of the same names, shapes, dtypes, devices and requires_grad, tied the same way (a traced
# program reads each distinct tensor once: a program traced with ``b.weight is a.weight`` has no
# input for ``b.weight``, and must never serve an untied module), no hooks, the same operand avals and
# options. The six layers of a transformer, a forward and a backward LSTM, and every fresh model of
# the same configuration (tests, restarts) then trace once per process. A program reads its
# parameters through its own ParamReader, so a shared graph never mixes two modules' weights. A
# module with any attribute of another kind (a callable, a list) is not shared.
_SHARED: "OrderedDict[tuple, CellProgram]" = OrderedDict()
_SHARED_MAX = 512
_LOCK = threading.Lock()
_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device)


def _plain(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def structure_key(module: nn.Module):
    """The structural fingerprint of NOTE: [Shared traces], or None when the module cannot share."""
    parts = []
    first_seen: dict = {}           # id(tensor) -> (module, name) of its first appearance: ties
    for name, m in module.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
            return None
        attrs = []
        for k, v in vars(m).items():
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, (nn.Module, torch.Tensor)):
                continue
            if not _plain(v):
                return None
            attrs.append((k, repr(v)))
        tensors = tuple((k, tuple(t.shape), t.dtype, t.device.type, t.device.index, t.requires_grad,
                         first_seen.setdefault(id(t), (name, k)))
                        for k, t in (*m._parameters.items(), *m._buffers.items()) if t is not None)
        parts.append((name, type(m), m.training, tuple(sorted(attrs)), tensors))
    return tuple(parts)


def _compile_shared(fn, module, in_avals, in_kinds, options, name, device=None) -> CellProgram:
    key = None
    if (module is not None and isinstance(fn, functools.partial) and fn.func is nn.Module.__call__
            and fn.args == (module,) and not fn.keywords):
        structure = structure_key(module)
        if structure is not None:
            key = (structure, tuple(in_avals), options, str(device))
    if key is not None:
        with _LOCK:               # Batchers on several threads share the cache
            shared = _SHARED.get(key)
            if shared is not None:
                _SHARED.move_to_end(key)
        if shared is not None:
            return _rebind(shared, fn, module, in_avals, in_kinds, options, name, device)
    program = compile_cell(fn, module, in_avals, in_kinds, options, name=name, device=device)
    if key is not None:
        with _LOCK:
            _SHARED[key] = program
            if len(_SHARED) > _SHARED_MAX:
                _SHARED.popitem(last=False)
        program = _rebind(program, fn, module, in_avals, in_kinds, options, name, device)
    return program


def _rebind(shared: CellProgram, fn, module, in_avals, in_kinds, options, name, device) -> CellProgram:
    """``shared``'s graphs reading ``module``'s tensors, with a hoist cache of its own."""
    hoist = HoistCache(shared.hoist.module) if shared.hoist is not None else None
    program = CellProgram(name, shared.mode, options, shared.in_avals, shared.out_avals, shared.out_spec,
                          ParamReader(module, shared.params.names), hoist, shared.main, dict(shared.info),
                          shared.graph, shared.num_leading)
    program.compiled = shared.compiled
    program.retrace = lambda: compile_cell(fn, module, in_avals, in_kinds, options, name=name, device=device)
    return program
