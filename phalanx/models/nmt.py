"""LSTM-NMT with attention, written for ONE sentence pair: an LSTM encoder over the English words,
and an LSTM decoder with (Luong) attention over the encoder states that translates greedily until
it emits ``<eos>`` or reaches a length limit. Decoding is tensor-dependent control flow: each
``.item()`` on the argmax is a fiber decision (runtime/fibers.py), so a batch needs as many flush
rounds as its longest translation, not the total.

The encoder memory is padded to ``max_src`` rows with a mask (as one does for batched attention),
so every decoder step has one op type whatever the source length. ``loss((src, tgt))`` is the
teacher-forced cross-entropy (no decisions); ``forward(src)`` is greedy decoding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.pud import load_pairs
from ..frontend.cell import cell
from ..frontend.phase import phase


@cell
class Embed(nn.Module):
    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, dim)

    def forward(self, word):
        return self.table(word)


@cell
class EncoderStep(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTMCell(dim, hidden)

    def forward(self, x, h, c):
        return self.lstm(x, (h, c))


@cell
class DecoderStep(nn.Module):
    """(previous word id, h, c, memory [max_src, hidden], mask [max_src]) -> (h', c', logits):
    one LSTM step, dot-product attention over the unmasked memory rows, and the output layer."""

    def __init__(self, vocab_size: int, dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.lstm = nn.LSTMCell(dim, hidden)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, word, h, c, memory, mask):
        h, c = self.lstm(self.embed(word), (h, c))
        # Written with broadcasting and reductions over the last axes, so the same code runs on
        # one instance and on a batch (no vmap needed).
        scores = (memory * h.unsqueeze(-2)).sum(-1).masked_fill(~mask, float("-inf"))
        context = (torch.softmax(scores, dim=-1).unsqueeze(-1) * memory).sum(-2)
        return h, c, self.out(torch.tanh(self.combine(torch.cat([h, context], dim=-1))))


class NMT(nn.Module):
    """``forward(src) -> (word ids, per-step logits)``; ``loss((src, tgt)) -> summed cross-entropy``.
    ``src`` / ``tgt`` are lists of ints; ``bos`` / ``eos`` are target ids."""

    def __init__(self, src_vocab: int, tgt_vocab: int, hidden: int = 256, *, bos: int = 2, eos: int = 3,
                 max_src: int = 32, max_len: int = 32):
        super().__init__()
        self.hidden, self.bos, self.eos, self.max_src, self.max_len = hidden, bos, eos, max_src, max_len
        self.src_embed = Embed(src_vocab, hidden)
        self.encoder = EncoderStep(hidden, hidden)
        self.decoder = DecoderStep(tgt_vocab, hidden, hidden)
        self.register_buffer("h0", torch.zeros(hidden), persistent=False)

    def encode(self, src):
        if not 0 < len(src) <= self.max_src:
            raise ValueError(f"source sentence has {len(src)} words; this model takes 1..{self.max_src}")
        with phase("encode"):
            h = c = self.h0
            states = []
            for w in src:
                h, c = self.encoder(self.src_embed(w), h, c)
                states.append(h)
            memory = F.pad(torch.stack(states), (0, 0, 0, self.max_src - len(src)))
        mask = torch.arange(self.max_src) < len(src)
        return h, c, memory, mask

    def forward(self, src):
        h, c, memory, mask = self.encode(src)
        words, logits = [], []
        word = self.bos
        with phase("decode"):
            while len(words) < self.max_len:
                h, c, step_logits = self.decoder(word, h, c, memory, mask)
                logits.append(step_logits)
                word = step_logits.argmax().item()      # a decision: the fiber suspends here
                words.append(word)
                if word == self.eos:
                    break
        return torch.tensor(words), torch.stack(logits)

    def loss(self, example):
        src, tgt = example
        h, c, memory, mask = self.encode(src)
        total = 0.0
        with phase("decode"):
            for prev, gold in zip([self.bos, *tgt], [*tgt, self.eos], strict=True):
                h, c, step_logits = self.decoder(prev, h, c, memory, mask)
                total = total + F.cross_entropy(step_logits, torch.tensor(gold))
        return total


def pud_examples(max_len: int = 32, max_pairs: int | None = None):
    """``([(english ids, german ids)], english vocab, german vocab)`` from the shipped PUD files."""
    return load_pairs(max_len, max_pairs)


__all__ = ["NMT", "pud_examples"]
