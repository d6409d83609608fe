"""Character lattices: word spans from a lexicon, lattice validation, and the Chinese UD loader
(jieba lexicon, gold word-begin labels, awkward CoNLL-U lines)."""
import pytest

from phalanx.data import parse_conllu
from phalanx.data.lattice import Lattice, build_lattice, word_spans
from tests.models.zoo_checks import requires_jieba, row


def test_word_spans_finds_lexicon_words_up_to_max_length():
    lexicon = {"ab", "abc", "bcd", "abcde", "x"}
    assert word_spans("abcde", lexicon, 4) == [(0, 2), (0, 3), (1, 4)]       # abcde is too long, x too short
    assert word_spans("abcde", lexicon, 5) == [(0, 2), (0, 3), (1, 4), (0, 5)]
    assert word_spans("", lexicon, 4) == []


def test_build_lattice_adds_word_arcs_to_the_character_chain():
    lat = build_lattice([5, 6, 7, 8], [(0, 2), (0, 3), (1, 4)], [1, 0, 0, 1])
    assert lat.preds == ((0,), (0, 1), (0, 2), (1, 3))
    assert lat.num_word_arcs == 3 and len(lat) == 4


@pytest.mark.parametrize("spans", [[(0, 1)], [(2, 6)], [(-1, 2)]])
def test_build_lattice_rejects_bad_spans(spans):
    with pytest.raises(ValueError, match="word span"):
        build_lattice([1, 2, 3, 4], spans, [0] * 4)


def test_lattice_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="lengths differ"):
        Lattice((1, 2), ((0,),), (0, 0))
    with pytest.raises(ValueError, match="node 2"):
        Lattice((1, 2), ((0,), (0,)), (0, 0))          # node 2 lacks its character arc from node 1


def test_chinese_sentence_text_and_labels_skip_multiword_tokens_and_empty_nodes():
    from phalanx.data.chinese import sentence_text_and_labels

    text = "\n".join(["# sent_id = zh-1", row("1", "中国", "PROPN", "3", "nsubj"), row("1.1", "X", "X", "_", "_"),
                      row("2-3", "发展很", "_", "_", "_"), row("2", "发展", "VERB", "0", "root"),
                      row("3", "很", "ADV", "2", "advmod"), row("4", "快", "ADJ", "2", "xcomp"), ""])
    (sentence,) = parse_conllu(text)
    assert sentence_text_and_labels(sentence) == ("中国发展很快", [1, 0, 1, 0, 1, 1])


@requires_jieba
def test_shipped_chinese_sources_become_lattices_with_jieba_arcs():
    from phalanx.data.chinese import SOURCES, jieba_lexicon, load_chinese_sentences, load_lattices

    assert {"中国", "发展"} <= jieba_lexicon()
    assert [len(load_chinese_sentences(s)) for s in SOURCES] == [500, 500, 250]
    lattices, chars = load_lattices(("gsdsimp-dev",), 20)
    sentences = load_chinese_sentences("gsdsimp-dev")[:20]
    assert len(lattices) == 20
    for lat, sentence in zip(lattices, sentences, strict=True):
        text = "".join(sentence.words)
        assert [chars.tokens[c] for c in lat.chars] == list(text)
        assert sum(lat.labels) == len(sentence) and lat.labels[0] == 1
    assert sum(lat.num_word_arcs for lat in lattices) > 20
    again, _ = load_lattices(("gsdsimp-dev",), 20)
    assert again == lattices                         # cached per process: same lattices again
    with pytest.raises(ValueError, match="unknown Chinese source"):
        load_lattices(("nope",))
