"""Row-sparse embedding gradients.

A batched ``aten.embedding(W, ids)`` backpropagates through ``embedding_dense_backward``: a dense
[vocabulary, dim] tensor per batch, mostly zeros. Inside a cell program the lookup is replaced by
``row_sparse_embedding``, whose backward returns a sparse COO gradient holding only the looked-up
rows (indices + rows, no vocabulary-sized allocation). The runtime sums a flush's contributions and
turns them into ONE dense gradient with ``densify`` (one ``index_add_``), so optimizers that need
dense gradients (Adam) are unaffected.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch import fx

_ATEN = torch.ops.aten


class _Mode(threading.local):
    dense = False


_MODE = _Mode()


@contextlib.contextmanager
def dense_gradients():
    """Lookups made inside give dense gradients (the re-run of a flush for double backward)."""
    saved, _MODE.dense = _MODE.dense, True
    try:
        yield
    finally:
        _MODE.dense = saved


class _RowSparseEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, padding_idx):
        ctx.save_for_backward(ids)
        ctx.weight_shape = weight.shape
        ctx.padding_idx = padding_idx
        ctx.dense = _MODE.dense
        return weight.index_select(0, ids.reshape(-1)).reshape(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad):
        ids, = ctx.saved_tensors
        flat_ids = ids.reshape(-1)
        rows = grad.reshape(-1, ctx.weight_shape[1])
        if ctx.padding_idx >= 0:
            rows = rows * (flat_ids != ctx.padding_idx).unsqueeze(1).to(rows.dtype)
        if ctx.dense or torch.is_grad_enabled():
            # A graph that is differentiated twice (create_graph=True, a gradient penalty): a dense,
            # differentiable gradient, as eager code gets.
            return rows.new_zeros(ctx.weight_shape).index_add(0, flat_ids, rows), None, None
        g = torch.sparse_coo_tensor(flat_ids.unsqueeze(0), rows, ctx.weight_shape, check_invariants=False)
        return g, None, None


def row_sparse_embedding(weight: torch.Tensor, ids: torch.Tensor, padding_idx: int = -1) -> torch.Tensor:
    return _RowSparseEmbedding.apply(weight, ids, padding_idx)


def rewrite_embeddings(graph: fx.Graph, params: list[fx.Node]) -> int:
    """Replace lookups into a parameter (not ``scale_grad_by_freq``, which needs counts over the batch)."""
    count = 0
    param_set = set(params)
    for node in graph.nodes:
        if node.op == "call_function" and node.target is _ATEN.embedding.default and node.args[0] in param_set:
            args = list(node.args) + [-1, False, False][len(node.args) - 2:]
            weight, ids, padding_idx, scale_by_freq = args[:4]
            if scale_by_freq or node.kwargs:
                continue
            node.target = row_sparse_embedding
            node.args = (weight, ids, padding_idx)
            count += 1
    return count


def densify(grad: torch.Tensor | None) -> torch.Tensor | None:
    """One dense gradient from a (possibly sparse, uncoalesced) sum of row-sparse contributions."""
    if grad is None or not grad.is_sparse:
        return grad
    dense = torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device)
    return dense.index_add_(0, grad._indices()[0], grad._values())
