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
for this graph: ``fast_calls[cell] = (sid, pattern, out_avals, single)``, ``pattern`` holding per
argument the interned AVal a lazy argument must have, or ``INT_KEY`` / ``FLOAT_KEY`` for a Python
int / float (an immediate operand). It returns the call's lazy outputs (one value if ``single``,
else a tuple), or ``NotImplemented`` having recorded nothing when any argument differs. A cell the
recorder may split (NOTE: [Input split]) has a fifth item, ``(input depth, {kept-operands bit mask:
parts or None})``: natively the split is recorded too; the twin leaves such calls to the recorder.
"""
from __future__ import annotations

import os
from array import array

import numpy as np

NATIVE = False
if os.environ.get("PHALANX_NATIVE", "1") != "0":
    try:
        from ._columns import FLOAT_KEY, INT_KEY, CellCall, Columns, ValueBase, set_value_type
        NATIVE = True
    except ImportError:       # the extension was not built (no compiler at install time)
        pass

if not NATIVE:
    INT_KEY, FLOAT_KEY = object(), object()
    CellCall = None           # cell classes keep their Python __call__ (frontend/cell.py)
    _value_type = None

    def set_value_type(cls) -> None:
        global _value_type
        if not (isinstance(cls, type) and issubclass(cls, ValueBase)):
            raise TypeError("set_value_type expects a subclass of ValueBase")
        _value_type = cls

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

        __slots__ = ("node_sig", "node_depth", "arg_start", "arg_code", "imms", "fast_calls", "num_values",
                     "phase_base")

        def __init__(self):
            # int64 arrays, like the native IntColumn: appended per node, copied to numpy per flush.
            self.node_sig = array("q")
            self.node_depth = array("q")
            self.arg_start = array("q", [0])
            self.arg_code = array("q")
            self.imms: list = []
            self.fast_calls: dict = {}
            self.num_values = 0
            self.phase_base = 0

        def append_call(self, cell, args: tuple):
            entry = self.fast_calls.get(cell)
            if entry is None:
                return NotImplemented
            if len(entry) > 4:
                return NotImplemented      # a split cell: the recorder's _record_split takes it
            sid, pattern, out_avals, single = entry
            if len(args) != len(pattern):
                return NotImplemented
            value_type = _value_type
            depth = 0
            for a, p in zip(args, pattern):
                t = type(a)
                if t is value_type:
                    if a.aval is not p or a.graph is not self:
                        return NotImplemented
                    if a.depth >= depth:
                        depth = a.depth + 1
                elif not ((t is int and p is INT_KEY) or (t is float and p is FLOAT_KEY)):
                    return NotImplemented
            arg_code, imms = self.arg_code, self.imms
            for a in args:
                if type(a) is value_type:
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


def as_array(column):
    """A column as a fresh int64 numpy array (one copy through the buffer protocol)."""
    return np.frombuffer(column, dtype=np.int64).copy() if len(column) else np.zeros(0, dtype=np.int64)


__all__ = ["NATIVE", "as_array", "CellCall", "Columns", "ValueBase", "INT_KEY", "FLOAT_KEY", "set_value_type"]
