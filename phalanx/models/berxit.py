"""Berxit-style early-exit transformer encoder, written for ONE sentence.

After each transformer layer a small classifier reads the first token; if its softmax confidence
passes ``threshold``, the sentence exits there (Xin et al. 2021, BERxiT / DeeBERT). The test
``confidence > threshold`` is tensor-dependent control flow: under phalanx each one is a fiber
decision, so a batch flushes once per layer that some sentence still needs, and every layer runs
as one batched kernel over the sentences still inside.

Sentences are padded to a multiple of ``bucket`` tokens with a key mask (as batched encoders do),
so a layer has one op type per bucket. The task: predict the UPOS tag of the sentence's root word
(EWT), from the first token's state.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..frontend.cell import cell


@cell
class Embed(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_len: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, hidden)
        self.positions = nn.Embedding(max_len, hidden)

    def forward(self, ids):
        return self.tokens(ids) + self.positions.weight[:ids.shape[-1]]


@cell
class Layer(nn.Module):
    """A post-LN transformer layer over [tokens, hidden] with a key mask [tokens]; written with
    leading-axis-agnostic reshapes, so the same code runs on one sentence and on a batch."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x, mask):
        *lead, length, hidden = x.shape
        q, k, v = (t.reshape(*lead, length, self.heads, -1).transpose(-2, -3) for t in self.qkv(x).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hidden // self.heads)
        scores = scores.masked_fill(~mask.unsqueeze(-2).unsqueeze(-2), float("-inf"))
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(-2, -3).reshape(*lead, length, hidden)
        x = self.norm1(x + self.proj(attended))
        return self.norm2(x + self.ff(x))


@cell
class Exit(nn.Module):
    """The exit classifier: the first token's state -> class logits."""

    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.out(torch.tanh(x[..., 0, :]))


class Berxit(nn.Module):
    """``forward(words) -> (logits at the exit layer, exit layer index)``;
    ``loss((words, label))`` -> cross-entropy of the exit layer's logits."""

    def __init__(self, vocab_size: int, hidden: int = 256, *, layers: int = 6, heads: int = 4,
                 classes: int = len(data.UPOS_TAGS), threshold: float = 0.5, bucket: int = 16, max_len: int = 64):
        super().__init__()
        self.threshold, self.bucket, self.max_len = threshold, bucket, max_len
        self.embed = Embed(vocab_size, hidden, max_len)
        self.layers = nn.ModuleList(Layer(hidden, heads) for _ in range(layers))
        self.exits = nn.ModuleList(Exit(hidden, classes) for _ in range(layers))

    def forward(self, words):
        if not 0 < len(words) <= self.max_len:
            raise ValueError(f"sentence has {len(words)} words; this model takes 1..{self.max_len}")
        length = -(-len(words) // self.bucket) * self.bucket
        x = self.embed(torch.tensor(list(words) + [0] * (length - len(words))))
        mask = torch.arange(length) < len(words)
        for depth, (layer, exit_) in enumerate(zip(self.layers, self.exits, strict=True)):
            x = layer(x, mask)
            logits = exit_(x)
            if depth == len(self.layers) - 1 or torch.softmax(logits, -1).max() > self.threshold:
                return logits, torch.tensor(depth)   # a decision per layer: the fiber suspends on it
        raise AssertionError("unreachable")

    def loss(self, example):
        words, label = example
        logits, _ = self(words)
        return F.cross_entropy(logits, torch.tensor(label))


def ewt_examples(split: str = "dev", max_len: int = 64, max_sentences: int | None = None):
    """``([(word ids, UPOS id of the root word)], vocab)`` from the shipped EWT treebank."""
    sentences = [s for s in data.load_sentences(split) if len(s) <= max_len][:max_sentences]
    vocab = data.Vocab.build((w for s in sentences for w in s.words), lowercase=True)
    return [(vocab.encode(s.words), data.UPOS.lookup(s.upos[s.heads.index(0)])) for s in sentences], vocab
