"""Training tasks on the shipped UD English EWT files: splits, models, losses, accuracy, baseline.

Only the EWT dev and test files ship (``phalanx/data/ud``), so the splits are:

- ``train``: EWT dev without every 10th sentence (1,801 sentences);
- ``dev``:   every 10th EWT dev sentence (index % 10 == 9; 200 sentences), for model selection;
- ``test``:  EWT test as it is (2,077 sentences), touched only for the final accuracy.

The word vocabulary is built from ``train`` alone (lowercased, words seen at least twice; the rest
map to ``<unk>``, so the model learns an ``<unk>`` embedding it will need on unseen test words).

Tasks:
- ``tagger``: UPOS of every token (BiLSTM tagger); accuracy over tokens.
- ``treelstm``: UPOS of the sentence's dependency root, from the root state of the binarized
  tree (binary TreeLSTM); accuracy over sentences.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .. import data
from ..data.conllu import Sentence
from ..models.tagger import BiLSTMTagger
from ..models.treelstm import TreeLSTM

DEV_EVERY = 10     # every 10th EWT dev sentence is held out for model selection
MIN_WORD_FREQ = 2


@dataclass
class Task:
    """One model on EWT. Examples are ``(input, target)``; ``target`` is an int (one label per
    example) or a list of ints (one per token). ``loss_terms`` counts the per-instance loss terms
    an example contributes (1, or its tokens), so losses are averaged over terms."""

    name: str
    vocab: data.Vocab
    train: list
    dev: list
    test: list
    make_model: Callable[[int, int], nn.Module]     # (vocab size, hidden) -> model
    num_classes: int

    def build_model(self, hidden: int) -> nn.Module:
        return self.make_model(len(self.vocab), hidden)

    @staticmethod
    def labels(example) -> list[int]:
        target = example[1]
        return list(target) if isinstance(target, (list, tuple)) else [target]

    def loss_terms(self, examples) -> int:
        return sum(len(self.labels(x)) for x in examples)

    def majority_class(self) -> int:
        """The most frequent label in ``train`` (ties: the smaller id)."""
        counts = Counter(y for x in self.train for y in self.labels(x))
        return min(counts, key=lambda y: (-counts[y], y))

    def majority_accuracy(self, examples) -> float:
        """Accuracy of always predicting ``train``'s most frequent label."""
        majority = self.majority_class()
        gold = [y for x in examples for y in self.labels(x)]
        return sum(y == majority for y in gold) / len(gold) if gold else 0.0


def split_dev(sentences: list[Sentence]) -> tuple[list[Sentence], list[Sentence]]:
    """(train, dev) from EWT dev: every ``DEV_EVERY``-th sentence goes to dev (deterministic)."""
    train = [s for i, s in enumerate(sentences) if i % DEV_EVERY != DEV_EVERY - 1]
    dev = [s for i, s in enumerate(sentences) if i % DEV_EVERY == DEV_EVERY - 1]
    return train, dev


def _splits(max_sentences: int | None):
    train, dev = split_dev(data.load_sentences("dev"))
    test = data.load_sentences("test")
    if max_sentences is not None:   # small runs (tests): cap every split
        train, dev, test = train[:max_sentences], dev[:max_sentences], test[:max_sentences]
    vocab = data.Vocab.build((w for s in train for w in s.words), min_freq=MIN_WORD_FREQ, lowercase=True)
    return train, dev, test, vocab


def tagger_task(max_sentences: int | None = None) -> Task:
    train, dev, test, vocab = _splits(max_sentences)

    def encode(sentences):
        return [(vocab.encode(s.words), data.UPOS.encode(s.upos)) for s in sentences]

    return Task("tagger", vocab, encode(train), encode(dev), encode(test),
                lambda vocab_size, hidden: BiLSTMTagger(vocab_size, hidden), len(data.UPOS_TAGS))


def treelstm_task(max_sentences: int | None = None) -> Task:
    train, dev, test, vocab = _splits(max_sentences)
    deprels = data.Vocab.build((r for s in train for r in s.deprels), lowercase=False, pad_token=None)

    def encode(sentences):
        return [(data.binarize(s, vocab, deprels), data.UPOS[s.upos[s.heads.index(0)]]) for s in sentences]

    return Task("treelstm", vocab, encode(train), encode(dev), encode(test),
                lambda vocab_size, hidden: TreeLSTM(vocab_size, hidden), len(data.UPOS_TAGS))


TASKS: dict[str, Callable[..., Task]] = {"tagger": tagger_task, "treelstm": treelstm_task}


def predictions(logits: Any) -> list[int]:
    """Predicted class ids of one example's result: a logits tensor or a list of per-token logits."""
    if isinstance(logits, (list, tuple)):
        return torch.stack(list(logits)).argmax(-1).tolist() if logits else []
    return [int(logits.argmax(-1))]


def flat_losses(results) -> list[torch.Tensor]:
    """Every per-instance loss term of a batch's results (a scalar or a list per example)."""
    return [t for r in results for t in (r if isinstance(r, (list, tuple)) else [r])]
