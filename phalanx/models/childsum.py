"""Child-sum TreeLSTM (Tai, Socher & Manning 2015) over dependency trees as they are, written for
ONE tree, plus ``manual_childsum``: the level-by-level index batching an expert writes by hand.

Every token is a node with its own word; a node's children are its dependents, however many.
The natural per-instance code stacks the children's states and calls one cell: one op type for
every arity (NOTE: [Ragged operands] in frontend/ragged.py). Task: classify the UPOS tag of the
sentence's root from the root state (``(tree, label)`` from ``ewt_examples``).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import data
from ..frontend.cell import cell
from .treelstm import RootClassifier


@cell
class ChildSumLeaf(nn.Module):
    """A node with no children: word -> (h, c). Shares the input weights with ``ChildSumNode``."""

    def __init__(self, embed: nn.Embedding, input_iou: nn.Linear):
        super().__init__()
        self.embed, self.input_iou = embed, input_iou

    def forward(self, word):
        i, o, u = self.input_iou(self.embed(word)).chunk(3, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(u)
        return torch.sigmoid(o) * torch.tanh(c), c


@cell
class ChildSumNode(nn.Module):
    """A node with children: (word, children's h stacked [k, H], children's c [k, H]) -> (h, c),
    with one forget gate per child."""

    def __init__(self, embed: nn.Embedding, input_iou: nn.Linear, input_f: nn.Linear, hidden: int):
        super().__init__()
        self.embed, self.input_iou, self.input_f = embed, input_iou, input_f
        self.hidden_iou = nn.Linear(hidden, 3 * hidden, bias=False)
        self.hidden_f = nn.Linear(hidden, hidden, bias=False)

    def forward(self, word, hs, cs):
        x = self.embed(word)
        i, o, u = (self.input_iou(x) + self.hidden_iou(hs.sum(-2))).chunk(3, dim=-1)
        f = torch.sigmoid(self.input_f(x).unsqueeze(-2) + self.hidden_f(hs))
        c = torch.sigmoid(i) * torch.tanh(u) + (f * cs).sum(-2)
        return torch.sigmoid(o) * torch.tanh(c), c


class ChildSumTreeLSTM(nn.Module):
    """``forward(tree)`` -> root logits; ``loss((tree, label))`` -> scalar loss. One tree at a time."""

    def __init__(self, vocab_size: int, hidden: int = 256, embed_dim: int | None = None,
                 num_classes: int = len(data.UPOS_TAGS)):
        super().__init__()
        embed_dim = embed_dim or hidden
        self.hidden = hidden
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.input_iou = nn.Linear(embed_dim, 3 * hidden)
        self.input_f = nn.Linear(embed_dim, hidden)
        self.leaf = ChildSumLeaf(self.embed, self.input_iou)
        self.node = ChildSumNode(self.embed, self.input_iou, self.input_f, hidden)
        self.classifier = RootClassifier(hidden, num_classes)

    def encode(self, tree: data.Tree):
        if tree.is_leaf:
            return self.leaf(tree.word)
        states = [self.encode(child) for child in tree.children]
        hs = torch.stack([h for h, _ in states])
        cs = torch.stack([c for _, c in states])
        return self.node(tree.word, hs, cs)

    def forward(self, tree: data.Tree):
        return self.classifier(self.encode(tree)[0])

    def loss(self, example):
        tree, label = example
        return self.classifier(self.encode(tree)[0], label)


def ewt_examples(split: str = "dev", max_sentences: int | None = None):
    """``([(dependency tree, root UPOS id)], vocab)`` from the shipped EWT treebank."""
    examples, vocab, _ = data.load_root_examples(split, binary=False, max_sentences=max_sentences)
    return examples, vocab


# *** the hand-batched baseline ***

def _flatten(trees):
    """Post-order node arrays over all trees: word, height; child edges (child, parent); roots."""
    words, height, edge_child, edge_parent, roots = [], [], [], [], []
    for tree in trees:
        ids = {}
        for node in tree.nodes_postorder():
            me = ids[id(node)] = len(words)
            words.append(node.word)
            level = 0
            for child in node.children:
                cid = ids[id(child)]
                edge_child.append(cid), edge_parent.append(me)
                level = max(level, height[cid] + 1)
            height.append(level)
        roots.append(len(words) - 1)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return as_long(words), as_long(height), as_long(edge_child), as_long(edge_parent), as_long(roots)


def manual_childsum(model: ChildSumTreeLSTM, trees, labels=None):
    """What an expert writes by hand: the input projections of every node in one matmul, then one
    step per tree height: children's states gathered with index_select, summed per parent with
    index_add. Returns root logits [n, C], or per-tree losses [n] given ``labels``."""
    words, height, edge_child, edge_parent, roots = _flatten(trees)
    n, hidden = len(words), model.hidden
    x = model.embed(words)
    x_iou, x_f = model.input_iou(x), model.input_f(x)      # hoisted: all nodes at once
    # Rows are written once, in place: the gathers that read them save only indices for backward.
    h_all, c_all = torch.zeros(n, hidden), torch.zeros(n, hidden)
    edge_level = height[edge_parent]
    for level in range(int(height.max()) + 1 if n else 0):
        nodes = torch.nonzero(height == level).squeeze(1)
        iou = x_iou[nodes]
        child_c = torch.zeros(len(nodes), hidden)
        if level:
            edges = torch.nonzero(edge_level == level).squeeze(1)
            child, parent = edge_child[edges], edge_parent[edges]
            slot = torch.searchsorted(nodes, parent)          # the parent's row in this level
            hc = h_all[child]
            iou = iou + model.node.hidden_iou(torch.zeros(len(nodes), hidden).index_add(0, slot, hc))
            f = torch.sigmoid(x_f[parent] + model.node.hidden_f(hc))
            child_c = child_c.index_add(0, slot, f * c_all[child])
        i, o, u = iou.chunk(3, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(u) + child_c
        h = torch.sigmoid(o) * torch.tanh(c)
        h_all.index_copy_(0, nodes, h), c_all.index_copy_(0, nodes, c)
    root_h = h_all[roots]
    if labels is None:
        return model.classifier(root_h)
    return model.classifier(root_h, torch.as_tensor(labels))
