"""Merging: parallel matmuls that read the same input become one matmul with a concatenated weight.

A cell written with one ``nn.Linear`` per gate (``self.i(x)``, ``self.f(x)``, ...) batches into k
``mm(X, t(W_j))`` with the same X. After common subexpression elimination (each linear call makes its
own ``view`` of X) they are one ``mm(X, cat([t(W_1)..t(W_k)], 1))`` whose column blocks replace
the k results. The concatenated weight is shared, so hoisting computes it once per parameter
version; the backward is one matmul as well.
"""
from __future__ import annotations

from typing import Any

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


def _under_views(node) -> tuple[Any, list[fx.Node]] | None:
    """(the node under a chain of single-use reshapes that keep the last dimension, the chain
    top-down); None when a view in the chain changes the last dimension."""
    chain = []
    while isinstance(node, fx.Node) and node.target in _LAST_DIM_VIEWS and len(node.users) == 1:
        val, src = node.meta.get("val"), node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        if val is None or src is None or val.dim() == 0 or src.dim() == 0 or val.shape[-1] != src.shape[-1]:
            return None
        chain.append(node)
        node = node.args[0]
    return node, chain


def _mm_under_views(node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The ``mm`` a chain of single-use reshapes that keep the last dimension leads back to."""
    found = _under_views(node)
    if found is None:
        return None
    node, chain = found
    if isinstance(node, fx.Node) and node.target is _ATEN.mm.default and len(node.users) == 1:
        return node, chain        # chain may be empty: a shape round trip was dropped (simplify.py)
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
            if chain:
                chain[-1].args = (addmm, *chain[-1].args[1:])
            else:
                top = addmm
            mm.replace_all_uses_with(addmm)
            graph.erase_node(mm)
            node.replace_all_uses_with(top)
            graph.erase_node(node)
            fused += 1
            break
    graph.lint()
    return fused


def _gemm_under_views(node, shared):
    """(gemm, views top-down, (bias or None, X, W)) for a chain of single-use reshapes keeping the last
    dimension over a single-use ``mm(X, W)`` or ``addmm(b, X, W)`` with a shared 1-D bias; or None."""
    found = _under_views(node)
    if found is None:
        return None
    node, chain = found
    if not isinstance(node, fx.Node) or len(node.users) != 1 or node.kwargs:
        return None
    if node.target is _ATEN.mm.default:
        return node, chain, (None, *node.args)
    if node.target is _ATEN.addmm.default and len(node.args) == 3:
        bias = node.args[0]
        if bias in shared and bias.meta["val"].dim() == 1:
            return node, chain, node.args
    return None


def accumulate_gemms(graph: fx.Graph, shared: set[fx.Node], order: dict[fx.Node, tuple]) -> int:
    """NOTE: [Accumulated GEMMs] ``add(views(addmm(b1, X1, W1)), views(addmm(b2, X2, W2)))`` (an LSTM
    or GRU gate pre-activation: input part plus recurrent part) -> ``views(addmm(addmm(b1 + b2, X1,
    W1), X2, W2))``: the second GEMM accumulates into the first one's result (beta = 1), so the add
    and one bias pass are gone, and the bias sum is hoisted. The *inner* GEMM is the one whose X
    reads the earlier operands (``order``: node -> sorted operand positions it depends on), so the
    input split (split.py) keeps it in the prefix: an LSTM's ``W_ih x_t + b_ih + b_hh`` for every
    token at once, and each step's ``addmm(that, h, W_hh)``. Float sums are reassociated (within
    rounding of the eager cell, as any batched GEMM is)."""
    done = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _ATEN.add.Tensor or len(node.args) != 2 or node.kwargs:
            continue
        found = [_gemm_under_views(a, shared) for a in node.args]
        if None in found or found[0][0] is found[1][0]:
            continue
        vals = [n.meta.get("val") for n in (*node.args, node, found[0][0], found[1][0])]
        if any(v is None for v in vals) or not (vals[0].shape == vals[1].shape == vals[2].shape) \
                or vals[3].shape != vals[4].shape or not (vals[3].dtype == vals[4].dtype == vals[2].dtype):
            continue
        if order.get(found[1][2][1], ()) < order.get(found[0][2][1], ()):
            found.reverse()
        (mm_a, chain_a, (bias_a, x_a, w_a)), (mm_b, chain_b, (_, x_b, w_b)) = found
        bias_b = found[1][2][0]
        biases = [b for b in (bias_a, bias_b) if b is not None]
        if len(biases) == 2 and (biases[0].meta["val"].shape != biases[1].meta["val"].shape
                                 or biases[0].meta["val"].dtype != biases[1].meta["val"].dtype):
            continue
        first = next(n for n in graph.nodes if n is mm_a or n is mm_b)
        bias = biases[0] if biases else None
        if len(biases) == 2:
            with graph.inserting_before(first):
                bias = graph.call_function(_ATEN.add.Tensor, tuple(biases))
                bias.meta = {"val": biases[0].meta["val"] + biases[1].meta["val"], "bdim": None}
                shared.add(bias)
        # both GEMMs where the later of the two was; then the views of the sum, rebuilt below them
        with graph.inserting_before(node):
            inner = graph.call_function(_ATEN.addmm.default, (bias, x_a, w_a)) if bias is not None \
                else graph.call_function(_ATEN.mm.default, (x_a, w_a))
            inner.meta = dict(mm_a.meta)
            top = graph.call_function(_ATEN.addmm.default, (inner, x_b, w_b))
            top.meta = dict(mm_b.meta)
            for view in reversed(chain_a):
                top = graph.call_function(view.target, (top, *view.args[1:]), dict(view.kwargs))
                top.meta = dict(view.meta)
        node.replace_all_uses_with(top)
        graph.erase_node(node)
        for n in (*chain_a, *chain_b, mm_a, mm_b):
            graph.erase_node(n)
        done += 1
    graph.lint()
    return done
