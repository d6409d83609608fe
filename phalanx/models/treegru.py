"""TreeGRU over binarized trees, written for ONE tree, plus ``manual_treegru`` (level-by-level
index batching by hand).

Leaf: ``h = tanh(W x + b)``. Internal node over children ``hl, hr``: reset gates per child, an
update gate ``z``, candidate ``n = tanh(U [rl * hl; rr * hr] + b)`` and ``h = z * n + (1 - z) *
(hl + hr) / 2`` (a GRU whose previous state is the children's mean). Task: root UPOS of a
binarized EWT tree, as for the binary TreeLSTM (``treelstm.ewt_examples``).
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
class TreeGRULeaf(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.proj = nn.Linear(embed_dim, hidden)

    def forward(self, word):
        return torch.tanh(self.proj(self.embed(word)))


@cell
class TreeGRUInternal(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.gates = nn.Linear(2 * hidden, 3 * hidden)      # rl, rr, z
        self.candidate = nn.Linear(2 * hidden, hidden)

    def forward(self, hl, hr):
        rl, rr, z = torch.sigmoid(self.gates(torch.cat([hl, hr], dim=-1))).chunk(3, dim=-1)
        n = torch.tanh(self.candidate(torch.cat([rl * hl, rr * hr], dim=-1)))
        return z * n + (1 - z) * 0.5 * (hl + hr)


class TreeGRU(nn.Module):
    """``forward(tree)`` -> root logits; ``loss((tree, label))`` -> scalar loss."""

    def __init__(self, vocab_size: int, hidden: int = 256, embed_dim: int | None = None,
                 num_classes: int = len(data.UPOS_TAGS)):
        super().__init__()
        self.hidden = hidden
        self.leaf = TreeGRULeaf(vocab_size, embed_dim or hidden, hidden)
        self.internal = TreeGRUInternal(hidden)
        self.classifier = RootClassifier(hidden, num_classes)

    def encode(self, tree: data.Tree):
        if tree.is_leaf:
            return self.leaf(tree.word)
        left, right = tree.children
        return self.internal(self.encode(left), self.encode(right))

    def forward(self, tree: data.Tree):
        return self.classifier(self.encode(tree))

    def loss(self, example):
        tree, label = example
        return self.classifier(self.encode(tree), label)


def manual_treegru(model: TreeGRU, trees, labels=None):
    """All leaves in one call, then one call per tree height with children gathered by index.
    Returns root logits [n, C], or per-tree losses [n] given ``labels``."""
    words, left, right, height, roots = _binary_levels(trees)
    # Rows are written once, in place: the gathers that read them save only indices for backward.
    h_all = torch.zeros(len(words), model.hidden)
    leaves = torch.nonzero(height == 0).squeeze(1)
    h_all.index_copy_(0, leaves, model.leaf(words[leaves]))
    for level in range(1, int(height.max()) + 1 if len(words) else 0):
        nodes = torch.nonzero(height == level).squeeze(1)
        h_all.index_copy_(0, nodes, model.internal(h_all[left[nodes]], h_all[right[nodes]]))
    root_h = h_all[roots]
    return model.classifier(root_h) if labels is None else model.classifier(root_h, torch.as_tensor(labels))
