"""Lattice-GRU and Lattice-LSTM over character lattices (``phalanx.data.lattice``), written for
ONE lattice, plus ``manual_lattice``: position-by-position batching by hand.

Node ``i`` reads character ``i - 1`` and the mean of its predecessors' states (the character arc
from node ``i - 1`` plus every lexicon word ending there), as lattice RNNs do. The natural code
stacks the predecessors' states and calls one cell: one op type for every in-degree (NOTE: [Ragged
operands] in frontend/ragged.py).
Task: per character, does a gold word begin here (Chinese UD word segmentation, 2 classes).
Data: ``chinese_examples`` (UD Chinese GSDSimp / PUD with jieba word arcs) or
``phalanx.data.synthetic.random_lattices``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.lattice import Lattice
from ..frontend.cell import cell
from .nested import TokenScorer

NUM_LABELS = 2


@cell
class LatticeGRUNode(nn.Module):
    """(character, predecessors' h stacked [k, H]) -> h."""

    def __init__(self, embed: nn.Embedding, hidden: int):
        super().__init__()
        self.embed = embed
        self.gru = nn.GRUCell(embed.embedding_dim, hidden)

    def forward(self, char, hs):
        return self.gru(self.embed(char), hs.mean(-2))


@cell
class LatticeLSTMNode(nn.Module):
    """(character, predecessors' h and c stacked [k, H]) -> (h, c)."""

    def __init__(self, embed: nn.Embedding, hidden: int):
        super().__init__()
        self.embed = embed
        self.lstm = nn.LSTMCell(embed.embedding_dim, hidden)

    def forward(self, char, hs, cs):
        return self.lstm(self.embed(char), (hs.mean(-2), cs.mean(-2)))


class LatticeRNN(nn.Module):
    """``forward(lattice)`` -> per-character logits; ``loss(lattice)`` -> per-character losses
    against ``lattice.labels``. ``kind``: ``"gru"`` or ``"lstm"``."""

    def __init__(self, num_chars: int, hidden: int = 128, embed_dim: int | None = None, kind: str = "gru",
                 num_labels: int = NUM_LABELS):
        super().__init__()
        if kind not in ("gru", "lstm"):
            raise ValueError(f"kind must be 'gru' or 'lstm', got {kind!r}")
        self.hidden, self.kind = hidden, kind
        self.embed = nn.Embedding(num_chars, embed_dim or hidden)
        self.node = (LatticeGRUNode if kind == "gru" else LatticeLSTMNode)(self.embed, hidden)
        self.scorer = TokenScorer(hidden, num_labels)
        self.register_buffer("h0", torch.zeros(hidden), persistent=False)

    def states(self, lattice: Lattice):
        hs, cs = [self.h0], [self.h0]
        for char, preds in zip(lattice.chars, lattice.preds, strict=True):
            if self.kind == "gru":
                hs.append(self.node(char, torch.stack([hs[p] for p in preds])))
            else:
                h, c = self.node(char, torch.stack([hs[p] for p in preds]), torch.stack([cs[p] for p in preds]))
                hs.append(h), cs.append(c)
        return hs[1:]

    def forward(self, lattice: Lattice):
        return [self.scorer(h) for h in self.states(lattice)]

    def loss(self, lattice: Lattice):
        return [self.scorer(h, y) for h, y in zip(self.states(lattice), lattice.labels, strict=True)]


def chinese_examples(sources=("gsdsimp-dev", "gsdsimp-test", "pud"), max_sentences: int | None = None):
    """``(lattices, character vocab)`` of Chinese UD sentences with jieba word arcs."""
    from ..data.chinese import load_lattices

    return load_lattices(sources, max_sentences)


# *** the hand-batched baseline ***

def _positions(lattices):
    """Flat node ids (node 0 of each lattice included), per step t >= 1 the active nodes, their
    characters, and the predecessor edges (row within the step, flat source id)."""
    offsets, total = [], 0
    for lat in lattices:
        offsets.append(total)
        total += len(lat) + 1
    steps = []
    for t in range(1, max((len(lat) for lat in lattices), default=0) + 1):
        nodes, chars, edge_row, edge_src, degree = [], [], [], [], []
        for lat, base in zip(lattices, offsets, strict=True):
            if len(lat) >= t:
                preds = lat.preds[t - 1]
                edge_row.extend([len(nodes)] * len(preds))
                edge_src.extend(base + p for p in preds)
                degree.append(len(preds))
                nodes.append(base + t), chars.append(lat.chars[t - 1])
        steps.append(tuple(torch.tensor(x, dtype=torch.long) for x in (nodes, chars, edge_row, edge_src, degree)))
    outputs = torch.tensor([base + t for lat, base in zip(lattices, offsets, strict=True)
                            for t in range(1, len(lat) + 1)], dtype=torch.long)
    return total, steps, outputs


def manual_lattice(model: LatticeRNN, lattices, labels: bool = False):
    """What an expert writes by hand: the input projection of every character in one matmul, then
    one step per character position across all lattices, predecessor means by ``index_add``.
    Returns per-character logits [total chars, C] in lattice order, or per-character losses."""
    total, steps, outputs = _positions(lattices)
    hidden = model.hidden
    rnn = model.node.gru if model.kind == "gru" else model.node.lstm
    all_chars = torch.cat([s[1] for s in steps]) if steps else torch.zeros(0, dtype=torch.long)
    x_proj = F.linear(model.embed(all_chars), rnn.weight_ih, rnn.bias_ih).split([len(s[0]) for s in steps])
    # Rows are written once, in place: the gathers that read them save only indices for backward.
    h_all = torch.zeros(total, hidden)
    c_all = torch.zeros(total, hidden) if model.kind == "lstm" else None
    for (nodes, _, edge_row, edge_src, degree), gi in zip(steps, x_proj, strict=True):
        scale = 1.0 / degree.unsqueeze(1).to(h_all.dtype)
        h_prev = torch.zeros(len(nodes), hidden).index_add(0, edge_row, h_all.index_select(0, edge_src)) * scale
        gh = F.linear(h_prev, rnn.weight_hh, rnn.bias_hh)
        if model.kind == "gru":
            r_i, z_i, n_i = gi.chunk(3, dim=-1)
            r_h, z_h, n_h = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
            n = torch.tanh(n_i + r * n_h)
            h = (1 - z) * n + z * h_prev
        else:
            c_prev = torch.zeros(len(nodes), hidden).index_add(0, edge_row, c_all.index_select(0, edge_src)) * scale
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            c_all.index_copy_(0, nodes, c)
        h_all.index_copy_(0, nodes, h)
    logits = model.scorer.out(h_all[outputs])
    if not labels:
        return logits
    targets = torch.tensor([y for lat in lattices for y in lat.labels], dtype=torch.long)
    return F.cross_entropy(logits, targets, reduction="none")
