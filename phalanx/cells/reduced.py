"""Traced programs for ragged cells that only ever reduce their ragged argument.

NOTE: [Reduced ragged programs] a lattice node ``gru(embed(char), hs.mean(-2))`` reads its
stacked predecessors ``hs`` [k, H] through one thing only: their mean over the ragged dim. Such a
cell is, per row, an ordinary cell of ``(char, mean)``: ``reduced_form`` traces it as one (the
ragged argument replaced at trace time by a ``SegmentStandIn`` whose ``sum`` / ``mean`` over the
ragged dim are the placeholders ``total`` and ``total / count``), so it gets everything an ordinary
traced program has (batched once at trace time, hoisted weights, in-place inference, the input
split: NOTE: [Split rule]). The runtime (runtime/ragged.py ``RaggedKernel``) then runs a batch as
one segment sum per ragged argument (``index_add``) and the traced program, instead of the cell's
own Python on duck-typed rows (NOTE: [Ragged kernels]). In training the program runs whole per
batch (the prefix over the flush is an inference hoist), under autograd like any traced program.

The rule is proven at trace time, not sampled: the stand-in has no shape, no items and no other
method, so a cell that does anything else with its ragged argument (child-sum's per-child forget
gates ``sigmoid(W_f x + U_f hs) * cs``, indexing, ``len``) fails to trace and keeps the
probe-checked segment or grouped kernel. The reduction is traced per instance, so ``hs.sum(0)``
qualifies (the segment kernel, which runs the cell's code on batched rows, needs the
batch-polymorphic ``-(len(E) + 1)``). Only stacked ragged arguments qualify (a list argument's
length is Python data).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CellTraceError
from ..ir.aval import AVal, aval
from ..ir.signature import ArgKind, Signature
from .aot import AotCell
from .build import CellSplit
from .options import CellOptions
from .program import CellProgram


class SegmentStandIn:
    """One instance's ragged argument [k, *E] while the reduced form is traced: only a sum or a
    mean over the ragged dim (0, or ``-(len(E) + 1)``), without keepdim."""

    __slots__ = ("total", "count", "ndim")

    def __init__(self, total: torch.Tensor, count: torch.Tensor):
        self.total, self.count = total, count
        self.ndim = total.dim() + 1

    def _reduce(self, reduce: str, dim=None, keepdim=False, **kwargs):
        if type(dim) in (tuple, list) and len(dim) == 1:
            dim = dim[0]
        if kwargs or keepdim is not False or type(dim) is not int or dim % self.ndim != 0:
            raise CellTraceError(f"{reduce} of a ragged argument over dim {dim!r} (only its ragged dim reduces)")
        return self.total if reduce == "sum" else self.total / self.count

    def sum(self, *args, **kwargs):
        return self._reduce("sum", *args, **kwargs)

    def mean(self, *args, **kwargs):
        return self._reduce("mean", *args, **kwargs)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and type(args[0]) is cls:
            if func in (torch.sum, torch.Tensor.sum):
                return args[0]._reduce("sum", *args[1:], **kwargs)
            if func in (torch.mean, torch.Tensor.mean):
                return args[0]._reduce("mean", *args[1:], **kwargs)
        raise CellTraceError(f"{getattr(func, '__name__', func)} on a ragged argument (only a sum or mean over "
                             f"its ragged dim has a reduced form)")

    def __getattr__(self, name: str):
        raise CellTraceError(f"'.{name}' of a ragged argument (only a sum or mean over its ragged dim has a "
                             f"reduced form)")


@dataclass
class ReducedForm:
    """A ragged op type as an ordinary traced cell of ``(*fixed operands, *totals, *counts)``.
    ``split``: the prefix over its number operands (computed once per flush over every row of the
    op type) and the rest, or None."""

    program: CellProgram
    split: CellSplit | None
    numbers: tuple[int, ...]


def reduced_form(sig: Signature, flags: tuple, options: CellOptions, device=None) -> ReducedForm:
    """The reduced form of ragged op type ``sig`` for the modules' training ``flags``; raises
    CellTraceError (with the reason) where there is none."""
    spec = sig.meta["ragged"]
    if any(spec.lists):
        raise CellTraceError("a ragged list argument (its length is Python data)")
    module = sig.callee if isinstance(sig.callee, torch.nn.Module) else None
    n_fixed, n_ragged = len(sig.in_avals), len(spec.elements)
    fn = sig.fn

    def per_row(*operands):
        fixed = operands[:n_fixed]
        totals = operands[n_fixed:n_fixed + n_ragged]
        counts = operands[n_fixed + n_ragged:]
        return fn(*fixed, *(SegmentStandIn(t, c) for t, c in zip(totals, counts, strict=True)))

    counts = tuple(aval((1,) * len(e.shape), e.dtype) for e in spec.elements)
    if not all(e.dtype.is_floating_point for e in spec.elements):
        raise CellTraceError("a ragged argument of integer dtype")
    in_avals: tuple[AVal, ...] = (*sig.in_avals, *spec.elements, *counts)
    in_kinds = (*sig.in_kinds, *(ArgKind.LAZY,) * (2 * n_ragged))
    cell = AotCell(f"{sig.name} [reduced]", per_row, module, in_avals, in_kinds, options, device)
    program = cell.program(flags)
    if program is None:
        raise CellTraceError(cell.errors.get(flags, "not traceable"))
    numbers = tuple(i for i, k in enumerate(sig.in_kinds) if k is ArgKind.NUMBER)
    split = cell.split(flags, numbers) if numbers and len(numbers) < len(in_avals) else None
    return ReducedForm(program, split, numbers)
