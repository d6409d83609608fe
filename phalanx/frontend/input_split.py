"""The input split (NOTE: [Input split] in recorder.py): ahead-of-time cell programs attached to
new cell signatures, and the ``[input part]`` / ``[rest]`` signatures a split cell call records.

The recorder decides per call which operands are input-like; this module builds (once per table)
the signatures of the two halves from the cell's traced program (phalanx/cells ``auto_split``).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..ir.signature import ArgKind, Signature

_SPLIT = object()
# NOTE: [Input split]: how many levels into its phase an operand still counts as an input.
INPUT_DEPTH = 2


def attach_program(sig: Signature, callee, options, device) -> None:
    """Trace the cell ahead of time (phalanx/cells) for its modules' current training flags. A
    data-dependent body raises DataDependentError here, while recording; an untraceable one keeps
    the probe-checked kernels (the reason is in ``sig.meta["aot"].errors``)."""
    from ..cells.aot import AotCell

    module = callee if isinstance(callee, torch.nn.Module) else None
    aot = AotCell(sig.name, sig.fn, module, sig.in_avals, sig.in_kinds, options, device)
    sig.meta["aot"] = aot
    program = aot.program(tuple(m.training for m in sig.modules))
    sig.splittable = program is not None and aot.may_split


def _row_function(program, rebuild) -> Callable:
    """One instance's call of a batched program (the per-instance ``fn`` of a split signature)."""
    def per_instance(*operands):
        outs = program([o.unsqueeze(0) for o in operands], 1)
        return rebuild([o[0] for o in outs])
    return per_instance


def split_signatures(table, sig: Signature, flags: tuple, keep: tuple):
    """The (prefix, rest, other operand positions) of ``sig`` split over operands ``keep`` (NOTE:
    [Input split]), or None when the split would move no GEMM. Both are ordinary table entries."""
    key_rest = (_SPLIT, sig, flags, keep)
    rest = table.by_key.get(key_rest)
    split = sig.meta["aot"].split(flags, keep)
    if split is None:
        return None
    others = tuple(i for i in range(len(sig.in_avals)) if i not in keep)
    # Input parts of different op types (a lattice node of every in-degree) that compute the
    # same program over the same operands of the same cell are one op type: one batch.
    key_prefix = (_SPLIT, sig.callee, flags, tuple(sig.in_kinds[i] for i in keep),
                  tuple(sig.in_avals[i] for i in keep), split.prefix.main.code)
    prefix = table.by_key.get(key_prefix)
    if prefix is not None and rest is not None:
        return prefix, rest, others
    if prefix is None:
        prefix = _prefix_signature(table, sig, split, keep, key_prefix)
    if rest is None:
        rest = _rest_signature(table, sig, split, others, key_rest)
    return prefix, rest, others


def _rest_signature(table, sig: Signature, split, others: tuple, key) -> Signature:
    from ..cells.kernel import CellKernel

    n_pre = len(split.prefix.out_avals)
    rest = Signature(
        sid=len(table.sigs), name=f"{sig.name}[rest]", fn=_row_function(split.rest, sig.unflatten),
        in_kinds=(ArgKind.LAZY,) * n_pre + tuple(sig.in_kinds[i] for i in others),
        in_avals=(*split.prefix.out_avals, *(sig.in_avals[i] for i in others)),
        out_avals=sig.out_avals, unflatten=sig.unflatten, flatten=sig.flatten, captured=sig.captured,
        callee=sig.callee, modules=sig.modules, path=sig.path, single=sig.single,
        plain_tuple=sig.plain_tuple)
    rest.meta["kernel"] = CellKernel(rest, split.rest)
    # The input part's outputs are read by this rest only (the recorder feeds each call's prefix
    # values to its own rest), so inference may overwrite them (NOTE: [Consumed operands]).
    split.rest.consumable = frozenset(range(n_pre))
    rest.meta["consumes"] = tuple(range(n_pre))
    table.add(rest, key)
    return rest


def _prefix_signature(table, sig: Signature, split, keep: tuple, key) -> Signature:
    from ..cells.kernel import CellKernel

    prefix = Signature(
        sid=len(table.sigs), name=f"{sig.name}[input part]", fn=_row_function(split.prefix, tuple),
        in_kinds=tuple(sig.in_kinds[i] for i in keep), in_avals=tuple(sig.in_avals[i] for i in keep),
        out_avals=split.prefix.out_avals, unflatten=tuple, flatten=tuple, captured=sig.captured,
        callee=sig.callee, modules=sig.modules, path=sig.path, plain_tuple=True)
    prefix.meta["kernel"] = CellKernel(prefix, split.prefix)
    table.add(prefix, key)
    return prefix
