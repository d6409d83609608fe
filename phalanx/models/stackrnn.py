"""StackRNN: a shift-reduce parser written for ONE sentence, whose actions come from its own softmax.

The state is a stack of phrase vectors and a buffer of word vectors. While both SHIFT and REDUCE
are legal, a policy layer reads (stack top, second, next word) and the argmax picks the action:
tensor-dependent control flow, one fiber decision per choice (runtime/fibers.py). SHIFT pushes
the next word; REDUCE pops two phrases and pushes their composition. The final phrase is
classified (task: the UPOS tag of the sentence's root word, EWT). Sentences take different
numbers of decisions and build different trees, which is what makes batching them hard.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..frontend.cell import cell

SHIFT, REDUCE = 0, 1


@cell
class Embed(nn.Module):
    def __init__(self, vocab_size: int, hidden: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, word):
        return torch.tanh(self.proj(self.table(word)))


@cell
class Compose(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.mix = nn.Linear(2 * hidden, hidden)

    def forward(self, left, right):
        return torch.tanh(self.mix(torch.cat([left, right], dim=-1)))


@cell
class Policy(nn.Module):
    """(stack top, second, next word) -> logits over (SHIFT, REDUCE)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Linear(3 * hidden, 2)

    def forward(self, top, second, word):
        return self.score(torch.cat([top, second, word], dim=-1))


@cell
class Classify(nn.Module):
    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.out = nn.Linear(hidden, classes)

    def forward(self, phrase):
        return self.out(phrase)


class StackRNN(nn.Module):
    """``forward(words) -> (class logits, actions taken)``; ``loss((words, label))``."""

    def __init__(self, vocab_size: int, hidden: int = 256, classes: int = len(data.UPOS_TAGS)):
        super().__init__()
        self.embed = Embed(vocab_size, hidden)
        self.compose = Compose(hidden)
        self.policy = Policy(hidden)
        self.classify = Classify(hidden, classes)
        self.register_buffer("empty", torch.zeros(hidden), persistent=False)

    def forward(self, words):
        if not words:
            raise ValueError("an empty sentence has no parse")
        buffer = [self.embed(w) for w in words]
        buffer.reverse()                   # pop() takes the next word
        stack, actions = [], []
        while buffer or len(stack) > 1:
            if len(stack) < 2:
                action = SHIFT
            elif not buffer:
                action = REDUCE
            else:                          # both legal: the model decides (a fiber decision)
                logits = self.policy(stack[-1], stack[-2], buffer[-1])
                action = int(logits.argmax())
            actions.append(action)
            if action == SHIFT:
                stack.append(buffer.pop())
            else:
                right, left = stack.pop(), stack.pop()
                stack.append(self.compose(left, right))
        return self.classify(stack[0]), torch.tensor(actions)

    def loss(self, example):
        words, label = example
        logits, _ = self(words)
        return F.cross_entropy(logits, torch.tensor(label))


def ewt_examples(split: str = "dev", max_len: int = 64, max_sentences: int | None = None):
    """``([(word ids, UPOS id of the root word)], vocab)`` from the shipped EWT treebank."""
    sentences = [s for s in data.load_sentences(split) if len(s) <= max_len][:max_sentences]
    vocab = data.Vocab.build((w for s in sentences for w in s.words), lowercase=True)
    return [(vocab.encode(s.words), data.UPOS.lookup(s.upos[s.heads.index(0)])) for s in sentences], vocab
