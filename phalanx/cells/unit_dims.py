"""Unit dimensions a batched program carries only because the per-instance cell unsqueezed a 1-D input.

NOTE: [Unit dimensions] ``nn.LSTMCell`` / ``nn.GRUCell`` on a 1-D input unsqueeze it to one row,
compute on ``(1, N)`` and squeeze the result; vmap keeps that row as a unit dimension, so the
batched program computes on ``(B, 1, N)``: ``unsqueeze`` / ``view(.., [B, 1, N])`` in front,
``squeeze`` behind, each a Python-level call per batch (with the views the in-place rewrite adds,
about six of an LSTM step's sixteen). The rule: a connected set of values that all have a size-1
dimension at the same position ``d`` is computed without it when

- it is entered only through ``unsqueeze(x, d)`` or a view / reshape that inserts the unit dimension
  at ``d`` into ``x``'s shape (the value without it is ``x`` itself: same elements, same order);
- it is left only through ``squeeze(y, [d])`` / ``squeeze(y, d)`` or a view / reshape to ``y``'s
  shape without ``d`` (the value without it IS the result);
- every op inside is elementwise (its result at an element depends only on its operands at that
  element, so which dimensions index the elements does not matter; TensorIterator drops size-1
  dimensions itself, so the same loops run over the same memory), or a split / cat along another
  dimension (its dim argument renumbered), or a ``getitem`` of such a split;
- every other tensor operand of an op inside broadcasts only over dimensions after ``d`` (its rank
  is at most ``rank - 1 - d``: aligned from the right, it never meets ``d`` or what comes before);
- no value of the set is an output of the graph, and every reader of one is inside or an exit.

Anything else (an op not listed, an operand of another shape, a split along ``d``) leaves the whole
set as it was. Every new shape is checked by running the rewritten ops on the trace's fake values
(it must be the old shape and strides without ``d``) before the graph is touched.
"""
from __future__ import annotations

import contextlib
import operator

import torch
from torch import fx

_ATEN = torch.ops.aten
_VIEWS = {_ATEN.view.default, _ATEN._unsafe_view.default, _ATEN.reshape.default}
_SQUEEZES = {_ATEN.squeeze.dim, _ATEN.squeeze.dims}
# Elementwise: every tensor argument is an operand of the same element (scalars and kwargs such as
# ``alpha`` apply to every element alike).
_ELEMENTWISE = {getattr(_ATEN, name).default for name in (
    "sigmoid", "tanh", "relu", "exp", "neg", "sin", "cos", "log", "sqrt", "rsqrt", "abs", "reciprocal", "erf",
    "expm1", "log1p", "sign", "floor", "ceil", "trunc", "round", "silu", "hardtanh", "clone", "maximum",
    "minimum", "elu", "softplus", "leaky_relu", "hardsigmoid", "hardswish", "gelu", "clamp", "logical_not")}
_ELEMENTWISE |= {_ATEN.add.Tensor, _ATEN.sub.Tensor, _ATEN.mul.Tensor, _ATEN.div.Tensor, _ATEN.add.Scalar,
                 _ATEN.sub.Scalar, _ATEN.mul.Scalar, _ATEN.div.Scalar, _ATEN.rsub.Scalar, _ATEN.rsub.Tensor,
                 _ATEN.pow.Tensor_Scalar, _ATEN.pow.Tensor_Tensor, _ATEN.where.self, _ATEN.eq.Tensor,
                 _ATEN.gt.Tensor, _ATEN.lt.Tensor, _ATEN.ge.Tensor, _ATEN.le.Tensor, _ATEN.ne.Tensor,
                 _ATEN.eq.Scalar, _ATEN.gt.Scalar, _ATEN.lt.Scalar, _ATEN.ge.Scalar, _ATEN.le.Scalar,
                 _ATEN.ne.Scalar, _ATEN.clamp.Tensor, _ATEN.sigmoid_backward.default, _ATEN.tanh_backward.default}
# Splits: (dim argument position, default dim).
_SPLITS = {_ATEN.split.Tensor: 2, _ATEN.unsafe_split.Tensor: 2, _ATEN.split_with_sizes.default: 2,
           _ATEN.unsafe_split_with_sizes.default: 2}
_CAT = _ATEN.cat.default


def _val(node) -> "torch.Tensor | None":
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _without(shape, d: int) -> tuple:
    return (*shape[:d], *shape[d + 1:])


def _entry_dim(node: fx.Node) -> "int | None":
    """``d`` if ``node`` is its input with a unit dimension inserted at ``d`` (and nothing else)."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    out, x = _val(node), _val(node.args[0])
    if out is None or x is None or out.dim() != x.dim() + 1 or out.dtype != x.dtype:
        return None
    if node.target is _ATEN.unsqueeze.default:
        d = node.args[1] % out.dim()
    elif node.target in _VIEWS:
        candidates = [d for d in range(out.dim()) if out.shape[d] == 1 and _without(out.shape, d) == tuple(x.shape)]
        if len(candidates) != 1:
            return None
        d = candidates[0]
    else:
        return None
    return d if out.shape[d] == 1 and _without(out.shape, d) == tuple(x.shape) else None


def _is_exit(node: fx.Node, source: fx.Node, d: int) -> bool:
    """Is ``node`` ``source`` (a member) without its unit dimension ``d``?"""
    if node.op != "call_function" or not node.args or node.args[0] is not source:
        return False
    out, y = _val(node), _val(source)
    if out is None or y is None or tuple(out.shape) != _without(y.shape, d):
        return False
    if node.target is _ATEN.squeeze.dim:
        return node.args[1] % y.dim() == d
    if node.target is _ATEN.squeeze.dims:
        dims = node.args[1]
        return len(dims) == 1 and dims[0] % y.dim() == d
    return node.target in _VIEWS


def _dim_arg(node: fx.Node) -> "tuple[int, int] | None":
    """(position in args, normalized value) of a split's / cat's dim argument."""
    if node.target in _SPLITS:
        position, rank = _SPLITS[node.target], _val(node.args[0]).dim()
    else:
        position, rank = 1, _val(node.args[0][0]).dim()
    if "dim" in node.kwargs:
        return None
    value = node.args[position] if len(node.args) > position else 0
    return position, value % rank


def _inside(node: fx.Node) -> bool:
    """An op the rule lets inside the set (its operands are checked later)."""
    if node.op != "call_function":
        return False
    return (node.target in _ELEMENTWISE or node.target in _SPLITS or node.target is _CAT
            or node.target is operator.getitem)


def _carries_unit(node: fx.Node, d: int) -> bool:
    val = node.meta.get("val")
    pieces = val if isinstance(val, (list, tuple)) else [val]
    return bool(pieces) and all(_unit_at(v, d) for v in pieces)


def _component(seed: fx.Node, d: int, outputs: set) -> "tuple[list, list, list] | None":
    """(entries, members, exits) of the set grown from the entry ``seed`` through readers and, from
    members, through operands; None if the rule fails."""
    entries, members, exits = {seed: None}, {}, {}
    work = [seed]
    while work:
        node = work.pop()
        if node in outputs:
            return None
        for user in node.users:
            if user in members or user in exits or user in entries:
                continue
            if _is_exit(user, node, d):
                exits[user] = None
                continue
            if not _inside(user):
                return None
            members[user] = None
            work.append(user)
        if node not in members:
            continue
        for operand in node.all_input_nodes:
            if operand in entries or operand in members:
                continue
            if _entry_dim(operand) == d:
                entries[operand] = None
                work.append(operand)
            elif _inside(operand) and _carries_unit(operand, d):
                members[operand] = None
                work.append(operand)
            # any other operand stays outside: _valid_member checks it broadcasts past d
    if any(e in exits for e in entries) or any(m in exits for m in members):
        return None
    for node in members:
        if not _valid_member(node, d, entries, members):
            return None
    return list(entries), list(members), list(exits)


def _unit_at(val, d: int) -> bool:
    return isinstance(val, torch.Tensor) and val.dim() > d and val.shape[d] == 1


def _valid_member(node: fx.Node, d: int, entries: dict, members: dict) -> bool:
    """The member's values keep the unit dimension at ``d``; every operand inside the set has the
    member's rank; every operand outside broadcasts over dimensions after ``d`` only (elementwise ops)."""
    if not _carries_unit(node, d):
        return False
    val = node.meta["val"]
    rank = (val[0] if isinstance(val, (list, tuple)) else val).dim()
    if node.target is operator.getitem and node.args[0].target not in _SPLITS:
        return False            # a tensor's getitem indexes its first dimension
    for operand in node.all_input_nodes:
        inside = operand in entries or operand in members
        if not inside and node.target not in _ELEMENTWISE:
            return False        # a split, cat or getitem reads members only
        v = _val(operand)
        if inside and node.target is not operator.getitem and (v is None or v.dim() != rank):
            return False
        if not inside and (v is None or v.dim() > rank - 1 - d):
            return False
    if node.target in _SPLITS or node.target is _CAT:
        found = _dim_arg(node)
        return found is not None and found[1] != d
    return True


def _fake_mode(node: fx.Node):
    val = _val(node)
    return getattr(val, "fake_mode", None) or contextlib.nullcontext()


def _new_args(node: fx.Node, d: int) -> tuple:
    args = list(node.args)
    if node.target in _SPLITS or node.target is _CAT:
        position, value = _dim_arg(node)
        while len(args) <= position:
            args.append(0)
        args[position] = value - 1 if value > d else value
    return tuple(args)


def _same_layout(new, shape: tuple, stride: tuple, dtype) -> bool:
    return isinstance(new, torch.Tensor) and tuple(new.shape) == shape and tuple(new.stride()) == stride \
        and new.dtype == dtype


def _plan(entries, members, exits, d: int, order: dict) -> "dict | None":
    """New (args, val) per member, from the fake values without ``d``; None unless every value is
    the old one without ``d``: its shape and dtype, and its strides (so a later view of an exit sees
    the layout it saw before). Otherwise the rule is not what the ops do: leave the graph alone."""
    vals = {e: _val(e.args[0]) for e in entries}
    planned = {}
    for node in sorted(members, key=order.__getitem__):
        args = _new_args(node, d)
        try:
            values = fx.node.map_arg(args, lambda n: vals[n] if n in vals else n.meta["val"])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: vals[n] if n in vals else n.meta["val"])
            with _fake_mode(next(iter(entries))):
                new = node.target(*values, **kwargs)
        except Exception:  # noqa: BLE001  (an op that does not take the new shapes: no rewrite)
            return None
        old = node.meta.get("val")
        olds, news = (old, new) if isinstance(old, (list, tuple)) else ((old,), (new,))
        if not isinstance(news, (list, tuple)) or len(news) != len(olds) or not all(
                _same_layout(n, _without(o.shape, d), _without(o.stride(), d), o.dtype)
                for n, o in zip(news, olds, strict=True)):
            return None
        vals[node] = new
        planned[node] = (args, new)
    for e in exits:
        x = _val(e)
        if not _same_layout(vals[e.args[0]], tuple(x.shape), tuple(x.stride()), x.dtype):
            return None
    return planned


def drop_unit_dims(graph: fx.Graph) -> int:
    """Rewrite per NOTE: [Unit dimensions]; returns how many ops (entries and exits) were removed."""
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    outputs = set(output.all_input_nodes)
    order = {n: i for i, n in enumerate(graph.nodes)}
    removed, seen = 0, set()
    for node in list(graph.nodes):
        if node in seen or not node.users:
            continue
        d = _entry_dim(node)
        if d is None:
            continue
        found = _component(node, d, outputs)
        if found is None:
            seen.add(node)
            continue
        entries, members, exits = found
        seen.update(entries)
        planned = _plan(entries, members, exits, d, order)
        if planned is None:
            continue
        for member, (args, val) in planned.items():
            member.args = args
            member.meta["val"] = val
            bdim = member.meta.get("bdim")
            if bdim is not None and bdim > d:
                member.meta["bdim"] = bdim - 1
        for entry in entries:
            entry.replace_all_uses_with(entry.args[0])
        for exit_ in exits:
            exit_.replace_all_uses_with(exit_.args[0])
        removed += len(entries) + len(exits)
    if removed:
        graph.eliminate_dead_code()
        graph.lint()
    return removed
