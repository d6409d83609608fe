"""MV-RNN (Socher et al. 2012) over binarized trees, written for ONE tree, plus ``manual_mvrnn``.

Every node is a vector ``a`` [d] and a matrix ``A`` [d, d]. A parent of ``(a, A)`` and ``(b, B)``
is ``p = tanh(W [B a; A b] + bias)`` and ``P = W_M [A; B]`` (W_M: [d, 2d]). A word's matrix would
need vocab x d x d parameters (327M floats for EWT at d = 128), so words share ``num_matrices``
matrices by ``word % num_matrices`` (each initialised to identity plus noise, as in the paper).
Sizes are 64 / 128 (DESIGN section 4). Task: root UPOS of a binarized EWT tree.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import data
from ..frontend.cell import cell
from .treelstm import RootClassifier
from .treelstm import _levels as _binary_levels
from .treelstm import ewt_examples as ewt_examples  # noqa: F401  (same data as the binary TreeLSTM)


@cell
class MVLeaf(nn.Module):
    """(word, matrix bucket) -> (vector [d], matrix [d, d])."""

    def __init__(self, vocab_size: int, dim: int, num_matrices: int):
        super().__init__()
        self.dim = dim
        self.vectors = nn.Embedding(vocab_size, dim)
        self.matrices = nn.Embedding(num_matrices, dim * dim)
        with torch.no_grad():
            self.matrices.weight.mul_(0.01).add_(torch.eye(dim).reshape(-1))

    def forward(self, word, bucket):
        return self.vectors(word), self.matrices(bucket).unflatten(-1, (self.dim, self.dim))


@cell
class MVCompose(nn.Module):
    """Children (a, A), (b, B) -> parent (p, P)."""

    def __init__(self, dim: int):
        super().__init__()
        self.vector = nn.Linear(2 * dim, dim)
        self.matrix = nn.Parameter(torch.randn(dim, 2 * dim) / (2 * dim) ** 0.5)

    def forward(self, a, A, b, B):
        Ba = torch.matmul(B, a.unsqueeze(-1)).squeeze(-1)
        Ab = torch.matmul(A, b.unsqueeze(-1)).squeeze(-1)
        p = torch.tanh(self.vector(torch.cat([Ba, Ab], dim=-1)))
        return p, self.matrix @ torch.cat([A, B], dim=-2)


class MVRNN(nn.Module):
    """``forward(tree)`` -> root logits (from the root vector); ``loss((tree, label))``."""

    def __init__(self, vocab_size: int, hidden: int = 64, num_matrices: int = 256,
                 num_classes: int = len(data.UPOS_TAGS)):
        super().__init__()
        self.hidden, self.num_matrices = hidden, num_matrices
        self.leaf = MVLeaf(vocab_size, hidden, num_matrices)
        self.compose = MVCompose(hidden)
        self.classifier = RootClassifier(hidden, num_classes)

    def encode(self, tree: data.Tree):
        if tree.is_leaf:
            return self.leaf(tree.word, tree.word % self.num_matrices)
        left, right = tree.children
        a, A = self.encode(left)
        b, B = self.encode(right)
        return self.compose(a, A, b, B)

    def forward(self, tree: data.Tree):
        return self.classifier(self.encode(tree)[0])

    def loss(self, example):
        tree, label = example
        return self.classifier(self.encode(tree)[0], label)


def manual_mvrnn(model: MVRNN, trees, labels=None):
    """All leaves in one call, then one batched composition per tree height (``bmm`` for the
    matrix-vector products). Returns root logits [n, C], or per-tree losses [n]."""
    words, left, right, height, roots = _binary_levels(trees)
    d = model.hidden
    # Rows are written once, in place: the gathers that read them save only indices for backward.
    vec, mat = torch.zeros(len(words), d), torch.zeros(len(words), d, d)
    leaves = torch.nonzero(height == 0).squeeze(1)
    a, A = model.leaf(words[leaves], words[leaves] % model.num_matrices)
    vec.index_copy_(0, leaves, a), mat.index_copy_(0, leaves, A)
    for level in range(1, int(height.max()) + 1 if len(words) else 0):
        nodes = torch.nonzero(height == level).squeeze(1)
        lo, ro = left[nodes], right[nodes]
        a, A, b, B = vec[lo], mat[lo], vec[ro], mat[ro]
        Ba = torch.bmm(B, a.unsqueeze(-1)).squeeze(-1)
        Ab = torch.bmm(A, b.unsqueeze(-1)).squeeze(-1)
        p = torch.tanh(model.compose.vector(torch.cat([Ba, Ab], dim=-1)))
        P = torch.matmul(model.compose.matrix, torch.cat([A, B], dim=-2))
        vec.index_copy_(0, nodes, p), mat.index_copy_(0, nodes, P)
    root = vec[roots]
    return model.classifier(root) if labels is None else model.classifier(root, torch.as_tensor(labels))
