"""Loaders over the English Web Treebank files shipped in ``phalanx/data/ud``.

Splits: ``"dev"`` (2,001 sentences), ``"test"`` (2,077) and ``"all"`` (dev then test).
Parsed files are cached for the life of the process because benchmarks and tests load
them repeatedly; callers always get fresh lists, so mutating a result cannot corrupt
the cache (``Sentence`` itself is frozen).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

from .conllu import Sentence, parse_conllu
from .trees import Tree, binarize, dependency_tree
from .vocab import UPOS, Vocab

Split = Literal["dev", "test", "all"]

_FILES = {"dev": ("en_ewt-ud-dev.conllu",), "test": ("en_ewt-ud-test.conllu",)}
_FILES["all"] = _FILES["dev"] + _FILES["test"]


@lru_cache(maxsize=None)
def _parse_shipped(filename: str) -> tuple[Sentence, ...]:
    text = resources.files(__package__).joinpath("ud", filename).read_text(encoding="utf-8")
    return tuple(parse_conllu(text, source=filename))


def load_sentences(split: Split = "dev", max_sentences: int | None = None) -> list[Sentence]:
    """Sentences of ``split`` in file order, at most ``max_sentences`` of them."""
    try:
        filenames = _FILES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_FILES)}") from None
    if max_sentences is not None and max_sentences < 0:
        raise ValueError(f"max_sentences must be >= 0, got {max_sentences}")
    sentences = [s for filename in filenames for s in _parse_shipped(filename)]
    return sentences[:max_sentences]


def load_treebank(
    split: Split = "dev", binary: bool = True, max_sentences: int | None = None
) -> tuple[list[Tree], Vocab, Vocab]:
    """Trees of ``split`` with the vocabularies that index them.

    ``binary=True`` gives ``binarize`` trees (binary TreeLSTM), ``False`` gives
    ``dependency_tree`` trees (child-sum TreeLSTM). The word vocabulary is built from
    the loaded sentences, lowercased, with ``<unk>``=0 and ``<pad>``=1; the label
    vocabulary holds their dependency relations with ``<unk>``=0 and no padding.
    """
    sentences = load_sentences(split, max_sentences)
    vocab = Vocab.build((w for s in sentences for w in s.words), lowercase=True)
    label_vocab = Vocab.build(
        (r for s in sentences for r in s.deprels), lowercase=False, pad_token=None
    )
    build = binarize if binary else dependency_tree
    return [build(s, vocab, label_vocab) for s in sentences], vocab, label_vocab


def load_root_examples(
    split: Split = "dev", binary: bool = True, max_sentences: int | None = None
) -> tuple[list[tuple[Tree, int]], Vocab, Vocab]:
    """``(tree, UPOS id of the sentence's root)`` pairs of ``split`` (the tree models' task), with
    the word and relation vocabularies of ``load_treebank``."""
    sentences = load_sentences(split, max_sentences)
    trees, vocab, label_vocab = load_treebank(split, binary=binary, max_sentences=max_sentences)
    labels = [UPOS[s.upos[s.heads.index(0)]] for s in sentences]
    return list(zip(trees, labels, strict=True)), vocab, label_vocab


def load_tagging(
    split: Split = "dev", max_sentences: int | None = None
) -> tuple[list[tuple[list[int], list[int]]], Vocab, Vocab]:
    """UPOS tagging examples ``(word_ids, tag_ids)``, one per sentence.

    Word ids come from a lowercased vocabulary of the loaded sentences (``<unk>``=0,
    ``<pad>``=1); tag ids index the fixed 17-tag ``UPOS`` inventory (0..16).
    """
    sentences = load_sentences(split, max_sentences)
    vocab = Vocab.build((w for s in sentences for w in s.words), lowercase=True)
    examples = [(vocab.encode(s.words), UPOS.encode(s.upos)) for s in sentences]
    return examples, vocab, UPOS
