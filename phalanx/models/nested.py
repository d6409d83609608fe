"""NestedRNN: a word-level LSTM whose input for each word is the final state of a character-level
LSTM over that word's characters, written for ONE sentence, with a per-token UPOS scorer.
``ManualNestedRNN`` is the expert baseline: two packed ``nn.LSTM`` calls (all words of the batch,
then all sentences) run on the model's own parameters.

Data: EWT sentences, each word as a list of character ids (``ewt_examples``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from .. import data
from ..frontend.cell import cell
from .tagger import Embed, LSTMStep


@cell
class TokenScorer(nn.Module):
    """A token's state -> tag logits, or the loss when a tag is given."""

    def __init__(self, hidden: int, num_tags: int):
        super().__init__()
        self.out = nn.Linear(hidden, num_tags)

    def forward(self, h, tag=None):
        logits = self.out(h)
        return logits if tag is None else F.cross_entropy(logits, tag, reduction="none")


class NestedRNN(nn.Module):
    """``forward(words)`` -> per-token logits; ``loss((words, tags))`` -> per-token losses.
    ``words``: a list of words, each a non-empty list of character ids."""

    def __init__(self, num_chars: int, hidden: int = 256, char_dim: int = 64,
                 num_tags: int = len(data.UPOS_TAGS)):
        super().__init__()
        self.hidden = hidden
        self.char_embed = Embed(num_chars, char_dim)
        self.char_step = LSTMStep(char_dim, hidden)
        self.word_step = LSTMStep(hidden, hidden)
        self.scorer = TokenScorer(hidden, num_tags)
        self.register_buffer("h0", torch.zeros(hidden), persistent=False)

    def states(self, words):
        states = []
        h = c = self.h0
        for chars in words:
            char_h = char_c = self.h0
            for char in chars:
                char_h, char_c = self.char_step(self.char_embed(char), char_h, char_c)
            h, c = self.word_step(char_h, h, c)
            states.append(h)
        return states

    def forward(self, words):
        return [self.scorer(h) for h in self.states(words)]

    def loss(self, example):
        words, tags = example
        return [self.scorer(h, t) for h, t in zip(self.states(words), tags, strict=True)]


def ewt_examples(split: str = "dev", max_sentences: int | None = None):
    """``([(words as character-id lists, UPOS ids)], character vocab)`` from the shipped EWT
    treebank; characters keep their case."""
    sentences = data.load_sentences(split, max_sentences)
    chars = data.Vocab.build((ch for s in sentences for w in s.words for ch in w), lowercase=False)
    examples = [([chars.encode(list(w)) for w in s.words], data.UPOS.encode(s.upos)) for s in sentences]
    return examples, chars


def _lstm_params(step: LSTMStep) -> dict[str, torch.Tensor]:
    cell_ = step.lstm
    return {"weight_ih_l0": cell_.weight_ih, "weight_hh_l0": cell_.weight_hh,
            "bias_ih_l0": cell_.bias_ih, "bias_hh_l0": cell_.bias_hh}


class ManualNestedRNN:
    """Hand-batched baseline on ``model``'s own parameters: one character-embedding lookup for the
    whole batch, one packed ``nn.LSTM`` over every word's characters (its final states are the word
    inputs), one packed ``nn.LSTM`` over the sentences, one scorer call."""

    def __init__(self, model: NestedRNN):
        self.model = model
        char_dim = model.char_embed.table.embedding_dim
        self.char_lstm = nn.LSTM(char_dim, model.hidden)     # structure only: weights come from model
        self.word_lstm = nn.LSTM(model.hidden, model.hidden)

    def __call__(self, sentences, tags=None):
        """Per-token logits [total tokens, tags] in sentence order, or per-token losses."""
        m = self.model
        if not sentences:
            return torch.zeros(0, m.scorer.out.out_features) if tags is None else torch.zeros(0)
        words = [w for s in sentences for w in s]
        lengths = [len(w) for w in words]
        embedded = m.char_embed.table(torch.tensor([ch for w in words for ch in w])).split(lengths)
        packed = pack_sequence(list(embedded), enforce_sorted=False)
        _, (word_inputs, _) = functional_call(self.char_lstm, _lstm_params(m.char_step), (packed,))
        per_sentence = word_inputs[0].split([len(s) for s in sentences])
        packed = pack_sequence(list(per_sentence), enforce_sorted=False)
        out, sizes = pad_packed_sequence(functional_call(self.word_lstm, _lstm_params(m.word_step), (packed,))[0])
        states = torch.cat([out[:n, i] for i, n in enumerate(sizes.tolist())])
        logits = m.scorer.out(states)
        if tags is None:
            return logits
        return F.cross_entropy(logits, torch.tensor([t for ts in tags for t in ts]), reduction="none")
