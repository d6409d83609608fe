"""Cells analysed ahead of time (ACRoBat on PyTorch): a cell written for ONE instance becomes a
batched program, traced once per signature.

Interface for the runtime (``Signature.kernel`` is the swap point)::

    program = compile_cell(sig.fn, module_or_None, sig.in_avals, sig.in_kinds, CellOptions(...))
    outs = program(operands, size)       # operands with a leading batch dim -> flat tuple of outputs
    program.begin_flush()                # once per flush (hoisted values of a training flush)
    split = auto_split(program, lower={0})   # prefix over operand 0 + rest, or None

- ``trace.py``: fake-tensor ``make_fx`` of the per-instance cell with parameters and buffers as
  explicit inputs (``functional_call``), then of its ``vmap``: each aten op gets its exact batching
  rule at trace time; the batch size is generalized from three traces. Data-dependent control flow
  raises ``CellDataDependentError`` (fibers); anything untraceable ``CellTraceError``.
- ``hoist.py``: taint analysis (values that read only parameters/constants) and the hoist graph,
  cached while the parameters' identity / version / dtype / requires_grad are unchanged.
- ``simplify.py``: reshape chains back to their start shape dropped (NOTE: [Shape round trips]).
- ``merge.py``: CSE, then parallel matmuls reading the same input -> one with a concatenated weight;
  a sum of two GEMMs -> one accumulating into the other (NOTE: [Accumulated GEMMs]).
- ``inplace.py``: the no_grad program: elementwise ops on the program's own temporaries in place,
  torch's bindings called directly (NOTE: [In-place inference], NOTE: [Direct calls]).
- ``split.py``: the prefix that reads only some operands, for a lower-depth node (NOTE: [Split rule]).
- ``sparse.py``: embedding lookups with row-sparse weight gradients; ``densify`` once per flush.
- ``ragged.py``: variable-length operand lists (CSR) reduced per segment (NOTE: [Ragged cells]).
- ``reduced.py``: a ragged cell that only sums or averages its ragged argument, traced as an ordinary
  cell of the segment sums (NOTE: [Reduced ragged programs]).
- ``program.py``: ``CellProgram`` (call convention, hoist cache, optional ``torch.compile``).
- ``options.py``: ``CellOptions``, one ablation switch per optimization.

Parameter gradients flow through ordinary autograd: the program reads the module's current tensors,
so ``torch.autograd.grad(outs, operands + params)`` works as for the per-instance cell, except that
embedding weights get a sparse COO gradient when ``sparse_grads`` is on (``densify`` it).
"""
import importlib

from .options import CellOptions as CellOptions

# Tracing pulls in torch.fx's proxy-tensor machinery (about a second to import): load the heavy
# modules on first use, so ``import phalanx`` stays fast for code that never traces.
_LAZY = {"CellSplit": "build", "auto_split": "build", "compile_cell": "build", "split_program": "build",
         "CellCompileWarning": "program", "CellProgram": "program", "segment_reduce": "ragged",
         "densify": "sparse"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CellOptions", *_LAZY]
