"""Fewer calls for the same values: shape round trips (``view(unsqueeze(x, 1), [size, n])``, vmap's
batching rule for a matmul of one row, is ``x`` itself) and fused gate activations.

NOTE: [Shape round trips] A chain of reshape-only ops (view, reshape, unsqueeze, squeeze) keeps the
elements in row-major order, so when it ends at the shape it started from it is the identity on
values: the chain's end is replaced by its start and the chain dies. Shapes are compared on the
trace's example values, whose batch size is a prime chosen apart from every other dimension
(trace.py), so two shapes that agree there are the same expression in the batch size. Each link
must have no other user (a shared middle is still needed). Each op saved is a Python-level call
per batch.
"""
from __future__ import annotations

import contextlib
import operator

import torch
from torch import fx

_ATEN = torch.ops.aten
_RESHAPES = {_ATEN.view.default, _ATEN._unsafe_view.default, _ATEN.reshape.default, _ATEN.unsqueeze.default,
             _ATEN.squeeze.dim, _ATEN.squeeze.dims, _ATEN.squeeze.default}


def drop_shape_round_trips(graph: fx.Graph) -> int:
    dropped = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _RESHAPES or not node.users:
            continue
        start = node.args[0]
        while (isinstance(start, fx.Node) and start.op == "call_function" and start.target in _RESHAPES
               and len(start.users) == 1):
            start = start.args[0]
        if start is node.args[0] and node.target not in (_ATEN.view.default, _ATEN.reshape.default,
                                                            _ATEN._unsafe_view.default):
            continue        # a single unsqueeze / squeeze changes the shape by construction
        end, begin = node.meta.get("val"), start.meta.get("val") if isinstance(start, fx.Node) else None
        if not (isinstance(end, torch.Tensor) and isinstance(begin, torch.Tensor)) or end.shape != begin.shape \
                or end.dtype != begin.dtype:
            continue
        node.replace_all_uses_with(start)
        dropped += 1
    graph.eliminate_dead_code()
    graph.lint()
    return dropped


# NOTE: [Fused gate activations] a gated cell computes all its gates with one GEMM, splits the
# result into chunks and runs an activation per chunk: an LSTM's i, f (and o) sigmoids, a GRU's r, z,
# a TreeLSTM's four sigmoids. Adjacent chunks under the same activation are one contiguous region,
# so the split is made coarser (those chunks are one piece), the activation runs once over that
# piece, and the piece is split again where the chunks were: one kernel call instead of several,
# the same values (an elementwise kernel's result per element does not depend on its neighbours).
# Only a split along a feature dimension (never the batch dimension, whose size the trace fixes),
# and only chunks whose sole reader is the activation.
_GATE_ACTIVATIONS = {_ATEN.sigmoid.default, _ATEN.tanh.default, _ATEN.relu.default}
_EQUAL_SPLITS = {_ATEN.split.Tensor, _ATEN.unsafe_split.Tensor}
_SIZED_SPLITS = {_ATEN.split_with_sizes.default, _ATEN.unsafe_split_with_sizes.default}


def fuse_gate_activations(graph: fx.Graph) -> int:
    """Rewrite per NOTE: [Fused gate activations]; returns how many activation calls were saved."""
    saved = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and (node.target in _EQUAL_SPLITS or node.target in _SIZED_SPLITS):
            saved += _fuse_split(graph, node)
    if saved:
        graph.eliminate_dead_code()
        graph.lint()
    return saved


def _fuse_split(graph: fx.Graph, split: fx.Node) -> int:
    source = split.args[0]
    pieces = split.meta.get("val")
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if not isinstance(source, fx.Node) or not isinstance(pieces, (list, tuple)) or not pieces:
        return 0
    dim = dim % pieces[0].dim()
    if source.meta.get("bdim", 0) == dim:
        return 0
    activation: dict[int, tuple[fx.Node, fx.Node]] = {}     # piece -> (its getitem, its sole reader)
    getitems: dict[int, list[fx.Node]] = {}
    for user in split.users:
        if user.op != "call_function" or user.target is not operator.getitem:
            return 0
        getitems.setdefault(user.args[1], []).append(user)
        reader = next(iter(user.users)) if len(user.users) == 1 else None
        if (reader is not None and reader.op == "call_function" and reader.target in _GATE_ACTIVATIONS
                and reader.args == (user,) and not reader.kwargs):
            activation[user.args[1]] = (user, reader)
    groups, k = [], 0          # (first piece, last piece, activation or None)
    while k < len(pieces):
        end = k
        if k in activation and len(getitems[k]) == 1:
            target = activation[k][1].target
            while end + 1 in activation and len(getitems[end + 1]) == 1 and activation[end + 1][1].target is target:
                end += 1
        groups.append((k, end, activation[k][1].target if end > k else None))
        k = end + 1
    if all(first == last for first, last, _ in groups):
        return 0
    sizes = [p.shape[dim] for p in pieces]
    fake = pieces[0].fake_mode if hasattr(pieces[0], "fake_mode") else None
    bdim = split.meta.get("bdim", source.meta.get("bdim"))

    def add(target, args, after):
        with graph.inserting_after(after):
            new = graph.call_function(target, args)
        values = [a.meta["val"] if isinstance(a, fx.Node) else a for a in args]
        with fake if fake is not None else contextlib.nullcontext():
            new.meta["val"] = target(*values)
        new.meta["bdim"] = bdim
        return new

    coarse = add(_ATEN.split_with_sizes.default,
                 (source, [sum(sizes[first:last + 1]) for first, last, _ in groups], dim), split)
    cursor = coarse
    for g, (first, last, target) in enumerate(groups):
        piece = cursor = add(operator.getitem, (coarse, g), cursor)
        if target is None:
            for old in getitems.get(first, ()):
                old.replace_all_uses_with(piece)
            continue
        active = cursor = add(target, (piece,), cursor)
        parts = cursor = add(_ATEN.split_with_sizes.default, (active, sizes[first:last + 1], dim), cursor)
        for j in range(first, last + 1):
            cursor = add(operator.getitem, (parts, j - first), cursor)
            activation[j][1].replace_all_uses_with(cursor)
    return sum(last - first for first, last, target in groups if target is not None)
