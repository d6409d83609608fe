"""Batched kernels: the batched version of one signature's per-instance function.

Three ways to batch, chosen once per signature (the kernel is cached on ``sig.kernel``):
- ``native``: call the per-instance function on tensors with a leading batch dimension. Correct for
  batch-polymorphic code (nn.Linear, elementwise ops, ``cat(dim=-1)``...) and the fastest.
- ``vmap``: ``torch.func.vmap`` of the per-instance function; correct for any vmappable code.
- ``expand``: a signature without per-instance operands computes once and is broadcast.

With ``batching="auto"`` (the default) the first batch runs a probe: the per-instance function is
applied row by row to a few probe rows (the oracle), then native and vmap are tried on the stacked
rows, and the first one that matches the oracle is kept. The probe batch size avoids every
dimension size in the signature, so a shape coincidence cannot make native look right. If neither
matches, the op cannot be batched and UnsupportedOpError names it.
"""
from __future__ import annotations

import torch

from ..errors import BatchExecutionError, UnsupportedOpError
from ..ir.signature import Signature

_PROBE_SEED = 0x5EED


class BatchedKernel:
    __slots__ = ("sig", "mode", "_call")

    def __init__(self, sig: Signature, mode: str):
        self.sig = sig
        self.mode = mode
        if mode == "native":
            self._call = sig.fn
        elif mode == "vmap":
            self._call = torch.func.vmap(sig.fn, in_dims=0)
        elif mode == "expand":
            self._call = None
        else:
            raise ValueError(mode)

    def __call__(self, operands: list, size: int) -> tuple:
        sig = self.sig
        if self._call is None:
            outs = sig.flatten(sig.fn())
            return tuple(o.unsqueeze(0).expand(size, *o.shape) for o in outs)
        outs = sig.flatten(self._call(*operands))
        for out, aval in zip(outs, sig.out_avals, strict=True):
            if out.shape[1:] != aval.shape or out.shape[0] != size:
                raise BatchExecutionError(
                    f"{sig.name}: batched call returned shape {tuple(out.shape)}, expected "
                    f"({size}, {', '.join(map(str, aval.shape))}); mark the cell batching='vmap'")
        return outs


def kernel_for(sig: Signature, operands: list, size: int) -> BatchedKernel:
    """The cached kernel of ``sig``, probing on the first batch's operands if needed."""
    if sig.kernel is None:
        sig.kernel = _choose(sig, operands, size)
    return sig.kernel


def _probe_size(sig: Signature) -> int:
    dims = {d for a in (*sig.in_avals, *sig.out_avals) for d in a.shape}
    size = 3
    while size in dims:
        size += 1
    return size


def _probe_operands(sig: Signature, operands: list, size: int) -> list:
    gen = torch.Generator().manual_seed(_PROBE_SEED)
    rows = torch.randint(size, (_probe_size(sig),), generator=gen)
    probe = []
    for op in operands:
        picked = op.index_select(0, rows)
        if picked.dtype.is_floating_point:
            # Real rows are often all equal (zero states, shared constants); noise on every float
            # operand makes a batching that mixes rows visible.
            picked = picked + torch.randn(picked.shape, generator=gen, dtype=picked.dtype)
        probe.append(picked)
    return probe


def _choose(sig: Signature, operands: list, size: int) -> BatchedKernel:
    from ..frontend.recorder import run_unrecorded

    if not sig.in_kinds:
        return BatchedKernel(sig, "expand")
    mode = sig.meta.get("batching", "auto")
    if mode != "auto":
        return BatchedKernel(sig, mode)
    with torch.no_grad():
        probe = _probe_operands(sig, operands, size)
        rows = [run_unrecorded(sig.fn, [p[i] for p in probe], sig.name, sig.in_avals)
                for i in range(len(probe[0]))]
        expected = [torch.stack(col) for col in zip(*map(sig.flatten, rows), strict=True)]
        failures = []
        for mode in ("native", "vmap"):
            kernel = BatchedKernel(sig, mode)
            try:
                got = kernel(probe, len(probe[0]))
            except Exception as e:  # a failed candidate is expected; we try the next one
                failures.append(f"{mode}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            if all(g.shape == x.shape and g.dtype == x.dtype and torch.allclose(g, x, rtol=1e-4, atol=1e-5, equal_nan=True)
                   for g, x in zip(got, expected, strict=True)):
                return kernel
            failures.append(f"{mode}: results differ from the per-instance function")
    raise UnsupportedOpError(
        f"{sig.name} on operands ({', '.join(map(repr, sig.in_avals))}) cannot be batched: " + "; ".join(failures))
