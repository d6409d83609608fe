"""``phalanx.cell``: mark a static sub-computation written for ONE instance.

Outside a phalanx run a cell runs eagerly (so a model is its own unbatched reference). Inside a run,
one call records ONE graph node whatever the cell does inside; all nodes of one op type later run
as one batched call. Python numbers passed to a cell arrive as 0-d tensors, both eagerly and
batched, so the cell body sees the same types in both modes.
"""
from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from ..ir.columns import CellCall
from . import recorder as _recorder
from .recorder import _SLOT
from .swap_gate import GATE

_BATCHING_MODES = ("auto", "vmap", "native")


def _convert_numbers(args: tuple, module: "nn.Module | None" = None) -> tuple:
    if any(type(a) in (int, float, bool) for a in args):
        # On the cell's own device, as the batched run puts them on the model's device.
        device = next(module.parameters(), None) if module is not None else None
        device = device.device if device is not None else None
        return tuple(_recorder.number_to_tensor(a, device) if type(a) in (int, float, bool) else a for a in args)
    return args


def _check_batching(batching: str) -> str:
    if batching not in _BATCHING_MODES:
        raise ValueError(f"batching must be one of {_BATCHING_MODES}, got {batching!r}")
    return batching


def _with_fast_path(slow: Callable) -> Callable:
    """A cell's ``__call__``: the recording fast path (``Columns.append_call``, ir/columns.py) first,
    then ``slow(cell, *args, **kwargs)`` (an eager call, or the recorder's Python path) for whatever
    it declines. Natively a ``CellCall``, with no Python frame on the fast path (NOTE: [Native
    columns]); else the same in Python."""
    if CellCall is not None:
        return CellCall(_SLOT, slow)

    def call(self, *args, **kwargs):
        rec = _SLOT.rec
        if rec is not None and not kwargs:
            out = rec.append_call(self, args)
            if out is not NotImplemented:
                return out
        return slow(self, *args, **kwargs)

    return call


def _function_cell_call(self, *args, **kwargs):
    rec = _SLOT.rec
    if rec is None:
        return self.fn(*_convert_numbers(args), **kwargs)
    return rec.record_cell(self, args, kwargs)


def _module_cell_call(self, *args, **kwargs):
    rec = _SLOT.rec
    if rec is None:
        count = GATE.enter_eager()      # NOTE: [Swapped parameters]
        try:
            return nn.Module.__call__(self, *_convert_numbers(args, self), **kwargs)
        finally:
            GATE.exit_eager(count)
    return rec.record_cell(self, args, kwargs)


_CELL_CALL = _with_fast_path(_module_cell_call)


class Cell:
    """A function cell. Use ``phalanx.cell(fn)`` or ``@phalanx.cell``."""

    def __init__(self, fn: Callable, name: str | None = None, batching: str = "auto"):
        self.fn = fn
        self._phalanx_name = f"cell {name or getattr(fn, '__name__', repr(fn))}"
        self._phalanx_batching = _check_batching(batching)
        functools.update_wrapper(self, fn)

    def _phalanx_fn(self) -> Callable:
        return self.fn

    __call__ = _with_fast_path(_function_cell_call)

    def __repr__(self) -> str:
        return f"<phalanx {self._phalanx_name}>"


def _module_fn(self) -> Callable:
    return functools.partial(nn.Module.__call__, self)


def _cellify_class(cls: type, name: str | None, batching: str) -> type:
    cls.__call__ = _CELL_CALL
    cls._phalanx_fn = _module_fn
    cls._phalanx_batching = _check_batching(batching)
    # A subclass of a cell class inherits this name unless it is decorated itself.
    cls._phalanx_name = f"cell {name or cls.__qualname__}"
    return cls


class CellModule(nn.Module):
    """Wraps an ``nn.Module`` instance as a cell (its parameters live under ``.inner``)."""

    def __init__(self, inner: nn.Module, name: str | None = None, batching: str = "auto"):
        super().__init__()
        self.inner = inner
        self._phalanx_name = f"cell {name or type(inner).__qualname__}"
        self._phalanx_batching = _check_batching(batching)

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    __call__ = _CELL_CALL
    _phalanx_fn = _module_fn


def cell(obj=None, *, name: str | None = None, batching: str = "auto"):
    """Mark ``obj`` as a cell: an ``nn.Module`` subclass (decorator), an ``nn.Module`` instance, or a
    function. ``batching`` picks how the batched version is made: ``"auto"`` (default) checks once
    per op type whether calling the cell on a batch gives the same result as ``torch.func.vmap`` and
    uses the faster correct one; ``"vmap"`` always vmaps; ``"native"`` trusts the cell to accept a
    leading batch dimension.

    **Example:**

    >>> @phalanx.cell
    ... class Leaf(nn.Module):
    ...     def __init__(self): super().__init__(); self.emb = nn.Embedding(100, 8)
    ...     def forward(self, word): return torch.tanh(self.emb(word))   # word: 0-d tensor
    """
    if obj is None:
        return lambda o: cell(o, name=name, batching=batching)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return _cellify_class(obj, name, batching)
    if isinstance(obj, nn.Module):
        return CellModule(obj, name, batching)
    if callable(obj):
        return Cell(obj, name, batching)
    raise TypeError(f"phalanx.cell expects an nn.Module subclass or instance, or a function; got {obj!r}")


def is_cell(obj) -> bool:
    return hasattr(type(obj), "_phalanx_fn") or isinstance(obj, Cell)


__all__ = ["cell", "Cell", "CellModule", "is_cell"]
