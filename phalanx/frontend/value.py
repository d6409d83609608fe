"""LazyValue: what user code holds inside a phalanx run instead of a tensor.

A LazyValue names one output value of a recorded node (``vid``) and knows its per-instance shape
and dtype (``aval``) and depth. It never holds data. Torch functions, operators and methods called
on it record a node (via ``__torch_function__``) and return new LazyValues; anything that needs the
data (``bool``, ``item``, ``tolist``, ``float``...) suspends the instance's fiber until the graph
recorded so far is flushed (runtime/fibers.py); outside a Batcher call it raises DataDependentError.
"""
from __future__ import annotations

import inspect
import types

import torch

from ..errors import UnsupportedOpError
from ..ir.columns import TorchFunction, ValueBase, set_value_type
from . import recorder as _recorder


class LazyValue(ValueBase):
    """``vid``, ``aval``, ``depth``, ``graph`` are stored by ``ValueBase`` (ir/columns.py: native when
    built, so the recording fast path creates values without running Python)."""

    __slots__ = ()

    # torch's override protocol: torch.tanh(v), F.linear(v, W), torch.cat([v, w]) land here. The
    # commonest, ``torch.stack(xs)`` of lazy values (a lattice node's predecessors): natively this
    # method is wrapped in a TorchFunction (set below) that makes the stack without a Python frame
    # (NOTE: [Native ragged stacks] in ir/_columns.c) and calls this body for everything else; the
    # recorder's ``try_stack`` makes the same stack without the extension.
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _recorder.active_or_error().record_op(func, args, kwargs or {})

    # *** static metadata: answered without recording ***
    @property
    def shape(self) -> torch.Size:
        return self.aval.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.aval.dtype

    @property
    def ndim(self) -> int:
        return len(self.aval.shape)

    @property
    def device(self) -> torch.device:
        return self.graph.device

    @property
    def requires_grad(self) -> bool:
        return self.aval.is_float

    @property
    def is_leaf(self) -> bool:
        return False

    @property
    def T(self):
        return self._method("t")()

    def size(self, dim=None):
        return self.aval.shape if dim is None else self.aval.shape[dim]

    def dim(self) -> int:
        return len(self.aval.shape)

    def numel(self) -> int:
        return self.aval.numel

    def __len__(self) -> int:
        if not self.aval.shape:
            raise TypeError("len() of a 0-d lazy value")
        return self.aval.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"LazyValue(v{self.vid}, {self.aval}, depth={self.depth})"

    # *** recording methods ***
    def _method(self, name: str):
        func = getattr(torch.Tensor, name)

        def call(*args, **kwargs):
            return _recorder.active_or_error().record_op(func, (self, *args), kwargs)

        return call

    def __getattr__(self, name: str):
        if name.startswith("__") or not hasattr(torch.Tensor, name):
            raise AttributeError(f"'LazyValue' has no attribute {name!r}")
        if name.endswith("_") and not name.endswith("__"):
            raise UnsupportedOpError(
                f"in-place op Tensor.{name} on a lazy value: lazy values are immutable; "
                f"use the out-of-place form Tensor.{name[:-1]}")
        return self._method(name)

    # *** suspension points (runtime/fibers.py): inside a Batcher call, each one suspends this
    # instance's fiber until the graph recorded so far is flushed, then answers from the value ***
    def _needs_value(self, what: str) -> torch.Tensor:
        return _recorder.force_value(self, what)

    def __bool__(self):
        """Suspends the instance (fiber) until its value is computed; ``if v > 0:`` lands here."""
        return bool(self._needs_value("bool()"))

    def item(self):
        """Suspends the instance (fiber) until its value is computed."""
        return _recorder.force_item(self)

    def tolist(self):
        """Suspends the instance (fiber) until its value is computed."""
        return self._needs_value(".tolist()").tolist()

    def numpy(self, *args, **kwargs):
        return self._needs_value(".numpy()").numpy(*args, **kwargs)

    def __float__(self):
        return float(self._needs_value("float()"))

    def __int__(self):
        return int(self._needs_value("int()"))

    def __index__(self):
        return self._needs_value("use as a Python index").__index__()

    def __array__(self, *args, **kwargs):
        self._needs_value("conversion to a numpy array")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise UnsupportedOpError(f"numpy's {ufunc.__name__} on a lazy value: numpy cannot record ops; use the torch "
                                 f"function (torch.{ufunc.__name__}) instead")

    def __array_function__(self, func, types, args, kwargs):
        raise UnsupportedOpError(f"numpy's {func.__name__} on a lazy value: numpy cannot record ops; use the torch "
                                 f"function instead")

    __hash__ = object.__hash__


def _binary(name: str):
    func = getattr(torch.Tensor, name)

    def method(self, *args):
        return _recorder.active_or_error().record_op(func, (self, *args), {})

    method.__name__ = name
    return method


# Operators are generated from a table, as torch.fx does for Proxy.
OPERATORS = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
             "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__pow__", "__rpow__",
             "__matmul__", "__rmatmul__", "__neg__", "__pos__", "__abs__", "__invert__", "__and__",
             "__or__", "__xor__", "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__")
for _name in (*OPERATORS, "__getitem__"):
    setattr(LazyValue, _name, _binary(_name))



def _tensor_method(name: str):
    func = getattr(torch.Tensor, name)

    def method(self, *args, **kwargs):
        return _recorder.active_or_error().record_op(func, (self, *args), kwargs)

    method.__name__ = method.__qualname__ = name
    return method


# Public methods of torch.Tensor are class attributes too, so ``v.argmax()`` is found by the ordinary
# lookup: through ``__getattr__`` each call first built (and dropped) an AttributeError and a closure,
# ~3 us of a decoder step's recording. ``__getattr__`` still answers every other name as before.
for _name in dir(torch.Tensor):
    if _name.startswith("_") or _name.endswith("_") or hasattr(LazyValue, _name):
        continue
    if isinstance(inspect.getattr_static(torch.Tensor, _name), (types.FunctionType, types.MethodDescriptorType)):
        setattr(LazyValue, _name, _tensor_method(_name))

if TorchFunction is not None:
    LazyValue.__torch_function__ = classmethod(TorchFunction(torch.stack, LazyValue.__dict__["__torch_function__"].__func__))

set_value_type(LazyValue, torch.Tensor)   # the exact tensor type of per-instance tensor operands
