"""DAG-RNN over synthetic DAGs with several node kinds (``phalanx.data.synthetic.random_dag``),
written for ONE DAG, plus ``manual_dag``: level-by-level, kind-by-kind batching by hand.

Node 0 is a source computed by a leaf cell; node ``i > 0`` of kind ``k`` is a GRU step of cell
``k`` over its word and the mean of its predecessors' states. With ``num_kinds`` kinds and
in-degrees 1..``max_preds`` a mini-batch holds many op types, the scaling family for schedulers.
Output: logits from the last node's state; ``loss((dag, label))``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.synthetic import Dag
from ..frontend.cell import cell
from .nested import TokenScorer


@cell
class DagSource(nn.Module):
    def __init__(self, embed: nn.Embedding, hidden: int):
        super().__init__()
        self.embed = embed
        self.proj = nn.Linear(embed.embedding_dim, hidden)

    def forward(self, word):
        return torch.tanh(self.proj(self.embed(word)))


@cell
class DagNode(nn.Module):
    """(word, predecessors' states stacked [k, H]) -> state."""

    def __init__(self, embed: nn.Embedding, hidden: int):
        super().__init__()
        self.embed = embed
        self.gru = nn.GRUCell(embed.embedding_dim, hidden)

    def forward(self, word, hs):
        return self.gru(self.embed(word), hs.mean(-2))


class DagRNN(nn.Module):
    def __init__(self, vocab_size: int, hidden: int = 64, num_kinds: int = 3, embed_dim: int | None = None,
                 num_classes: int = 4):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab_size, embed_dim or hidden)
        self.source = DagSource(self.embed, hidden)
        self.kinds = nn.ModuleList(DagNode(self.embed, hidden) for _ in range(num_kinds))
        self.scorer = TokenScorer(hidden, num_classes)

    def encode(self, dag: Dag):
        states = [self.source(dag.words[0])]
        for word, kind, preds in zip(dag.words[1:], dag.kinds[1:], dag.preds[1:], strict=True):
            states.append(self.kinds[kind](word, torch.stack([states[p] for p in preds])))
        return states[-1]

    def forward(self, dag: Dag):
        return self.scorer(self.encode(dag))

    def loss(self, example):
        dag, label = example
        return self.scorer(self.encode(dag), label)


def synthetic_examples(n: int, seed: int, vocab_size: int = 1000, num_kinds: int = 3, num_classes: int = 4,
                       scale: float = 1.0):
    """``n`` (DAG, label) pairs; DAG sizes follow EWT sentence lengths times ``scale``."""
    from ..data.synthetic import as_generator, random_dags

    rng = as_generator(seed)
    dags = random_dags(n, rng, vocab_size, scale=scale, num_kinds=num_kinds)
    return list(zip(dags, rng.integers(0, num_classes, size=n).tolist(), strict=True))


def manual_dag(model: DagRNN, dags, labels=None):
    """Sources in one call, then per depth level one GRU call per node kind, predecessor means by
    ``index_add``. Returns the last nodes' logits [n, C], or per-DAG losses [n]."""
    words, kinds, level, edge_dst, edge_src, lasts, offset = [], [], [], [], [], [], 0
    for dag in dags:
        for i, preds in enumerate(dag.preds):
            level.append(1 + max(level[offset + p] for p in preds) if preds else 0)
            edge_dst.extend([offset + i] * len(preds))
            edge_src.extend(offset + p for p in preds)
        words.extend(dag.words), kinds.extend(dag.kinds)
        offset += len(dag)
        lasts.append(offset - 1)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    words, kinds, level, edge_dst, edge_src = map(as_long, (words, kinds, level, edge_dst, edge_src))
    degree = torch.zeros(offset).index_add(0, edge_dst, torch.ones(len(edge_dst))) if offset else torch.zeros(0)
    # Rows are written once, in place: the gathers that read them save only indices for backward.
    h_all = torch.zeros(offset, model.hidden)
    sources = torch.nonzero(level == 0).squeeze(1)
    h_all.index_copy_(0, sources, model.source(words[sources]))
    edge_level = level[edge_dst]
    for depth in range(1, int(level.max()) + 1 if offset else 0):
        edges = torch.nonzero(edge_level == depth).squeeze(1)
        dst, src = edge_dst[edges], edge_src[edges]
        for k, node_cell in enumerate(model.kinds):
            nodes = torch.nonzero((level == depth) & (kinds == k)).squeeze(1)
            if not len(nodes):
                continue
            mine = (kinds[dst] == k)
            rows = torch.searchsorted(nodes, dst[mine])
            mean = torch.zeros(len(nodes), model.hidden).index_add(0, rows, h_all[src[mine]]) / degree[nodes].unsqueeze(1)
            h_all.index_copy_(0, nodes, node_cell.gru(model.embed(words[nodes]), mean))
    out = h_all[as_long(lasts)]
    return model.scorer.out(out) if labels is None else model.scorer(out, torch.as_tensor(labels))
