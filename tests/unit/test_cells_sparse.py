"""Row-sparse embedding gradients: the batched program's gradient of an embedding table holds only
the looked-up rows, and densified it equals eager's dense gradient."""
import torch
from torch import nn

from phalanx.cells import CellOptions, compile_cell, densify
from phalanx.cells.sparse import row_sparse_embedding
from phalanx.models.treelstm import TreeLSTMLeaf

from ..cells_oracle import avals

V, E, H = 50, 4, 3


def test_embedding_weight_gradient_is_row_sparse_and_equals_eager():
    torch.manual_seed(0)
    cell = TreeLSTMLeaf(V, E, H)
    program = compile_cell(cell._phalanx_fn(), cell, avals([torch.tensor(0)]))
    assert program.info["sparse_embeddings"] == 1
    words = torch.tensor([3, 7, 3, 49, 0, 3])
    weights = torch.randn(len(words), H)
    h, c = program([words], len(words))
    g_sparse, = torch.autograd.grad((h * weights).sum() + c.sum(), [cell.embed.weight])
    assert g_sparse.is_sparse and g_sparse._nnz() == len(words)          # rows, not the vocabulary
    expected = [nn.Module.__call__(cell, w) for w in words]
    total = sum((e[0] * wt).sum() + e[1].sum() for e, wt in zip(expected, weights, strict=True))
    g_eager, = torch.autograd.grad(total, [cell.embed.weight])
    torch.testing.assert_close(densify(g_sparse), g_eager)
    # the other parameters keep ordinary dense gradients
    h, c = program([words], len(words))
    g_lin, = torch.autograd.grad(h.sum(), [cell.gates.weight])
    assert not g_lin.is_sparse


def test_sparse_grads_off_gives_a_dense_gradient():
    cell = TreeLSTMLeaf(V, E, H)
    program = compile_cell(cell._phalanx_fn(), cell, avals([torch.tensor(0)]), options=CellOptions(sparse_grads=False))
    h, _ = program([torch.tensor([1, 2])], 2)
    g, = torch.autograd.grad(h.sum(), [cell.embed.weight])
    assert not g.is_sparse


def test_padding_index_rows_get_no_gradient():
    weight = torch.randn(6, 2, requires_grad=True)
    ids = torch.tensor([[1, 0], [0, 5]])
    out = row_sparse_embedding(weight, ids, 0)
    g, = torch.autograd.grad(out.pow(2).sum(), [weight])
    ref = nn.functional.embedding(ids, weight, padding_idx=0)
    g_ref, = torch.autograd.grad(ref.pow(2).sum(), [weight])
    torch.testing.assert_close(densify(g), g_ref)


def test_flush_sum_of_contributions_densifies_once():
    weight = torch.randn(8, 2, requires_grad=True)
    grads = [torch.autograd.grad(row_sparse_embedding(weight, torch.tensor(ids, dtype=torch.long)).sum(), [weight])[0]
             for ids in ([1, 2], [2, 2, 7], [])]
    total = grads[0] + grads[1] + grads[2]
    expected = torch.zeros(8, 2)
    expected[1] += 1
    expected[2] += 3
    expected[7] += 1
    torch.testing.assert_close(densify(total), expected)
