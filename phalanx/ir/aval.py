"""Abstract values: the (shape, dtype) of one instance's tensor, interned so identity is equality.

A LazyValue carries an AVal instead of data; signatures and arenas are keyed by AVal objects, so
comparing or hashing them costs one pointer comparison on the recording hot path."""
from __future__ import annotations

import math
import weakref

import torch


class AVal:
    """Shape and dtype of a per-instance tensor (no batch dimension). Create with ``aval_of``/``aval``."""

    __slots__ = ("shape", "dtype", "numel", "nbytes", "__weakref__")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.numel = math.prod(shape)
        self.nbytes = self.numel * dtype.itemsize

    def __repr__(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        return f"{name}[{','.join(map(str, self.shape))}]"

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point or self.dtype.is_complex

    def zeros(self, device=None) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.dtype, device=device)


# Weak values: an aval lives as long as a signature, value or arena uses it, so a stream of new
# shapes does not grow this table forever.
_INTERNED: "weakref.WeakValueDictionary[tuple, AVal]" = weakref.WeakValueDictionary()


def aval(shape, dtype: torch.dtype) -> AVal:
    key = (tuple(shape), dtype)
    found = _INTERNED.get(key)
    if found is None:
        found = _INTERNED.setdefault(key, AVal(key[0], dtype))
    return found


def aval_of(tensor: torch.Tensor) -> AVal:
    return aval(tensor.shape, tensor.dtype)
