"""Binary TreeLSTM (Tai, Socher & Manning 2015, the N-ary Tree-LSTM with N = 2), written for ONE
tree, plus ``manual_treelstm``: the level-by-level index batching an expert writes by hand.

Task on real data: encode a binarized UD English EWT tree and classify the UPOS tag of the
sentence's dependency root from the root state (``(tree, label)`` examples from ``ewt_examples``).
"""
from __future__ import annotations

import numpy as np
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
    sentences = data.load_sentences(split, max_sentences)
    trees, vocab, _ = data.load_treebank(split, binary=True, max_sentences=max_sentences)
    labels = [data.UPOS[s.upos[s.heads.index(0)]] for s in sentences]
    return list(zip(trees, labels, strict=True)), vocab


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


class _LevelIndex:
    """Index arrays of a batch of binary trees with nodes renumbered level by level (all leaves
    first, then every node of height 1, ...), so each level's states fill one contiguous slice of a
    state buffer. ``leaf_words`` [leaves]; ``children`` [internal nodes, 2] (left, right ids);
    ``bounds``: slice ends per level; ``roots`` [trees]."""

    def __init__(self, trees):
        nodes, roots = [], []
        for tree in trees:
            nodes.extend(tree.nodes_postorder())
            roots.append(len(nodes) - 1)
        ids = {node: i for i, node in enumerate(nodes)}    # nodes hash by identity
        # One flat loop, no recursion: the cheapest index building in Python (~0.5 us per node).
        words, left, right, height = [], [], [], []
        for node in nodes:
            kids = node.children
            if kids:
                lid, rid = ids[kids[0]], ids[kids[1]]
                lh, rh = height[lid], height[rid]
                words.append(0), left.append(lid), right.append(rid), height.append(1 + (lh if lh > rh else rh))
            else:
                words.append(node.word), left.append(0), right.append(0), height.append(0)
        # numpy converts Python lists ~10x faster than torch.tensor does.
        heights = np.array(height, dtype=np.int64)
        order = np.argsort(heights, kind="stable")            # new id -> post-order id
        new_id = np.empty_like(order)
        new_id[order] = np.arange(len(order))
        ends = np.cumsum(np.bincount(heights)).tolist() if height else [0]
        self.num_nodes, self.num_leaves = len(height), ends[0]
        self.bounds = ends
        internal = order[self.num_leaves:]
        pairs = np.stack([np.array(left, dtype=np.int64)[internal], np.array(right, dtype=np.int64)[internal]], axis=1)
        self.leaf_words = torch.from_numpy(np.array(words, dtype=np.int64)[order[:self.num_leaves]])
        self.children = torch.from_numpy(new_id[pairs])
        self.roots = torch.from_numpy(new_id[np.array(roots, dtype=np.int64)])


def manual_treelstm(model: TreeLSTM, trees, labels=None):
    """What an expert writes by hand, index building included: one embedding lookup (sparse
    gradient) and one input projection over all leaves of the batch, then per tree height one
    gather of both children's states (laid out so the gather IS the ``cat([hl, hr])``), one matmul
    and the gate math, written into a preallocated level-ordered state buffer. Returns root logits
    [n, C], or the per-tree losses [n] when ``labels`` is given. Uses ``model``'s own parameters."""
    hidden = model.hidden
    if not trees:
        logits = torch.zeros(0, model.classifier.out.out_features)
        return logits if labels is None else torch.zeros(0)
    index = _LevelIndex(trees)
    leaf, internal = model.leaf, model.internal
    x = F.embedding(index.leaf_words, leaf.embed.weight, sparse=True)
    i, o, u = leaf.gates(x).chunk(3, dim=-1)
    c = torch.sigmoid(i) * torch.tanh(u)
    h = torch.sigmoid(o) * torch.tanh(c)
    h_all = h.new_empty(index.num_nodes, hidden)
    c_all = h.new_empty(index.num_nodes, hidden)
    h_all[:index.num_leaves] = h
    c_all[:index.num_leaves] = c
    start = index.num_leaves
    for end in index.bounds[1:]:
        pairs = index.children[start - index.num_leaves:end - index.num_leaves].reshape(-1)
        count = end - start
        gates = internal.gates(h_all.index_select(0, pairs).view(count, 2 * hidden))
        sig = torch.sigmoid(gates[:, :4 * hidden]).view(count, 4, hidden)       # i, fl, fr, o
        c = sig[:, 0] * torch.tanh(gates[:, 4 * hidden:]) \
            + (sig[:, 1:3] * c_all.index_select(0, pairs).view(count, 2, hidden)).sum(1)
        h_all[start:end] = sig[:, 3] * torch.tanh(c)
        c_all[start:end] = c
        start = end
    root_h = h_all.index_select(0, index.roots)
    if labels is None:
        return model.classifier(root_h)
    return model.classifier(root_h, torch.as_tensor(labels))
