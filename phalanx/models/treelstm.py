"""Binary TreeLSTM (Tai, Socher & Manning 2015, the N-ary Tree-LSTM with N = 2), written for ONE
tree, plus ``manual_treelstm``: the level-by-level index batching an expert writes by hand.

Task on real data: encode a binarized UD English EWT tree and classify the UPOS tag of the
sentence's dependency root from the root state (``(tree, label)`` examples from ``ewt_examples``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..frontend.cell import cell


@cell
class TreeLSTMLeaf(nn.Module):
    """Leaf: word id (0-d tensor) -> (h, c), with the input, output and update gates of a node that
    has no children."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.gates = nn.Linear(embed_dim, 3 * hidden)

    def forward(self, word):
        i, o, u = self.gates(self.embed(word)).chunk(3, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(u)
        return torch.sigmoid(o) * torch.tanh(c), c


@cell
class TreeLSTMInternal(nn.Module):
    """Internal node: children (hl, cl), (hr, cr) -> (h, c); one forget gate per child."""

    def __init__(self, hidden: int):
        super().__init__()
        self.gates = nn.Linear(2 * hidden, 5 * hidden)

    def forward(self, hl, cl, hr, cr):
        i, fl, fr, o, u = self.gates(torch.cat([hl, hr], dim=-1)).chunk(5, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(fl) * cl + torch.sigmoid(fr) * cr
        return torch.sigmoid(o) * torch.tanh(c), c


@cell
class RootClassifier(nn.Module):
    """Root state -> class logits, or the cross-entropy loss when a label is given."""

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, h, label=None):
        logits = self.out(h)
        return logits if label is None else F.cross_entropy(logits, label, reduction="none")


class TreeLSTM(nn.Module):
    """``forward(tree)`` -> root logits; ``loss((tree, label))`` -> scalar loss. One tree at a time."""

    def __init__(self, vocab_size: int, hidden: int = 256, embed_dim: int | None = None,
                 num_classes: int = len(data.UPOS_TAGS)):
        super().__init__()
        self.hidden = hidden
        self.leaf = TreeLSTMLeaf(vocab_size, embed_dim or hidden, hidden)
        self.internal = TreeLSTMInternal(hidden)
        self.classifier = RootClassifier(hidden, num_classes)

    def encode(self, tree: data.Tree):
        if tree.is_leaf:
            return self.leaf(tree.word)
        left, right = tree.children
        hl, cl = self.encode(left)
        hr, cr = self.encode(right)
        return self.internal(hl, cl, hr, cr)

    def forward(self, tree: data.Tree):
        return self.classifier(self.encode(tree)[0])

    def loss(self, example):
        tree, label = example
        return self.classifier(self.encode(tree)[0], label)


def ewt_examples(split: str = "dev", max_sentences: int | None = None):
    """``([(binary tree, root UPOS id)], vocab)`` from the shipped EWT treebank."""
    examples, vocab, _ = data.load_root_examples(split, binary=True, max_sentences=max_sentences)
    return examples, vocab


# *** the hand-batched baseline ***

def _levels(trees):
    """Flatten trees into post-order node arrays: word, left, right (global ids), height."""
    words, left, right, height, roots = [], [], [], [], []
    for tree in trees:
        ids = {}
        for node in tree.nodes_postorder():
            ids[id(node)] = len(words)
            if node.is_leaf:
                words.append(node.word), left.append(-1), right.append(-1), height.append(0)
            else:
                lid, rid = ids[id(node.children[0])], ids[id(node.children[1])]
                words.append(-1), left.append(lid), right.append(rid)
                height.append(1 + max(height[lid], height[rid]))
        roots.append(len(words) - 1)
    return (torch.tensor(words), torch.tensor(left), torch.tensor(right), torch.tensor(height),
            torch.tensor(roots, dtype=torch.long))


def manual_treelstm(model: TreeLSTM, trees, labels=None):
    """What an expert writes by hand: all leaves in one call, then one call per tree height,
    gathering children states with index_select. Returns root logits [n, C], or the per-tree
    losses [n] when ``labels`` is given. Uses ``model``'s own parameters."""
    words, left, right, height, roots = _levels(trees)
    n = len(words)
    h_all = torch.zeros(n, model.hidden)
    c_all = torch.zeros(n, model.hidden)
    leaves = torch.nonzero(height == 0).squeeze(1)
    h, c = model.leaf(words[leaves])
    h_all, c_all = h_all.index_copy(0, leaves, h), c_all.index_copy(0, leaves, c)
    for level in range(1, int(height.max()) + 1 if n else 0):
        nodes = torch.nonzero(height == level).squeeze(1)
        lo, ro = left[nodes], right[nodes]
        h, c = model.internal(h_all[lo], c_all[lo], h_all[ro], c_all[ro])
        h_all, c_all = h_all.index_copy(0, nodes, h), c_all.index_copy(0, nodes, c)
    root_h = h_all[roots]
    if labels is None:
        return model.classifier(root_h)
    return model.classifier(root_h, torch.as_tensor(labels))
