"""Two-cell-type TreeLSTM over binarized trees, written for ONE tree, plus ``manual_twotype``.

A binarized dependency tree's internal node attaches one dependent to its head's span; its label
is that dependent's relation. Nodes that attach a function word (``det``, ``case``, ``aux``,
``punct``...) are composed by one TreeLSTM cell and all others (arguments, modifiers) by another,
with a shared leaf cell: three op types whose mix varies per tree, as in ED-Batch's two-cell-type
TreeLSTM. Task: root UPOS of a binarized EWT tree (``ewt_examples``).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import data
from .treelstm import RootClassifier, TreeLSTMInternal, TreeLSTMLeaf
from .treelstm import _levels as _binary_levels

# Relations whose dependent is a function word (UD's function-word relations, plus punctuation).
FUNCTION_RELATIONS = frozenset({"aux", "aux:pass", "case", "cc", "cc:preconj", "clf", "cop", "det",
                                "det:predet", "mark", "punct"})


class TwoTypeTreeLSTM(nn.Module):
    """``forward(tree)`` -> root logits; ``loss((tree, label))``. ``function_labels``: the label
    ids (``Tree.label``) of nodes composed by the function-word cell."""

    def __init__(self, vocab_size: int, function_labels, hidden: int = 256, embed_dim: int | None = None,
                 num_classes: int = len(data.UPOS_TAGS)):
        super().__init__()
        self.hidden = hidden
        self.function_labels = frozenset(function_labels)
        self.leaf = TreeLSTMLeaf(vocab_size, embed_dim or hidden, hidden)
        self.function_node = TreeLSTMInternal(hidden)
        self.content_node = TreeLSTMInternal(hidden)
        self.classifier = RootClassifier(hidden, num_classes)

    def encode(self, tree: data.Tree):
        if tree.is_leaf:
            return self.leaf(tree.word)
        left, right = tree.children
        hl, cl = self.encode(left)
        hr, cr = self.encode(right)
        if tree.label in self.function_labels:
            return self.function_node(hl, cl, hr, cr)
        return self.content_node(hl, cl, hr, cr)

    def forward(self, tree: data.Tree):
        return self.classifier(self.encode(tree)[0])

    def loss(self, example):
        tree, label = example
        return self.classifier(self.encode(tree)[0], label)


def ewt_examples(split: str = "dev", max_sentences: int | None = None):
    """``([(binary tree, root UPOS id)], vocab, function_labels)`` from the shipped EWT treebank."""
    examples, vocab, label_vocab = data.load_root_examples(split, binary=True, max_sentences=max_sentences)
    function_labels = {label_vocab[r] for r in label_vocab.tokens if r in FUNCTION_RELATIONS}
    return examples, vocab, function_labels


def manual_twotype(model: TwoTypeTreeLSTM, trees, labels=None):
    """All leaves in one call, then per tree height one call per cell type. Node kinds are read
    from the trees inside the timed call, like the rest of the index building."""
    words, left, right, height, roots = _binary_levels(trees)
    is_function = torch.tensor([node.label in model.function_labels for tree in trees
                                for node in tree.nodes_postorder()], dtype=torch.bool)
    n = len(words)
    # Rows are written once, in place: the gathers that read them save only indices for backward.
    h_all, c_all = torch.zeros(n, model.hidden), torch.zeros(n, model.hidden)
    leaves = torch.nonzero(height == 0).squeeze(1)
    h, c = model.leaf(words[leaves])
    h_all.index_copy_(0, leaves, h), c_all.index_copy_(0, leaves, c)
    for level in range(1, int(height.max()) + 1 if n else 0):
        at_level = height == level
        for cell, mask in ((model.function_node, at_level & is_function), (model.content_node, at_level & ~is_function)):
            nodes = torch.nonzero(mask).squeeze(1)
            if len(nodes):
                lo, ro = left[nodes], right[nodes]
                h, c = cell(h_all[lo], c_all[lo], h_all[ro], c_all[ro])
                h_all.index_copy_(0, nodes, h), c_all.index_copy_(0, nodes, c)
    root_h = h_all[roots]
    return model.classifier(root_h) if labels is None else model.classifier(root_h, torch.as_tensor(labels))
