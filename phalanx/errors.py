"""Every error phalanx raises on bad input. Each names what was wrong: the instance, the cell or op,
the shapes. The original exception is always kept as ``__cause__``."""
from __future__ import annotations


class PhalanxError(Exception):
    """Base class of every phalanx error. Raised while recording instance i, it has ``instance = i``
    and its message starts with ``instance i:``."""

    instance: int | None = None


class InstanceError(PhalanxError):
    """User code raised while recording instance ``index``; the original exception is ``__cause__``."""

    def __init__(self, index: int, message: str):
        super().__init__(f"instance {index}: {message}")
        self.index = self.instance = index


class CellCallError(PhalanxError):
    """A cell or op could not run on the abstract values it was given (usually a shape mismatch)."""


class UnsupportedOpError(PhalanxError):
    """An op on lazy values that phalanx cannot record or batch; the message names the op."""


class DataDependentError(PhalanxError):
    """User code asked for the concrete value of a lazy value (``bool``, ``item``, ``tolist``...).

    Tensor-dependent control flow needs fibers (see DESIGN.md); until then such code must run outside
    phalanx or keep the decision inside a cell."""


class ResultStructureError(PhalanxError):
    """The per-instance function returned something that is not a structure of tensors."""


class BatchExecutionError(PhalanxError):
    """A batched kernel failed or produced outputs of the wrong shape; names the op and instances."""


class PolicyMismatchError(PhalanxError):
    """A saved or trained scheduling policy does not fit: the graph has op types outside the policy's
    fingerprint (the message names them), or the policy file has another format version."""


class CellTraceError(UnsupportedOpError):
    """A cell could not be traced or batchified ahead of time (phalanx/cells); names the cell and
    the operand shapes. The runtime can still run it through ``torch.func.vmap``."""


class CellDataDependentError(DataDependentError):
    """A cell body branches on tensor data (``if h.sum() > 0``, ``.item()``, a boolean mask): no
    single batched program is right for every row. Keep the decision outside the cell (fibers), or
    write it with tensor ops (``torch.where``)."""
