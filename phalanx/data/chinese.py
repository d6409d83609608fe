"""Chinese UD sentences as character lattices, with word arcs from the jieba lexicon.

Sources (shipped in ``phalanx/data/ud``, CC BY-SA; see its README): ``"gsdsimp-dev"``,
``"gsdsimp-test"`` (UD Chinese GSDSimp, Simplified Chinese, 500 sentences each) and ``"pud"``
(the first 250 sentences of UD Chinese PUD, Traditional Chinese). A sentence's text is its
tokens joined without spaces; the per-character label is 1 where a gold UD word begins (a
word-segmentation target).

The lexicon is jieba's bundled ``dict.txt`` (349k words; jieba is MIT-licensed, ``pip install
jieba`` or ``phalanx[lattice]``), read from the installed package: nothing is downloaded. Lattices
are built at load time and cached for the life of the process (building one source takes about a
second, most of it reading the lexicon, which is cached too).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .conllu import Sentence, parse_conllu
from .lattice import Lattice, build_lattice, word_spans
from .vocab import Vocab

SOURCES = {"gsdsimp-dev": "zh_gsdsimp-ud-dev.conllu", "gsdsimp-test": "zh_gsdsimp-ud-test.conllu",
           "pud": "zh_pud-ud-test-first250.conllu"}
DEFAULT_MAX_WORD_LEN = 4


@lru_cache(maxsize=None)
def load_chinese_sentences(source: str) -> tuple[Sentence, ...]:
    try:
        filename = SOURCES[source]
    except KeyError:
        raise ValueError(f"unknown Chinese source {source!r}; expected one of {sorted(SOURCES)}") from None
    text = resources.files(__package__).joinpath("ud", filename).read_text(encoding="utf-8")
    return tuple(parse_conllu(text, source=filename))


@lru_cache(maxsize=None)
def jieba_lexicon() -> frozenset[str]:
    """Every word of jieba's ``dict.txt`` (lines ``word frequency [tag]``)."""
    # find_spec locates the package without importing it (jieba's import touches pkg_resources,
    # which newer setuptools warns about); only the data file is needed.
    spec = importlib.util.find_spec("jieba")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Chinese lattices need the jieba lexicon: pip install jieba "
                          "(or pip install 'phalanx[lattice]')")
    dict_file = Path(next(iter(spec.submodule_search_locations))) / "dict.txt"
    words = set()
    for line_number, line in enumerate(dict_file.read_text(encoding="utf-8").splitlines(), start=1):
        word = line.split(" ", 1)[0]
        if not word:
            raise ValueError(f"jieba dict.txt line {line_number}: empty word")
        words.add(word)
    return frozenset(words)


def sentence_text_and_labels(sentence: Sentence) -> tuple[str, list[int]]:
    """The sentence's characters and, per character, 1 where a gold word begins."""
    labels = [int(k == 0) for word in sentence.words for k in range(len(word))]
    return "".join(sentence.words), labels


@lru_cache(maxsize=None)
def _lattices(sources: tuple[str, ...], max_word_len: int) -> tuple[tuple[Lattice, ...], Vocab]:
    sentences = [s for source in sources for s in load_chinese_sentences(source)]
    texts = [sentence_text_and_labels(s) for s in sentences]
    vocab = Vocab.build((ch for text, _ in texts for ch in text), lowercase=False)
    lexicon = jieba_lexicon()
    lattices = tuple(build_lattice(vocab.encode(list(text)), word_spans(text, lexicon, max_word_len), labels)
                     for text, labels in texts)
    return lattices, vocab


def load_lattices(sources=("gsdsimp-dev", "gsdsimp-test", "pud"), max_sentences: int | None = None,
                  max_word_len: int = DEFAULT_MAX_WORD_LEN) -> tuple[list[Lattice], Vocab]:
    """Lattices of the sentences of ``sources`` (in order) and the character vocabulary (built from
    all of them; ``<unk>`` = 0, ``<pad>`` = 1). Cached per process by (sources, max_word_len)."""
    if isinstance(sources, str):
        sources = (sources,)
    if max_word_len < 2:
        raise ValueError(f"max_word_len must be >= 2, got {max_word_len}")
    lattices, vocab = _lattices(tuple(sources), max_word_len)
    return list(lattices[:max_sentences]), vocab
