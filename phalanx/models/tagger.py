"""BiLSTM tagger written for ONE sentence: a forward and a backward LSTM chain over the word
embeddings, and a per-token UPOS classifier over both directions' states. ``ManualTagger`` is the
expert baseline: ``nn.LSTM(bidirectional=True)`` over packed sequences, with the same weights.
"""
from __future__ import annotations

from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .. import data
from ..errors import PhalanxError
from ..frontend.cell import cell


@cell
class Embed(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, embed_dim)

    def forward(self, word):
        return self.table(word)


@cell
class LSTMStep(nn.Module):
    """One LSTM step: (x, h, c) -> (h', c'), an ``nn.LSTMCell`` on one token."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTMCell(input_dim, hidden)

    def forward(self, x, h, c):
        return self.lstm(x, (h, c))


@cell
class TagScorer(nn.Module):
    """Both directions' states of a token -> tag logits, or the loss when a tag is given."""

    def __init__(self, hidden: int, num_tags: int):
        super().__init__()
        self.out = nn.Linear(2 * hidden, num_tags)

    def forward(self, hf, hb, tag=None):
        logits = self.out(torch.cat([hf, hb], dim=-1))
        return logits if tag is None else F.cross_entropy(logits, tag, reduction="none")


class BiLSTMTagger(nn.Module):
    """``forward(words)`` -> list of per-token logits; ``loss((words, tags))`` -> list of per-token
    losses. ``words`` and ``tags`` are lists of ints."""

    def __init__(self, vocab_size: int, hidden: int = 256, embed_dim: int | None = None,
                 num_tags: int = len(data.UPOS_TAGS)):
        super().__init__()
        embed_dim = embed_dim or hidden
        self.hidden = hidden
        self.embed = Embed(vocab_size, embed_dim)
        self.fwd = LSTMStep(embed_dim, hidden)
        self.bwd = LSTMStep(embed_dim, hidden)
        self.scorer = TagScorer(hidden, num_tags)
        self.register_buffer("h0", torch.zeros(hidden), persistent=False)

    def states(self, words):
        xs = [self.embed(w) for w in words]
        forward, backward = [], []
        h = c = self.h0
        for x in xs:
            h, c = self.fwd(x, h, c)
            forward.append(h)
        h = c = self.h0
        for x in reversed(xs):
            h, c = self.bwd(x, h, c)
            backward.append(h)
        backward.reverse()
        return forward, backward

    def forward(self, words):
        forward, backward = self.states(words)
        return [self.scorer(hf, hb) for hf, hb in zip(forward, backward, strict=True)]

    def loss(self, example):
        words, tags = example
        forward, backward = self.states(words)
        return [self.scorer(hf, hb, t) for hf, hb, t in zip(forward, backward, tags, strict=True)]


def ewt_examples(split: str = "dev", max_sentences: int | None = None):
    """``([(word ids, UPOS ids)], vocab)`` from the shipped EWT treebank."""
    examples, vocab, _ = data.load_tagging(split, max_sentences)
    return examples, vocab


class ManualTagger(nn.Module):
    """Hand-batched baseline, as an expert writes it: one sparse-gradient embedding lookup over all
    tokens of the batch, laid out directly in packed order (index building in numpy, no pad / pack
    / unpad round trip), one ``nn.LSTM(bidirectional=True)`` call on that packed sequence (on CPU
    it computes each direction's input projection for all tokens in one matmul), the classifier
    over all tokens at once and one gather back to sentence order. Weights are copied from
    ``model`` at construction (its own parameters, so it trains as an independent copy)."""

    def __init__(self, model: BiLSTMTagger):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(model.embed.table.weight.detach().clone(), freeze=False,
                                                  sparse=True)
        self.lstm = nn.LSTM(model.embed.table.embedding_dim, model.hidden, bidirectional=True)
        with torch.no_grad():
            for suffix, step in (("", model.fwd.lstm), ("_reverse", model.bwd.lstm)):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(self.lstm, f"{name}_l0{suffix}").copy_(getattr(step, name))
        self.out = nn.Linear(2 * model.hidden, model.scorer.out.out_features)
        self.out.load_state_dict(model.scorer.out.state_dict())

    def forward(self, sentences, tags=None):
        """Per-token logits [total tokens, tags] in sentence order, or per-token losses."""
        if not sentences:
            return torch.zeros(0, self.out.out_features) if tags is None else torch.zeros(0)
        words, batch_sizes, sorted_indices, unsorted_indices, packed_position = _packed_layout(sentences)
        packed = PackedSequence(self.embed(words), batch_sizes, sorted_indices, unsorted_indices)
        logits = self.out(self.lstm(packed)[0].data).index_select(0, packed_position)
        if tags is None:
            return logits
        flat_tags = torch.from_numpy(np.fromiter(chain.from_iterable(tags), dtype=np.int64, count=len(logits)))
        return F.cross_entropy(logits, flat_tags, reduction="none")


def _packed_layout(sentences):
    """Word ids in ``PackedSequence`` order (time step major, longest sentence first), the packed
    sequence's ``batch_sizes`` / ``sorted_indices`` / ``unsorted_indices``, and each token's packed
    position, tokens in sentence order."""
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    if lengths.min() == 0:
        empty = int(np.argmin(lengths))
        raise PhalanxError(f"ManualTagger: sentence {empty} has no tokens")
    total = int(lengths.sum())
    order = np.argsort(-lengths, kind="stable")               # rank -> sentence
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    # batch_sizes[t]: sentences longer than t; offsets[t]: packed position of step t's first token.
    batch_sizes = len(lengths) - np.cumsum(np.bincount(lengths))[:-1]
    offsets = np.cumsum(batch_sizes) - batch_sizes
    starts = np.cumsum(lengths) - lengths
    sentence = np.repeat(np.arange(len(lengths)), lengths)
    step = np.arange(total) - np.repeat(starts, lengths)
    position = offsets[step] + rank[sentence]
    words = np.empty(total, dtype=np.int64)
    words[position] = np.fromiter(chain.from_iterable(sentences), dtype=np.int64, count=total)
    return (torch.from_numpy(words), torch.from_numpy(batch_sizes), torch.from_numpy(order),
            torch.from_numpy(rank), torch.from_numpy(position))
