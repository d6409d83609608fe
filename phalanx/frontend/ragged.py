"""Ragged operands while recording: ``torch.stack`` of a variable number of lazy values, passed to a
cell or reduced over the stacked dim, is ONE op type whatever the number of values.

NOTE: [Ragged operands] ``torch.stack(xs)`` of k lazy values of one aval E records nothing: it
returns a ``RaggedStack`` (the k members). Three things can happen to it:
- it is an argument of a cell: the cell records one node whose op type is keyed by E, not by
  [k, *E] (``record_ragged_cell``; its next calls like it natively, NOTE: [Native ragged stacks]
  in ir/_columns.c, or by ``record_known_call``). The node's operand codes are the fixed operands, then the
  members of each ragged argument (the graph's operand lists are CSR, so a node may have any
  number; edges and depth see every member). The signature's ``in_kinds`` list the fixed operands
  only; ``meta["ragged"]`` says where the ragged arguments go. ``runtime/ragged.py`` reads each
  as one gather of every member row of the batch plus the segment offsets, and runs the cell.
- ``.sum(0)`` / ``.mean(0)`` (or the dim ``-(len(E) + 1)``): one segment-reduce node keyed by
  (reduction, E) (``record_segment``).
- ``F.pad(rs, (0, 0, ..., 0, p))``, padding only the stacked dim at its end to a length L (an
  attention memory padded to a fixed number of rows): one padded-stack node keyed by (E, L, pad
  value) (``record_padded``), so sentences of every length share one op type.
- anything else (``rs * 2``, ``rs.shape``-dependent code, ``torch.cat([rs, x])``, a kwarg of a
  cell, a member from an earlier fiber round): it is *materialized*, i.e. the ordinary
  ``torch.stack`` node of aval [k, *E] is recorded (once) and used, exactly as without this module.
So nothing changes for code that does not benefit, and the per-instance semantics are the stacked
tensor's in every case (the batched kernel is checked against it, runtime/ragged.py). Why not a
``torch.nested`` jagged tensor as the recorded value: the recorder needs members as graph edges
(the scheduler and depth must see them) and a value per instance, not per batch; the jagged form
only matters inside the batched kernel (runtime/ragged.py says why we do not use it there either).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ir.aval import AVal, aval, aval_of
from ..ir.columns import RAGGED_KEY, RaggedBase, set_ragged_type
from ..ir.signature import ArgKind, Signature

_RAGGED_CELL, _SEGMENT, _PADDED = object(), object(), object()
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class RaggedSpec:
    """Where a ragged op type's ragged arguments go: the per-instance call has ``num_args``
    positional arguments; ``positions[r]`` is the r-th ragged one, its members of aval
    ``elements[r]``. Batched operands arrive as the fixed ones in order, then per ragged argument
    (values [N, *E], offsets [B + 1])."""

    positions: tuple[int, ...]
    elements: tuple[AVal, ...]
    num_args: int
    reduce: str | None = None        # a segment-reduce op type: "sum" or "mean"
    lists: tuple[bool, ...] = ()     # per ragged argument: passed as a Python list (else stacked)


class RaggedStack(RaggedBase):
    """``torch.stack`` of k lazy values of one aval, not recorded yet (NOTE: [Ragged operands]).
    Behaves as the stacked [k, *E] lazy value: any use it does not handle materializes that.

    ``RaggedStack(members, element, graph)``; its storage (``ir/columns.py``'s ``RaggedBase``,
    native when built) holds ``members``, ``element``, ``graph``, ``vids`` (the members' value ids)
    and ``top`` (1 + their deepest depth, 0 without members): a cell that reads this stack appends
    the ids as they are (NOTE: [Ragged fast path], NOTE: [Native ragged stacks] in ir/_columns.c)."""

    __slots__ = ()

    # *** static metadata, as the stacked value's ***
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.members), *self.element.shape))

    @property
    def dtype(self) -> torch.dtype:
        return self.element.dtype

    @property
    def ndim(self) -> int:
        return len(self.element.shape) + 1

    @property
    def device(self):
        return self.graph.device

    @property
    def requires_grad(self) -> bool:
        return self.element.is_float

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return len(self.members) * self.element.numel

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def __getitem__(self, index):
        if type(index) is int and -len(self.members) <= index < len(self.members):
            return self.members[index]              # exactly the stacked value's row
        return self.materialize()[index]

    def __repr__(self) -> str:
        return f"RaggedStack({len(self.members)} x {self.element})"

    def materialize(self):
        """The ordinary stacked lazy value (recorded once)."""
        if self._stacked is None:
            self._stacked = active_or_error()._record_general(
                torch.stack, "op torch.stack", torch.stack, (list(self.members),), {}, numbers_are_operands=False)
        return self._stacked

    # *** torch functions and methods ***
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _REDUCE_FUNCS and args and type(args[0]) is RaggedStack:
            reduce = _reduction(args[0], _REDUCE_FUNCS[func], args[1:], kwargs)
            if reduce is not None:
                out = record_segment(active_or_error(), args[0], reduce)
                if out is not None:
                    return out
        if func is F.pad and args and type(args[0]) is RaggedStack:
            padded = _end_padding(args[0], args[1:], kwargs)
            if padded is not None:
                out = record_padded(active_or_error(), args[0], *padded)
                if out is not None:
                    return out
        return active_or_error().record_op(func, materialize_all(args), materialize_all(kwargs))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in REDUCTIONS:
            func = getattr(torch.Tensor, name)
            return lambda *args, **kwargs: RaggedStack.__torch_function__(func, (), (self, *args), kwargs)
        return getattr(self.materialize(), name)


def _delegate(name: str):
    def method(self, *args):
        return getattr(self.materialize(), name)(*args)

    method.__name__ = name
    return method


RaggedStack.__hash__ = object.__hash__

_REDUCE_FUNCS = {torch.sum: "sum", torch.Tensor.sum: "sum", torch.mean: "mean", torch.Tensor.mean: "mean"}


def _reduction(rs: RaggedStack, reduce: str, rest: tuple, kwargs: dict) -> str | None:
    """``reduce`` when the call reduces exactly the stacked dim (no keepdim, dtype, out), else None."""
    if len(rest) > 2 or set(kwargs) - {"dim", "keepdim"}:
        return None
    dim = rest[0] if rest else kwargs.get("dim")
    keepdim = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
    if type(dim) in (tuple, list) and len(dim) == 1:
        dim = dim[0]
    if type(dim) is not int or keepdim is not False:
        return None
    return reduce if dim in (0, -rs.ndim) else None


def _end_padding(rs: RaggedStack, rest: tuple, kwargs: dict) -> "tuple[int, float] | None":
    """(padded length, value) when ``F.pad(rs, pad[, mode, value])`` pads only the stacked dim, at
    its end, with a constant; else None."""
    if len(rest) > 3 or set(kwargs) - {"pad", "mode", "value"}:
        return None
    pad = rest[0] if rest else kwargs.get("pad")
    mode = rest[1] if len(rest) > 1 else kwargs.get("mode", "constant")
    value = rest[2] if len(rest) > 2 else kwargs.get("value")
    value = 0.0 if value is None else value
    if type(pad) not in (tuple, list) or len(pad) != 2 * rs.ndim or mode != "constant":
        return None
    if any(type(w) is not int for w in pad) or any(pad[:-1]) or pad[-1] < 0:
        return None
    if type(value) not in (int, float) or not rs.element.is_float:
        return None
    return len(rs.members) + pad[-1], float(value)


def record_padded(rec, rs: RaggedStack, length: int, value: float):
    """One padded-stack node: ``F.pad(torch.stack(members), (0, .., 0, length - k), value=value)``,
    its op type keyed by (element aval, length, value), so any member count k shares it; None when a
    member is from an earlier fiber round (then the stack is materialized, as before)."""
    g = rec.graph
    if rs.graph is not g or not rs.members:
        return None
    key = (_PADDED, rs.element, length, value)
    sig = rec.table.by_key.get(key)
    if sig is None:
        from ..runtime.ragged import PaddedStackKernel

        element = rs.element
        out = aval((length, *element.shape), element.dtype)
        sig = Signature(sid=len(rec.table.sigs), name=f"op ragged pad[{length}]", fn=_padded(length, value),
                        in_kinds=(), in_avals=(), out_avals=(out,), unflatten=_first, flatten=_one,
                        single=True, meta={"ragged": RaggedSpec((0,), (element,), 1),
                                           "kernel": PaddedStackKernel(length, value)})
        rec.table.add(sig, key)
    depth = rs.top if rs.top > rec.phase_base else rec.phase_base
    first = g.add_node(sig, rs.vids, depth)
    return LazyValue(first, sig.out_avals[0], depth, g)


def _padded(length: int, value: float):
    def per_instance(stacked):
        pad = (0, 0) * (stacked.dim() - 1) + (0, length - len(stacked))
        return F.pad(stacked, pad, value=value)

    return per_instance


def materialize_all(obj):
    """``obj`` with every RaggedStack inside (tuples, lists, dicts) replaced by its stacked value."""
    t = type(obj)
    if t is RaggedStack:
        return obj.materialize()
    if t is tuple or t is list:
        return t(materialize_all(x) for x in obj) if any(_has_ragged(x) for x in obj) else obj
    if t is dict:
        return {k: materialize_all(v) for k, v in obj.items()} if any(_has_ragged(v) for v in obj.values()) else obj
    return obj


def _has_ragged(obj) -> bool:
    t = type(obj)
    if t is RaggedStack:
        return True
    if t is tuple or t is list:
        return any(_has_ragged(x) for x in obj)
    if t is dict:
        return any(_has_ragged(v) for v in obj.values())
    return False


def try_stack(rec, args: tuple, kwargs: dict) -> "RaggedStack | None":
    """``torch.stack(xs[, dim])`` as a RaggedStack when xs are lazy values of this run with one
    aval and the dim is the new leading one; otherwise None (recorded as an ordinary op). Runs for
    every stack of lazy values, so it is written for speed: one pass checks the members and
    collects their value ids and depth."""
    n = len(args)
    if n == 0 or n > 2 or (kwargs and (len(kwargs) > 1 or "dim" not in kwargs)):
        return None
    xs = args[0]
    tx = type(xs)
    if (tx is not list and tx is not tuple) or not xs:
        return None
    first = xs[0]
    if type(first) is not LazyValue:
        first = next((x for x in xs if type(x) is LazyValue), None)
        if first is None:
            return None
    element = first.aval
    if n > 1 or kwargs:
        dim = args[1] if n > 1 else kwargs["dim"]
        if dim != 0 and (type(dim) is not int or dim != -(len(element.shape) + 1)):
            return None
    g = rec.graph
    vids = []
    top = 0
    tensors = False
    for x in xs:
        if type(x) is LazyValue:
            if x.graph is not g or x.aval is not element:
                return None
            vids.append(x.vid)
            if x.depth >= top:
                top = x.depth + 1
        elif type(x) is torch.Tensor and aval_of(x) is element:
            tensors = True      # converted below, once every member is known to qualify
        else:
            return None               # parameters (shared), other shapes, numbers: an ordinary stack
    if not tensors:
        return RaggedStack(tuple(xs), element, g, vids, top)
    # A per-instance tensor member (a lattice's initial state) becomes a lazy value, as in any cell call.
    return RaggedStack(tuple(x if type(x) is LazyValue else rec.record_input(x) for x in xs), element, g)


def record_segment(rec, rs: RaggedStack, reduce: str):
    """One segment-reduce node (op type keyed by reduction and element aval), or None when a member
    is from an earlier fiber round."""
    g = rec.graph
    if rs.graph is not g:
        return None
    key = (_SEGMENT, reduce, rs.element)
    sig = rec.table.by_key.get(key)
    if sig is None:
        from ..runtime.ragged import SegmentKernel

        element = rs.element
        sig = Signature(sid=len(rec.table.sigs), name=f"op ragged {reduce}", fn=_stacked_reduce(reduce),
                        in_kinds=(), in_avals=(), out_avals=(element,), unflatten=_first, flatten=_one,
                        single=True, meta={"ragged": RaggedSpec((0,), (element,), 1, reduce),
                                           "kernel": SegmentKernel(reduce)})
        rec.table.add(sig, key)
    depth = rs.top if rs.top > rec.phase_base else rec.phase_base
    first = g.add_node(sig, rs.vids, depth)
    return LazyValue(first, sig.out_avals[0], depth, g)


def _stacked_reduce(reduce: str):
    def per_instance(stacked):
        return stacked.sum(0) if reduce == "sum" else stacked.mean(0)

    return per_instance


def _first(values):
    return values[0]


def _one(out):
    return (out,)


def record_ragged_cell(rec, cell, name: str, fn, args: tuple):
    """Record a cell call with RaggedStack arguments as one node of a ragged op type
    (NOTE: [Ragged operands]); None when the call does not qualify (the caller materializes).
    Registers the cell's entry for ``record_known_call``, the path of its next calls."""
    g = rec.graph
    positions, fixed_key, fixed, ragged, lists = [], [], [], [], []
    k = -1
    for i, a in enumerate(args):
        t = type(a)
        if t is list:
            a = _list_members(rec, cell, i, a)
            if a is None:
                return None
            t = RaggedStack
            lists.append(True)
        elif t is RaggedStack:
            lists.append(False)
        if t is RaggedStack:
            if a.graph is not g or (k >= 0 and len(a.members) != k):
                return None
            k = len(a.members)
            positions.append(i)
            ragged.append(a)
        elif t is LazyValue:
            if a.graph is not g:
                fixed_key.append(("tensor", a.aval))
                fixed.append(resolve_stale(a, name))
            else:
                fixed_key.append(a.aval)
                fixed.append(a)
        elif t is int or t is float or t is bool:
            fixed_key.append(_BOOL_KEY if t is bool else _INT_KEY if t is int else _FLOAT_KEY)
            fixed.append(a)
        elif t is torch.Tensor and not _is_shared_tensor(a):
            rec.check_device(a, f"{name}: a tensor argument")
            fixed_key.append(("tensor", aval_of(a)))
            fixed.append(a)
        else:
            return None              # parameters, statics, nested structures: the general path
    elements = tuple(r.element for r in ragged)
    key = (_RAGGED_CELL, cell, tuple(fixed_key), tuple(positions), elements, tuple(lists))
    sig = rec.table.by_key.get(key)
    if sig is None:
        sig = _new_ragged_signature(rec, key, cell, name, fn, fixed, ragged, RaggedSpec(
            tuple(positions), elements, len(args), lists=tuple(lists)))
        for i, element in zip(positions, elements, strict=True):
            _list_elements(rec.table).setdefault((cell, i), element)
    if all(type(a) is not torch.Tensor and (type(a) is not LazyValue or a.graph is g) for a in args):
        # The cell's next call with the same kinds and avals takes record_known_call (tensor
        # arguments and values of earlier fiber rounds: the general path, every time).
        rec.ragged_calls[cell] = (sig, tuple(
            _pattern_of(a, positions, ragged, lists, i) for i, a in enumerate(args)))
        if sig.fast_pattern is not None:
            rec._register_fast(g, cell, sig)     # its next calls: natively (NOTE: [Native ragged stacks])
    codes, depth = operand_codes(g, fixed)
    for r in ragged:
        codes.extend(r.vids)
        if r.top > depth:
            depth = r.top
    return _close_node(rec, g, sig, codes, depth)


def _pattern_of(a, positions: list, ragged: list, lists: list, i: int):
    """What ``record_known_call`` expects at argument ``i``: a lazy value's aval, ``(element,)``
    for a stack, ``[element]`` for a list argument, the type of a number."""
    if i in positions:
        j = positions.index(i)
        return [ragged[j].element] if lists[j] else (ragged[j].element,)
    return a.aval if type(a) is LazyValue else type(a)


def record_known_call(rec, hit: tuple, args: tuple):
    """NOTE: [Ragged fast path] a ragged cell's call whose arguments match the cell's last ragged
    op type (``hit`` = (signature, pattern) from ``record_ragged_cell``; ``Recorder.record_cell``
    looks it up first): one pass over the arguments, no key built or hashed, the members' value
    ids and depth already collected by ``try_stack``. A lazy value must have the pattern's aval, a
    stack (or a list argument, stacked here) the element aval, a number the type; the stacks of a
    call have one length. None on any mismatch, with nothing recorded (the general path decides)."""
    sig, pattern = hit
    if len(args) != len(pattern):
        return None
    g = rec.graph
    imms = g.imms
    mark = len(imms)
    codes = []
    tail = None
    depth = 0
    k = -1
    for a, p in zip(args, pattern):
        t = type(a)
        if t is LazyValue:
            if a.aval is not p or a.graph is not g:
                break
            codes.append(a.vid)
            if a.depth >= depth:
                depth = a.depth + 1
            continue
        if t is list:
            if type(p) is not list:
                break
            a = try_stack(rec, (a,), {}) if a else RaggedStack((), p[0], g, [], 0)
            if a is None:
                break
        elif t is RaggedStack:
            if type(p) is not tuple:
                break
        elif t is p and (t is int or t is float or t is bool):
            codes.append(-1 - len(imms))
            imms.append(a)
            continue
        else:
            break
        if a.element is not p[0] or a.graph is not g:
            break
        vids = a.vids
        if k != len(vids):
            if k >= 0:
                break
            k = len(vids)
        tail = vids if tail is None else tail + vids
        if a.top > depth:
            depth = a.top
    else:
        if tail is not None:
            codes.extend(tail)
        return _close_node(rec, g, sig, codes, depth)
    del imms[mark:]
    return None


def _close_node(rec, g, sig: Signature, codes: list, depth: int):
    """Append a ragged node with its operand codes; its lazy outputs in the cell's structure."""
    g.arg_code.extend(codes)
    return rec._append_node(g, sig, depth)


def _list_elements(table) -> dict:
    """(cell, position) -> the element aval its list argument had, per SignatureTable."""
    found = getattr(table, "_ragged_list_elements", None)
    if found is None:
        found = table._ragged_list_elements = {}
    return found


def _list_members(rec, cell, position: int, xs: list) -> "RaggedStack | None":
    """A cell's list argument as a RaggedStack: lazy values (or per-instance tensors) of one aval.
    An empty list takes the element aval this cell's argument had before (none yet: None, and the
    call is recorded as before, its own op type)."""
    if xs:
        return try_stack(rec, (xs,), {})
    element = _list_elements(rec.table).get((cell, position))
    return RaggedStack((), element, rec.graph, [], 0) if element is not None else None


def per_instance_of(fn, spec: RaggedSpec, unbind_dim: int = 0):
    """The cell's function over (fixed operands..., one stacked [k, *E] tensor per ragged argument);
    a list argument gets the stacked tensor's rows (``unbind_dim`` 1: the batched form, rows of
    [B, k, *E])."""
    ragged_at = set(spec.positions)
    fixed_at = [i for i in range(spec.num_args) if i not in ragged_at]
    n_fixed = len(fixed_at)
    lists = spec.lists or (False,) * len(spec.positions)
    if fixed_at == list(range(n_fixed)) and not any(lists):
        return fn          # the ragged arguments come last: the operands are the arguments, in order

    def per_instance(*ops):
        args = [None] * spec.num_args
        for i, op in zip(fixed_at, ops[:n_fixed], strict=True):
            args[i] = op
        for i, op, as_list in zip(spec.positions, ops[n_fixed:], lists, strict=True):
            args[i] = (list(op.unbind(unbind_dim)) if isinstance(op, torch.Tensor) else op) if as_list else op
        return fn(*args)

    return per_instance


def _new_ragged_signature(rec, key, cell, name: str, fn, fixed: list, ragged: list, spec: RaggedSpec) -> Signature:
    from ..runtime.ragged import RaggedKernel
    device = rec.graph.device
    kinds, avals, examples = operand_facts(fixed, device)
    for r in ragged:
        examples.append(r.element.zeros(device).unsqueeze(0).expand(len(r.members), *r.element.shape).clone())
    per_instance = per_instance_of(fn, spec)
    shapes = [*avals, *(f"[k, {r.element}]" for r in ragged)]
    outputs, captured = run_unrecorded(per_instance, examples, name, shapes, capture=True)
    flat, unflatten, flatten = _output_structure(outputs, name)
    modules = tuple(cell.modules()) if isinstance(cell, torch.nn.Module) else ()
    described = ",".join(f"{spec.positions[j]}:[*,{r.element}]" for j, r in enumerate(ragged))
    sig = Signature(
        sid=len(rec.table.sigs), name=f"{name} ragged[{described}]", fn=per_instance, in_kinds=tuple(kinds),
        in_avals=tuple(avals), out_avals=tuple(aval_of(t) for t in flat), unflatten=unflatten, flatten=flatten,
        captured=captured, callee=cell, modules=modules, path=rec.table.paths.get(id(cell), ""),
        single=isinstance(outputs, torch.Tensor), plain_tuple=type(outputs) is tuple and unflatten is tuple,
        meta={"ragged": spec, "batching": getattr(cell, "_phalanx_batching", "auto")})
    if any(spec.lists):
        sig.meta["batched_lists"] = per_instance_of(fn, spec, unbind_dim=1)
    sig.meta["kernel"] = RaggedKernel(sig)
    if rec.table.cells is not None and sig.meta["batching"] == "auto":
        sig.meta["cell_options"] = rec.table.cells     # NOTE: [Reduced ragged programs]
    sig.fast_pattern = _native_pattern(key, spec, sig)
    rec.table.add(sig, key)
    return sig


def _native_pattern(key: tuple, spec: RaggedSpec, sig: Signature) -> "tuple | None":
    """The pattern of the cell fast path (``append_call``, ir/columns.py) for a ragged op type: per
    argument the aval of a lazy value, INT_KEY / FLOAT_KEY for a number, (RAGGED_KEY, element) for a
    stack; None where the fast path cannot record it (list arguments, tensors, values of earlier
    rounds, bools, outputs other than a tensor or a plain tuple: the recorder's path takes those)."""
    fixed_key = key[2]
    if any(spec.lists) or not (sig.single or sig.plain_tuple):
        return None
    if not all(type(k) is AVal or k is _INT_KEY or k is _FLOAT_KEY for k in fixed_key):
        return None
    fixed = iter(fixed_key)
    ragged = dict(zip(spec.positions, spec.elements, strict=True))
    return tuple((RAGGED_KEY, ragged[i]) if i in ragged else next(fixed) for i in range(spec.num_args))


# recorder.py imports this module at its end, so its names exist here (value.py imports recorder).
from .recorder import (_BOOL_KEY, _FLOAT_KEY, _INT_KEY, _is_shared_tensor, _output_structure,  # noqa: E402
                       active_or_error, number_aval, number_to_tensor, operand_codes, operand_facts, resolve_stale,
                       run_unrecorded)
from .value import OPERATORS, LazyValue  # noqa: E402

for _name in (*OPERATORS, "__bool__", "__float__", "__int__", "__index__"):
    setattr(RaggedStack, _name, _delegate(_name))
set_ragged_type(RaggedStack)     # the class the native stack_values makes and append_call reads
