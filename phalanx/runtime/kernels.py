"""Batched kernels: the batched version of one signature's per-instance function.

Four ways to batch, chosen once per signature and training-flags tuple (``sig.kernels``):
- ``native``: call the per-instance function on tensors with a leading batch dimension. Correct for
  batch-polymorphic code (nn.Linear, elementwise ops, ``cat(dim=-1)``...) and the fastest.
- ``shifted``: an op-level torch function with its dim arguments moved past the batch dimension
  (``torch.stack(xs)`` -> ``torch.stack(xs, dim=1)``; rules/dims.py).
- ``vmap``: ``torch.func.vmap`` of the per-instance function; correct for any vmappable code.
- ``vmap-random``: vmap with ``randomness="different"``, for cells that draw random numbers
  (dropout in train mode): every instance gets its own independent draw.
- ``expand``: a signature without per-instance operands computes once and is broadcast.

NOTE: [Sound batching] a sampled probe cannot prove that a cell is batch-polymorphic on its own,
so with ``batching="auto"`` (the default) the per-instance oracle runs on the probe rows under
taint tracking (frontend/capture.py ``DecisionMode``): if the cell hands data computed from its
operands to Python (``bool``, ``item``, ``int``... : data-dependent control flow), it is refused
with ``DataDependentError`` naming the cell and pointing to fibers, whatever the rows did. Without
such decisions a cell computes the same op sequence for every row, and native is kept only if it
equals the per-instance function row by row on perturbed probe rows (tolerances by dtype);
otherwise vmap, checked the same way. A cell that draws random numbers cannot be compared row by
row and would share one draw across rows natively: vmap-random.
"""
from __future__ import annotations

import warnings

import torch

from ..errors import BatchExecutionError, DataDependentError, UnsupportedOpError
from ..frontend.capture import run_observed
from ..ir.signature import Signature

_PROBE_SEED = 0x5EED
# (rtol, atol) for comparing a candidate kernel with the per-instance function, by dtype.
_TOLERANCE = {torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2), torch.float64: (1e-7, 1e-9)}
_DEFAULT_TOLERANCE = (1e-4, 1e-5)


class BatchedKernel:
    __slots__ = ("sig", "mode", "_call")

    def __init__(self, sig: Signature, mode: str):
        self.sig = sig
        self.mode = mode
        if mode == "native":
            self._call = sig.fn
        elif mode == "shifted":
            self._call = sig.meta["shifted"]          # rules/dims.py: dims moved past the batch dim
        elif mode == "vmap":
            self._call = torch.func.vmap(sig.fn, in_dims=0)
        elif mode == "vmap-random":
            self._call = torch.func.vmap(sig.fn, in_dims=0, randomness="different")
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
        if size == 1 and any(o.shape == a.shape for o, a in zip(outs, sig.out_avals, strict=True)):
            # A batch of one through a native ``squeeze()`` loses its batch dim too; put it back.
            outs = tuple(o.unsqueeze(0) if o.shape == a.shape else o for o, a in zip(outs, sig.out_avals, strict=True))
        for out, aval in zip(outs, sig.out_avals, strict=True):
            if out.shape[1:] != aval.shape or out.shape[0] != size:
                raise BatchExecutionError(
                    f"{sig.name}: batched call returned shape {tuple(out.shape)}, expected "
                    f"({size}, {', '.join(map(str, aval.shape))}); mark the cell batching='vmap'")
        return outs


def kernel_for(sig: Signature, operands: list, size: int, flags: tuple = ()) -> BatchedKernel:
    """The kernel of ``sig`` for the training ``flags`` of its modules, probing on first use."""
    kernel = sig.kernels.get(flags)
    if kernel is None:
        # An installed kernel (cells/kernel.py) serves every flags tuple; an ahead-of-time cell
        # (cells/aot.py) has a traced program per flags tuple; otherwise choose one by probing.
        kernel = sig.meta.get("kernel")
        if kernel is None and "aot" in sig.meta:
            kernel = sig.meta["aot"].kernel(flags)
        if kernel is None:
            kernel = _choose(sig, operands, size)
        sig.kernels[flags] = kernel
    sig.kernel = kernel
    return kernel


def is_data_dependent(error: BaseException) -> bool:
    text = str(error)
    return "vmap" in text and ("data-dependent control flow" in text or ".item()" in text)


def data_dependent_error(sig: Signature, error: "BaseException | str") -> DataDependentError:
    return DataDependentError(
        f"{sig.name} branches on tensor data inside the cell ({str(error).splitlines()[0]}), so it cannot be "
        f"batched soundly. Move the decision out of the cell into the per-instance code, where phalanx fibers "
        f"suspend the instance and batch the rest, or make the cell branch-free (torch.where)")


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
        picked = op.index_select(0, rows.to(op.device))
        if picked.dtype.is_floating_point:
            # Real rows are often all equal (zero states, shared constants); noise on every float
            # operand makes a batching that mixes rows visible.
            noise = torch.randn(picked.shape, generator=gen, dtype=torch.float32).to(picked.device, picked.dtype)
            picked = picked + noise
        probe.append(picked)
    return probe


def _matches(got: tuple, expected: list) -> bool:
    for g, x in zip(got, expected, strict=True):
        if g.shape != x.shape or g.dtype != x.dtype:
            return False
        rtol, atol = _TOLERANCE.get(x.dtype, _DEFAULT_TOLERANCE)
        if x.is_floating_point() or x.is_complex():
            if not torch.allclose(g, x, rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif not torch.equal(g, x):
            return False
    return True


def _choose(sig: Signature, operands: list, size: int) -> BatchedKernel:
    from ..frontend.recorder import run_unrecorded

    if not sig.in_kinds:
        return BatchedKernel(sig, "expand")
    declared = sig.meta.get("batching", "auto")
    if declared in ("native", "vmap"):
        return BatchedKernel(sig, declared)
    with torch.no_grad(), warnings.catch_warnings():
        # vmap's "performance drop" warning for ops without a batching rule is not an error here.
        warnings.simplefilter("ignore")
        probe = _probe_operands(sig, operands, size)
        n = len(probe[0])
        rows = []
        for i in range(n):
            out, decision = run_unrecorded(run_observed, [sig.fn, [p[i] for p in probe]], sig.name, sig.in_avals)
            if decision is not None:
                raise data_dependent_error(sig, f"{decision} on data computed from its operands")
            rows.append(out)
        try:
            expected = [torch.stack(col) for col in zip(*map(sig.flatten, rows), strict=True)]
        except RuntimeError as e:      # e.g. torch.nonzero: each row's output has its own shape
            raise UnsupportedOpError(
                f"{sig.name} on operands ({', '.join(map(repr, sig.in_avals))}) cannot be batched: its "
                f"per-instance outputs differ in shape from row to row ({str(e).splitlines()[0]})") from e
        failures = []
        for mode in ("native", "shifted", "vmap") if "shifted" in sig.meta else ("native", "vmap"):
            kernel = BatchedKernel(sig, mode)
            try:
                got = kernel(probe, n)
            except Exception as e:  # noqa: BLE001  (a failed candidate is expected; we try the next one)
                if mode == "vmap" and "random" in str(e):
                    return BatchedKernel(sig, "vmap-random")
                failures.append(f"{mode}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            if _matches(got, expected):
                return kernel
            failures.append(f"{mode}: results differ from the per-instance function")
    raise UnsupportedOpError(
        f"{sig.name} on operands ({', '.join(map(repr, sig.in_avals))}) cannot be batched: " + "; ".join(failures))
