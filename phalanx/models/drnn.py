"""DRNN: a doubly-recurrent tree generator (Alvarez-Melis & Jaakkola 2017), written for ONE tree.

Each node's state mixes an ancestral state (from its parent) and a fraternal state (from its
previous sibling). From that state the model scores a label and two topology decisions: whether
the node has children, and whether it has a next sibling. Both decisions are tensor-dependent
control flow (fiber decisions, runtime/fibers.py), so each instance grows its own tree. An
instance is a latent vector (synthetic: the model decodes it into a tree).
"""
from __future__ import annotations

import torch
from torch import nn

from ..frontend.cell import cell


@cell
class Node(nn.Module):
    """(ancestral state, fraternal state) -> (state, label logits, has-children, has-sibling)."""

    def __init__(self, hidden: int, labels: int):
        super().__init__()
        self.ancestral = nn.Linear(hidden, hidden)
        self.fraternal = nn.Linear(hidden, hidden)
        self.label = nn.Linear(hidden, labels)
        self.topology = nn.Linear(hidden, 2)

    def forward(self, up, left):
        h = torch.tanh(self.ancestral(up) + self.fraternal(left))
        stop = self.topology(h)
        return h, self.label(h), stop[..., 0], stop[..., 1]


class DRNN(nn.Module):
    """``forward(z) -> (label logits of every node in pre-order, tree shape as parent indices)``.
    ``max_depth`` and ``max_children`` bound the tree."""

    def __init__(self, hidden: int = 256, labels: int = 16, max_depth: int = 3, max_children: int = 3):
        super().__init__()
        self.node = Node(hidden, labels)
        self.max_depth, self.max_children = max_depth, max_children
        self.register_buffer("none", torch.zeros(hidden), persistent=False)

    def forward(self, z):
        logits, parents = [], []
        self._grow(z, self.none, -1, 0, logits, parents)
        return torch.stack(logits), torch.tensor(parents)

    def _grow(self, up, left, parent, depth, logits, parents):
        """Generate one node and its subtree; returns (its state, whether it wants a next sibling)."""
        h, label, has_children, has_sibling = self.node(up, left)
        me = len(parents)
        logits.append(label)
        parents.append(parent)
        if depth < self.max_depth and has_children > 0:          # a decision
            sibling = self.none
            for _ in range(self.max_children):
                sibling, more = self._grow(h, sibling, me, depth + 1, logits, parents)
                if not more:
                    break
        return h, bool(has_sibling > 0)                          # a decision


def latent_codes(count: int, hidden: int, seed: int = 0) -> list[torch.Tensor]:
    """Synthetic instances: latent vectors the generator decodes into trees."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(hidden, generator=gen) for _ in range(count)]
