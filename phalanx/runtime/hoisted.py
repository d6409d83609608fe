"""Hoisted inputs: the part of a ragged cell that reads only its number operands runs once per
flush, over the rows of every batch of the op type, instead of once per batch.

NOTE: [Hoisted inputs] A lattice node reads its character (a number: known when the flush is
planned) and the mean of its predecessors' states (known only once they ran). Its embedding and
the GRU's input projection ``W_ih x + b_ih`` depend on the character alone, so, as DyNet and a
hand-batched lattice do, they can run as ONE large GEMM over every node of the flush instead of
one small GEMM per batch (M ~ 20 rows, measured ~1.5x slower per row than M ~ 1000 on this CPU).
No tracing: the segment kernel runs the cell's own code with each number operand replaced by a
``HoistedRows`` (the operand over all the op type's rows of the flush, ``full``, and this
batch's rows ``[lo, hi)``). Torch calls reach its ``__torch_function__``:
- a row-wise call (``ROW_WISE``: an embedding lookup, ``F.linear``, an activation) whose other
  tensors are the cell's parameters or buffers (never a value computed from an operand) runs
  once over ``full`` (cached per flush) and returns a HoistedRows of the result;
- an RNN cell op (``gru_cell``, ``lstm_cell``, ``rnn_tanh_cell``, ``rnn_relu_cell``) whose input
  is a HoistedRows: its input projection is hoisted the same way and the rest (``rnn_rest``) runs
  on this batch's rows, with fewer ops than ATen's CPU cell (fused gates, ``addcmul``, ``lerp``);
- anything else reads this batch's rows (a copy of ``full[lo:hi]``: code that writes into it
  must not write into rows other batches read), so the cell computes what it computes without
  hoisting; calls reading that value are not hoisted from then on.
The first batch of an op type (per training flags) runs both ways and keeps hoisting only if
they agree (tolerances by dtype, as every kernel choice; otherwise the plain segment kernel).
Inference only (grad disabled, the cell's modules in eval mode): the batched backward
differentiates one batch at a time (executor NOTE: [Batched backward]), which a value shared by
every batch would break; and the first batch's two runs must not update batch-norm statistics or
draw dropout masks twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ROW_WISE = {F.embedding, torch.embedding, F.linear, torch.tanh, torch.sigmoid, torch.relu, F.relu, F.gelu, F.silu,
            torch.Tensor.tanh, torch.Tensor.sigmoid, torch.Tensor.relu}
_INPLACE_ARG = {F.relu, F.silu}     # (input, inplace)
RNN_CELLS = {torch.gru_cell: "gru", torch.lstm_cell: "lstm", torch.rnn_tanh_cell: "tanh", torch.rnn_relu_cell: "relu"}


@dataclass
class FlushInputs:
    """One op type's number operands over every one of its batches in a flush (``numbers[p]``
    for fixed operand p), the hoisted calls' results over those rows (filled by the first batch
    that needs them), and the ids of the tensors a hoisted call may read besides them."""

    numbers: dict
    results: dict = field(default_factory=dict)
    constants: "set | None" = None


def constants_of(modules, captured) -> set:
    """Ids of the parameters and buffers of a cell's modules and its captured tensors: tensors no
    operand can have computed."""
    ids = {id(t) for m in modules for t in m.parameters(recurse=False)}
    ids.update(id(t) for m in modules for t in m.buffers(recurse=False))
    ids.update(id(t) for t in captured or () if isinstance(t, torch.Tensor))
    return ids


class HoistedRows:
    """A value over all of an op type's rows of the flush (``full``), standing for this batch's
    rows ``full[lo:hi]`` in the cell's code (NOTE: [Hoisted inputs])."""

    __slots__ = ("full", "lo", "hi", "inputs", "_rows")

    def __init__(self, full: torch.Tensor, lo: int, hi: int, inputs: FlushInputs):
        self.full, self.lo, self.hi, self.inputs = full, lo, hi, inputs
        self._rows = None

    def rows(self) -> torch.Tensor:
        """This batch's rows as a tensor of its own: code that writes into it (in place, or through
        a view) must not write into ``full``, which other batches read. From then on this value is
        that tensor: no call reading it is hoisted any more."""
        if self._rows is None:
            self._rows = self.full[self.lo:self.hi].clone()
        return self._rows

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.hi - self.lo, *self.full.shape[1:]))

    @property
    def dtype(self):
        return self.full.dtype

    @property
    def device(self):
        return self.full.device

    @property
    def ndim(self) -> int:
        return self.full.dim()

    def dim(self) -> int:
        return self.full.dim()

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.rows(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = RNN_CELLS.get(func)
        if kind is not None and not kwargs and len(args) == 6 and type(args[0]) is HoistedRows:
            out = _rnn_cell(kind, args)
            if out is not None:
                return out
        elif func in ROW_WISE:
            out = _row_wise(func, args, kwargs)
            if out is not None:
                return out
        return func(*_rows_of(args), **{k: _rows_of(v) for k, v in kwargs.items()})


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__neg__", "__getitem__", "__matmul__", "__rmatmul__"):
    setattr(HoistedRows, _name, (lambda n: lambda self, *a: getattr(self.rows(), n)(*_rows_of(a)))(_name))


def _rows_of(obj):
    t = type(obj)
    if t is HoistedRows:
        return obj.rows()
    if t is tuple or t is list:
        return t(_rows_of(x) for x in obj)
    return obj


def _row_wise(func, args: tuple, kwargs: dict) -> "HoistedRows | None":
    """A row-wise call on hoisted values and constants, over all rows (once per flush)."""
    first = None
    key = [func]
    constants = None
    for a in (*args, *kwargs.values()):
        t = type(a)
        if t is HoistedRows:
            if a._rows is not None:
                return None            # its rows may have been written: they are its value now
            if first is None:
                first = a
                constants = a.inputs.constants
            elif a.inputs is not first.inputs or a.lo != first.lo:
                return None
            key.append(id(a.full))
        elif isinstance(a, torch.Tensor):
            key.append(id(a))
        elif t is tuple or t is list:
            return None
        else:
            key.append(a)
    if first is None:
        return None
    for a in (*args, *kwargs.values()):
        if type(a) is not HoistedRows and isinstance(a, torch.Tensor) and id(a) not in constants:
            return None
    if func is F.embedding and ((len(args) > 3 and args[3] is not None) or kwargs.get("max_norm") is not None):
        return None            # max_norm renormalizes the table in place: not a pure lookup
    if kwargs.get("inplace") or (func in _INPLACE_ARG and len(args) > 1 and args[1]):
        return None
    key.extend(kwargs)
    key = tuple(key)
    inputs = first.inputs
    full = inputs.results.get(key)
    if full is None:
        full = func(*[a.full if type(a) is HoistedRows else a for a in args],
                    **{k: v.full if type(v) is HoistedRows else v for k, v in kwargs.items()})
        if not isinstance(full, torch.Tensor) or full.dim() == 0 or full.shape[0] != first.full.shape[0]:
            return None
        inputs.results[key] = full
    return HoistedRows(full, first.lo, first.hi, inputs)


def _rnn_cell(kind: str, args: tuple):
    """An RNN cell op whose input is hoisted: its input projection over all rows (once per
    flush), the rest on this batch's rows (``w_hh``, ``b_hh`` and the state as given)."""
    x, hx, w_ih, w_hh, b_ih, b_hh = args
    if x._rows is not None:
        return None
    h = hx[0] if type(hx) in (tuple, list) else hx
    if type(h) is not torch.Tensor or h.dim() != 2:
        return None
    inputs = x.inputs
    key = (kind, id(x.full), id(w_ih), id(b_ih), id(b_hh))
    gates = inputs.results.get(key)
    if gates is None:
        if x.full.dim() != 2 or any(w is not None and id(w) not in inputs.constants for w in (w_ih, b_ih, b_hh)):
            return None
        gates = F.linear(x.full, w_ih, b_ih)
        if kind != "gru" and b_hh is not None:
            gates = gates.add_(b_hh)        # both biases once over all rows (GRU's b_hh is gated by r)
        inputs.results[key] = gates
    return rnn_rest(kind, gates[x.lo:x.hi], hx, w_hh, None if kind != "gru" else b_hh)


def rnn_rest(kind: str, gates: torch.Tensor, hx, w_hh: torch.Tensor, b_hh=None):
    """``torch.<kind>_cell`` given its input gates: ``W_ih x + b_ih`` (GRU, which then reads
    ``b_hh`` here), ``W_ih x + b_ih + b_hh`` (the others). The same function as ATen's, in fewer
    ops."""
    if kind == "gru":
        hidden = hx.shape[1]
        sizes = (2 * hidden, hidden)        # split_with_sizes: Tensor.split is a Python wrapper
        hg_rz, hg_n = F.linear(hx, w_hh, b_hh).split_with_sizes(sizes, 1)
        g_rz, g_n = gates.split_with_sizes(sizes, 1)
        reset, update = hg_rz.add_(g_rz).sigmoid_().chunk(2, 1)
        new = torch.addcmul(g_n, hg_n, reset).tanh_()
        return torch.lerp(new, hx, update)          # (1 - z) * n + z * h
    if kind == "lstm":
        h, c = hx
        g = torch.addmm(gates, h, w_hh.t())
        hidden = h.shape[1]
        act = g.sigmoid()
        cell = g[:, 2 * hidden:3 * hidden].tanh()
        cy = torch.addcmul(act[:, hidden:2 * hidden] * c, act[:, :hidden], cell)
        return act[:, 3 * hidden:] * cy.tanh(), cy
    pre = torch.addmm(gates, hx, w_hh.t())
    return pre.tanh_() if kind == "tanh" else pre.relu_()
