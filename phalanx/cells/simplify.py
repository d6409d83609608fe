"""Shape round trips: ``view(unsqueeze(x, 1), [size, n])`` (vmap's batching rule for a matmul of one
row) is ``x`` itself.

NOTE: [Shape round trips] A chain of reshape-only ops (view, reshape, unsqueeze, squeeze) keeps the
elements in row-major order, so when it ends at the shape it started from it is the identity on
values: the chain's end is replaced by its start and the chain dies. Shapes are compared on the
trace's example values, whose batch size is a prime chosen apart from every other dimension
(trace.py), so two shapes that agree there are the same expression in the batch size. Each link
must have no other user (a shared middle is still needed). Each op saved is a Python-level call
per batch.
"""
from __future__ import annotations

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
