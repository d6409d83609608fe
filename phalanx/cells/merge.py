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
    """Merge ``mm(X, W_j)`` (or ``addmm(b_j, X, W_j)``, after ``fuse_bias_adds``) nodes with the same
    per-row X and shared 2-D W_j (and b_j). Returns the group sizes. Needs
    ``hoist.move_shared_first`` first, so every W_j is defined before the first member."""
    groups: dict[tuple, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.kwargs:
            continue
        if node.target is _ATEN.mm.default:
            x, w, bias = node.args[0], node.args[1], None
        elif node.target is _ATEN.addmm.default and len(node.args) == 3:
            bias, x, w = node.args
            if bias not in shared or bias.meta["val"].dim() != 1:
                continue
        else:
            continue
        if x not in shared and w in shared:
            groups.setdefault((x, node.target), []).append(node)
    merged = []
    for (x, target), members in groups.items():
        if len(members) < 2:
            continue
        weights = [m.args[-1] for m in members]
        widths = [w.meta["val"].shape[1] for w in weights]
        with graph.inserting_before(members[0]):
            cat = graph.call_function(_ATEN.cat.default, (weights, 1))
            cat.meta = {"val": torch.cat([w.meta["val"] for w in weights], 1), "bdim": None}
            shared.add(cat)
            if target is _ATEN.addmm.default:
                biases = [m.args[0] for m in members]
                bias = graph.call_function(_ATEN.cat.default, (biases,))
                bias.meta = {"val": torch.cat([b.meta["val"] for b in biases]), "bdim": None}
                shared.add(bias)
                mm = graph.call_function(_ATEN.addmm.default, (bias, x, cat))
            else:
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


def _mm_under_views(node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The ``mm`` a chain of single-use reshapes that keep the last dimension leads back to."""
    chain = []
    while isinstance(node, fx.Node) and node.target in _LAST_DIM_VIEWS and len(node.users) == 1:
        val, src = node.meta.get("val"), node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        if val is None or src is None or val.dim() == 0 or src.dim() == 0 or val.shape[-1] != src.shape[-1]:
            return None
        chain.append(node)
        node = node.args[0]
    if chain and isinstance(node, fx.Node) and node.target is _ATEN.mm.default and len(node.users) == 1:
        return node, chain
    return None


_LAST_DIM_VIEWS = (*_VIEWS, _ATEN.reshape.default, _ATEN.squeeze.dims, _ATEN.squeeze.dim, _ATEN.unsqueeze.default)


def fuse_bias_adds(graph: fx.Graph, shared: set[fx.Node]) -> int:
    """``add(reshapes(mm(X, W)), b)`` with a shared bias b of shape [N] and reshapes that keep the last
    dimension N -> ``reshapes(addmm(b, X, W))``: vmap of ``nn.Linear`` on one row gives the unfused
    form; addmm adds the bias inside the GEMM (one pass over the output less)."""
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _ATEN.add.Tensor or len(node.args) != 2 or node.kwargs:
            continue
        for bias, top in (node.args, node.args[::-1]):
            if not (isinstance(bias, fx.Node) and bias in shared and isinstance(top, fx.Node)):
                continue
            found = _mm_under_views(top)
            if found is None:
                continue
            mm, chain = found
            b, v, out = bias.meta.get("val"), top.meta.get("val"), node.meta.get("val")
            if b is None or v is None or out is None or b.dim() != 1 or b.dtype != v.dtype \
                    or b.shape[0] != mm.meta["val"].shape[1] or out.shape != v.shape:
                continue
            with graph.inserting_before(mm):
                addmm = graph.call_function(_ATEN.addmm.default, (bias, *mm.args))
                addmm.meta = dict(mm.meta)
            chain[-1].args = (addmm, *chain[-1].args[1:])
            graph.erase_node(mm)
            node.replace_all_uses_with(top)
            graph.erase_node(node)
            fused += 1
            break
    graph.lint()
    return fused
