"""The swap point: a CellProgram as a signature's batched kernel.

``runtime.kernels.kernel_for`` uses a kernel installed in ``Signature.meta["kernel"]`` for every
training-flags tuple; a ``CellKernel`` there has
the same contract as ``BatchedKernel`` (``mode``, ``__call__(operands, size) -> flat tuple``), so the
executor runs it unchanged, forward and batched backward (parameter gradients reach the module's
tensors because the program reads them at every call).

Where the runtime meets it: the recorder traces a cell's program when it first sees the op type
(cells/aot.py ``AotCell``, where the callee module is known) and records an input split's prefix
node (``auto_split``, the recorder's NOTE: [Input split]); a training flush announces each program
once (``program.begin_flush()``, executor ``_begin_flush``: hoisted values computed once per
flush); and ``FlushParams.finish`` (runtime/params.py) densifies a row-sparse parameter gradient
unless the user's own embedding is sparse (autograd would otherwise store a sparse ``.grad`` that
Adam rejects).
"""
from __future__ import annotations

from torch import nn

from ..ir.signature import Signature
from .build import compile_cell
from .options import CellOptions
from .program import CellProgram


class CellKernel:
    __slots__ = ("sig", "program", "mode", "calls")

    def __init__(self, sig: Signature, program: CellProgram):
        self.sig = sig
        self.program = program
        self.mode = program.mode
        self.calls = 0     # batches run (stats, tests)

    def __call__(self, operands: list, size: int, consume: bool = False, into: "list | None" = None) -> tuple:
        """``consume``, ``into``: NOTE: [Consumed operands], [Direct outputs] (cells/inplace.py)."""
        self.calls += 1
        return self.program(operands, size, consume, into)


def install(sig: Signature, module: nn.Module | None, options: CellOptions = CellOptions()) -> CellKernel:
    """Compile ``sig``'s cell and make it the signature's kernel."""
    program = compile_cell(sig.fn, module, sig.in_avals, sig.in_kinds, options, name=sig.name)
    sig.kernels.clear()
    sig.kernel = sig.meta["kernel"] = CellKernel(sig, program)
    return sig.kernel
