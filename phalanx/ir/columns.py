"""The append-only node columns of a DataflowGraph and the storage of a lazy value, with the
recording fast path ``Columns.append_call``: native (ir/_columns.c, NOTE: [Native columns]) when
the extension was built, else the pure-Python twin below, which behaves the same.

Natively, ``CellCall`` is also available: a cell class's ``__call__`` that reaches ``append_call``
without running Python (frontend/cell.py).

The columns ``node_sig``, ``node_depth``, ``arg_start``, ``arg_code`` are int64 columns (native
``IntColumn``, or ``array.array('q')`` in the twin): list-like appends, and numpy reads them with one
copy through the buffer protocol (``as_array``).

``PHALANX_NATIVE=0`` in the environment selects the Python twin (tests compare the two).

``append_call(cell, args)`` records a call of a cell whose op type the recorder already resolved
for this graph: ``fast_calls[cell] = (sid, pattern, out_avals, single, split, next)``, ``pattern``
holding per argument the interned AVal a lazy argument must have, ``INT_KEY`` / ``FLOAT_KEY`` for a
Python int / float, or ``(TENSOR_KEY, aval)`` for a per-instance tensor operand: a plain
``torch.Tensor`` of that aval, or a *stale* lazy value of that aval (recorded by an earlier fiber
round of the same run: its graph's ``run`` is this graph's, not None; the hub resolves it to its
concrete row when this graph is flushed, NOTE: [Values across rounds] in runtime/fibers.py).
Numbers, tensors and stale values become immediate operands. ``next`` is None or the entry of
another op type of the same cell, tried in turn (NOTE: [Fast entry chains] in
frontend/recorder.py); the last two items may be missing. It returns the call's lazy outputs (one
value if ``single``, else a tuple), or ``NotImplemented`` having recorded nothing when no entry
matches. ``split`` is None, or for a cell the recorder may split (NOTE: [Input split]) ``(input
depth, {kept-operands bit mask: parts or None})``: natively the split is recorded too; the twin
leaves such calls to the recorder.

A pattern item ``(RAGGED_KEY, element)`` takes a ``RaggedStack`` (frontend/ragged.py; its storage
is ``RaggedBase``) of this graph whose members have that aval; the node's operands are then the other
arguments, then the members of each stack in turn, the call's stacks all of one length (NOTE:
[Native ragged stacks] in _columns.c). ``stack_values(xs)`` makes such a stack of lazy values of the
active graph natively (the twin: NotImplemented, leaving it to the recorder's ``try_stack``), and
natively ``TorchFunction`` is ``LazyValue.__torch_function__`` (frontend/value.py).

``RecorderSlot`` holds the thread's active recorder and fibers hub (NOTE: [Native recorder slot]),
``plain_items(items)`` tells whether every item is a plain number, string or None (what
``Recorder.lazify`` need not look into).
"""
from __future__ import annotations

import os
import threading
from array import array

import numpy as np

NATIVE = False
if os.environ.get("PHALANX_NATIVE", "1") != "0":
    try:
        from ._columns import (FLOAT_KEY, INT_KEY, RAGGED_KEY, TENSOR_KEY, CellCall, Columns, RaggedBase,
                               RecorderSlot, TorchFunction, ValueBase, plain_items, set_ragged_type, set_value_type,
                               stack_values)
        NATIVE = True
    except ImportError:       # the extension was not built (no compiler at install time)
        pass

if not NATIVE:
    INT_KEY, FLOAT_KEY, TENSOR_KEY, RAGGED_KEY = object(), object(), object(), object()
    CellCall = None           # cell classes keep their Python __call__ (frontend/cell.py)
    TorchFunction = None      # LazyValue keeps its Python __torch_function__ (frontend/value.py)

    def stack_values(xs):
        """The twin leaves every stack to the recorder (``try_stack``), which makes the same one."""
        return NotImplemented

    def set_ragged_type(cls) -> None:
        if not (isinstance(cls, type) and issubclass(cls, RaggedBase)):
            raise TypeError("set_ragged_type(a subclass of RaggedBase)")

    class RaggedBase:
        """Storage of a ragged stack (frontend/ragged.py): members, element, graph, vids, top."""

        __slots__ = ("members", "element", "graph", "vids", "top", "_stacked")

        def __init__(self, members: tuple, element, graph, vids=None, top: int = -1):
            self.members = members
            self.element = element
            self.graph = graph
            # The members' value ids and 1 + their deepest depth (0 without members).
            self.vids = [m.vid for m in members]
            self.top = top if top >= 0 else max((m.depth + 1 for m in members), default=0)
            self._stacked = None

    _PLAIN = frozenset((int, float, bool, str, bytes, complex, type(None)))

    def plain_items(items) -> bool:
        """Is every item an int, float, bool, str, bytes, complex or None (exactly those types)?"""
        return _PLAIN.issuperset(map(type, items))

    class RecorderSlot(threading.local):
        """The thread's active recorder and fibers hub (NOTE: [Native recorder slot] in _columns.c)."""

        rec = None
        hub = None
    _value_type = _tensor_type = None

    def set_value_type(cls, tensor_cls) -> None:
        """The ValueBase subclass ``append_call`` creates, and the exact tensor type a per-instance
        tensor operand has."""
        global _value_type, _tensor_type
        if not (isinstance(cls, type) and issubclass(cls, ValueBase) and isinstance(tensor_cls, type)):
            raise TypeError("set_value_type(a subclass of ValueBase, torch.Tensor)")
        _value_type, _tensor_type = cls, tensor_cls

    class ValueBase:
        """Storage of a lazy value: vid, aval, depth, graph."""

        __slots__ = ("vid", "aval", "depth", "graph")

        def __init__(self, vid, aval, depth, graph):
            self.vid = vid
            self.aval = aval
            self.depth = depth
            self.graph = graph

    class Columns:
        """Append-only node columns with ``append_call`` (see the module docstring)."""

        __slots__ = ("node_sig", "node_depth", "arg_start", "arg_code", "imms", "fast_calls", "run", "num_values",
                     "phase_base")

        def __init__(self):
            # int64 arrays, like the native IntColumn: appended per node, copied to numpy per flush.
            self.node_sig = array("q")
            self.node_depth = array("q")
            self.arg_start = array("q", [0])
            self.arg_code = array("q")
            self.imms: list = []
            self.fast_calls: dict = {}
            self.run = None               # the fibers run recording this graph (a token), or None
            self.num_values = 0
            self.phase_base = 0

        def append_call(self, cell, args: tuple):
            entry = self.fast_calls.get(cell)
            while entry is not None:
                depth = self._match(entry[1], args)
                if depth is not None:
                    break
                entry = entry[5] if len(entry) > 5 else None
            else:
                return NotImplemented
            if len(entry) > 4 and entry[4] is not None:
                return NotImplemented      # a split cell: the recorder's _record_split takes it
            sid, _, out_avals, single = entry[:4]
            value_type = _value_type
            arg_code, imms = self.arg_code, self.imms
            for a in args:
                if type(a) is value_type and a.graph is self:
                    arg_code.append(a.vid)
                else:
                    arg_code.append(-1 - len(imms))
                    imms.append(a)
            if depth < self.phase_base:
                depth = self.phase_base
            self.node_sig.append(sid)
            self.node_depth.append(depth)
            self.arg_start.append(len(arg_code))
            first = self.num_values
            self.num_values = first + len(out_avals)
            if single:
                return value_type(first, out_avals[0], depth, self)
            return tuple(value_type(first + k, a, depth, self) for k, a in enumerate(out_avals))

        def _match(self, pattern, args: tuple):
            """1 + the deepest lazy argument of this graph (0 without one) if ``args`` match the
            pattern, else None."""
            if len(args) != len(pattern):
                return None
            value_type = _value_type
            depth = 0
            for a, p in zip(args, pattern):
                t = type(a)
                tensor_aval = p[1] if type(p) is tuple and len(p) == 2 and p[0] is TENSOR_KEY else None
                if t is value_type:
                    if a.graph is self:
                        if a.aval is not p:
                            return None
                        if a.depth >= depth:
                            depth = a.depth + 1
                    elif tensor_aval is None or a.aval is not tensor_aval or not is_stale(self, a):
                        return None
                elif t is _tensor_type:
                    if tensor_aval is None or a.dtype is not tensor_aval.dtype or a.shape != tensor_aval.shape:
                        return None
                elif not ((t is int and p is INT_KEY) or (t is float and p is FLOAT_KEY)):
                    return None
            return depth


def is_stale(graph, value) -> bool:
    """Is ``value`` (not of ``graph``) a lazy value of an earlier round of the same fibers run?"""
    run = graph.run
    return run is not None and isinstance(value.graph, type(graph)) and value.graph.run is run


def as_array(column):
    """A column as a fresh int64 numpy array (one copy through the buffer protocol)."""
    return np.frombuffer(column, dtype=np.int64).copy() if len(column) else np.zeros(0, dtype=np.int64)


__all__ = ["NATIVE", "as_array", "CellCall", "Columns", "RaggedBase", "RecorderSlot", "TorchFunction", "ValueBase",
           "plain_items",
           "INT_KEY", "FLOAT_KEY", "RAGGED_KEY", "TENSOR_KEY", "is_stale", "set_ragged_type", "set_value_type",
           "stack_values"]
