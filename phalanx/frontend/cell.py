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


class Cell:
    """A function cell. Use ``phalanx.cell(fn)`` or ``@phalanx.cell``."""

    def __init__(self, fn: Callable, name: str | None = None, batching: str = "auto"):
        self.fn = fn
        self._phalanx_name = f"cell {name or getattr(fn, '__name__', repr(fn))}"
        self._phalanx_batching = _check_batching(batching)
        functools.update_wrapper(self, fn)

    def _phalanx_fn(self) -> Callable:
        return self.fn

    def __call__(self, *args, **kwargs):
        rec = _SLOT.rec
        if rec is None:
            return self.fn(*_convert_numbers(args), **kwargs)
        if not kwargs:
            out = rec.append_call(self, args)        # the fast path (ir/columns.py)
            if out is not NotImplemented:
                return out
        return rec.record_cell(self, args, kwargs)

    if CellCall is not None:
        # Natively, the same call without a Python frame on the fast path (NOTE: [Native columns]).
        __call__ = CellCall(_SLOT, __call__)

    def __repr__(self) -> str:
        return f"<phalanx {self._phalanx_name}>"


def _cell_call(self, *args, **kwargs):
    rec = _SLOT.rec
    if rec is None:
        return nn.Module.__call__(self, *_convert_numbers(args, self), **kwargs)
    if not kwargs:
        out = rec.append_call(self, args)            # the fast path (ir/columns.py)
        if out is not NotImplemented:
            return out
    return rec.record_cell(self, args, kwargs)


def _module_fn(self) -> Callable:
    return functools.partial(nn.Module.__call__, self)


# Natively, a cell class's __call__ records without a Python frame on the fast path and defers to
# _cell_call for everything else (NOTE: [Native columns] in ir/_columns.c).
_CELL_CALL = CellCall(_SLOT, _cell_call) if CellCall is not None else _cell_call


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
