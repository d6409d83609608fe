"""Merging: parallel matmuls that read the same input become one matmul with a concatenated weight.

A cell written with one ``nn.Linear`` per gate (``self.i(x)``, ``self.f(x)``, ...) batches into k
``mm(X, t(W_j))`` with the same X. After common subexpression elimination (each linear call makes its
own ``view`` of X) they are one ``mm(X, cat([t(W_1)..t(W_k)], 1))`` whose column blocks replace
the k results. The concatenated weight is shared, so hoisting computes it once per parameter
version; the backward is one matmul as well.
"""
from __future__ import annotations

import torch
from torch import fx

from .hoist import _deterministic

_ATEN = torch.ops.aten
_VIEWS = (_ATEN.view.default, _ATEN._unsafe_view.default)


def _key(arg):
    if isinstance(arg, (list, tuple)):
        return (type(arg).__name__, tuple(_key(a) for a in arg))
    if isinstance(arg, dict):
        return tuple(sorted((k, _key(v)) for k, v in arg.items()))
    if isinstance(arg, fx.Node):
        return ("node", id(arg))
    return (type(arg).__name__, repr(arg))


def eliminate_common_subexpressions(graph: fx.Graph) -> int:
    seen: dict = {}
    removed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or not _deterministic(node):
            continue
        key = (node.target, _key(node.args), _key(node.kwargs))
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
            removed += 1
        else:
            seen[key] = node
    return removed


def merge_matmuls(graph: fx.Graph, shared: set[fx.Node]) -> list[int]:
    """Merge ``mm(X, W_j)`` nodes with the same per-row X and shared 2-D W_j. Returns the group sizes.
    Needs ``hoist.move_shared_first`` first, so every W_j is defined before the first member."""
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in graph.nodes:
        if (node.op == "call_function" and node.target is _ATEN.mm.default and node.args[0] not in shared
                and node.args[1] in shared):
            groups.setdefault(node.args[0], []).append(node)
    merged = []
    for x, members in groups.items():
        if len(members) < 2:
            continue
        weights = [m.args[1] for m in members]
        widths = [w.meta["val"].shape[1] for w in weights]
        with graph.inserting_before(members[0]):
            cat = graph.call_function(_ATEN.cat.default, (weights, 1))
            cat.meta = {"val": torch.cat([w.meta["val"] for w in weights], 1), "bdim": None}
            shared.add(cat)
            mm = graph.call_function(_ATEN.mm.default, (x, cat))
            mm.meta = {"val": torch.cat([m.meta["val"] for m in members], 1), "bdim": members[0].meta.get("bdim")}
            offset = 0
            for m, width in zip(members, widths, strict=True):
                piece = graph.call_function(_ATEN.slice.Tensor, (mm, 1, offset, offset + width))
                piece.meta = dict(m.meta)
                offset += width
                m.replace_all_uses_with(piece)
                # a column block is not contiguous: views of it must be allowed to copy
                for user in list(piece.users):
                    if user.target in _VIEWS:
                        user.target = _ATEN.reshape.default
        for m in members:     # only now: the insertion point above is members[0]
            graph.erase_node(m)
        merged.append(len(members))
    graph.lint()
    return merged
