"""A chain whose steps branch on the instance's data: 1 op for odd words, 3 for even ones, then a
shared op. Built to show branch alignment (``phalanx.align``, frontend/align.py): without it the
depth policy cannot batch the shared op across branches."""
from __future__ import annotations

import torch
from torch import nn

from ..frontend.align import align
from ..frontend.cell import cell


@cell
class Step(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, h):
        return torch.tanh(self.lin(h))


class BranchyChain(nn.Module):
    """``forward((h0, words)) -> h``; ``aligned`` pads the short branch with ghost depth."""

    def __init__(self, hidden: int = 64, aligned: bool = True):
        super().__init__()
        self.short, self.long1, self.long2, self.shared = (Step(hidden) for _ in range(4))
        self.aligned = aligned

    def forward(self, example):
        h, words = example
        for word in words:
            start = h
            h = self.short(h) if word % 2 else self.long2(self.long1(self.short(h)))
            if self.aligned:
                h = align(h, after=start, ops=3)
            h = self.shared(h)
        return h
