"""CoNLL-U parsing, vocabularies and the shipped EWT loaders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from phalanx.data import (
    UPOS,
    UPOS_TAGS,
    Sentence,
    Vocab,
    load_sentences,
    load_tagging,
    parse_conllu,
    read_conllu,
)

SHIPPED = Path(__file__).resolve().parents[2] / "phalanx" / "data" / "ud"
SOURCE = Path("/work/shared/data/ud")


def row(token_id: str, form: str, upos: str, head: str, deprel: str) -> str:
    return "\t".join([token_id, form, form.lower(), upos, "_", "_", head, deprel, "_", "_"])


SAMPLE = "\n".join(
    [
        "# newdoc id = d1",
        "# sent_id = s-1",
        "# text = I don't know.",
        row("1", "I", "PRON", "4", "nsubj"),
        row("2-3", "don't", "_", "_", "_"),
        row("2", "do", "AUX", "4", "aux"),
        row("3", "n't", "PART", "4", "advmod"),
        row("4", "know", "VERB", "0", "root"),
        row("4.1", "know", "VERB", "_", "_"),
        row("5", ".", "PUNCT", "4", "punct"),
        "",
        row("1", "Hi", "INTJ", "0", "root"),
        "",
        "",
    ]
)


def test_parse_skips_multiword_tokens_and_empty_nodes() -> None:
    first, second = parse_conllu(SAMPLE)
    assert first == Sentence(
        words=("I", "do", "n't", "know", "."),
        upos=("PRON", "AUX", "PART", "VERB", "PUNCT"),
        heads=(4, 4, 4, 0, 4),
        deprels=("nsubj", "aux", "advmod", "root", "punct"),
        sent_id="s-1",
    )
    # No "# sent_id" comment: the 1-based position in the text stands in.
    assert second.sent_id == "2"
    assert second.words == ("Hi",) and second.heads == (0,) and len(second) == 1


def test_parse_tolerates_missing_final_blank_line_and_crlf() -> None:
    text = "\r\n".join([row("1", "Yes", "INTJ", "0", "root"), row("2", "!", "PUNCT", "1", "punct")])
    (sentence,) = parse_conllu(text)
    assert sentence.words == ("Yes", "!")


def test_sentence_rejects_mismatched_columns() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        Sentence(words=("a", "b"), upos=("X",), heads=(0, 1), deprels=("root", "dep"), sent_id="x")


def lines_with(bad_line: str, before: list[str] | None = None) -> str:
    before = before if before is not None else [row("1", "ok", "X", "0", "root")]
    return "\n".join(["# sent_id = bad", *before, bad_line, ""])


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (lines_with("1\tonly\tthree"), 3, "expected 10 tab-separated fields, got 3"),
        (lines_with(row("x", "w", "X", "1", "dep")), 3, "expected token ID 2, got 'x'"),
        (lines_with(row("3", "w", "X", "1", "dep")), 3, "expected token ID 2, got '3'"),
        (lines_with(row("2", "w", "X", "_", "dep")), 3, "HEAD must be a non-negative integer"),
        (lines_with(row("2", "w", "X", "-1", "dep")), 3, "HEAD must be a non-negative integer"),
        (lines_with(row("2", "w", "X", "7", "dep")), 3, r"HEAD 7 outside 0\.\.2"),
        (lines_with(row("2", "w", "X", "2", "dep")), 3, "its own head"),
        (lines_with(row("2", "w", "X", "0", "root")), 3, "exactly one root"),
        (lines_with(row("2", "", "X", "1", "dep")), 3, "empty FORM"),
        (
            lines_with(row("3", "c", "X", "2", "dep"), before=[row("1", "a", "X", "0", "root"), row("2", "b", "X", "3", "dep")]),
            3,
            "cycle",
        ),
    ],
)
def test_malformed_input_names_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ValueError, match=rf"<string> line {line}: .*{message}"):
        parse_conllu(text)


def test_sentence_without_root_is_rejected() -> None:
    text = "\n".join([row("1", "a", "X", "2", "dep"), row("2", "b", "X", "1", "dep"), ""])
    with pytest.raises(ValueError, match="line 1: expected exactly one root"):
        parse_conllu(text)


def test_read_conllu_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.conllu"
    path.write_text(lines_with("not a token line"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.conllu line 3"):
        read_conllu(path)


# -- shipped EWT files ----------------------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("dev", 2001), ("test", 2077), ("all", 4078)])
def test_ewt_sentence_counts_match_readme(split: str, count: int) -> None:
    assert len(load_sentences(split)) == count


def test_read_conllu_agrees_with_cached_loader() -> None:
    assert read_conllu(SHIPPED / "en_ewt-ud-dev.conllu") == load_sentences("dev")


def test_loader_returns_fresh_lists_and_limits() -> None:
    first = load_sentences("dev")
    first.clear()
    assert len(load_sentences("dev")) == 2001
    assert load_sentences("all", max_sentences=5) == load_sentences("dev")[:5]
    with pytest.raises(ValueError, match="unknown split"):
        load_sentences("train")  # type: ignore[arg-type]


def test_ewt_uses_only_the_17_upos_tags() -> None:
    used = {tag for s in load_sentences("all") for tag in s.upos}
    assert used <= set(UPOS_TAGS)


@pytest.mark.skipif(not SOURCE.is_dir(), reason="source data folder not available")
@pytest.mark.parametrize("name", ["en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu", "LICENSE-en_ewt.txt"])
def test_shipped_files_are_unmodified(name: str) -> None:
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(SHIPPED / name) == digest(SOURCE / name)


def test_load_tagging_examples_align_with_sentences() -> None:
    examples, vocab, tags = load_tagging("dev", max_sentences=50)
    sentences = load_sentences("dev", max_sentences=50)
    assert tags is UPOS and len(examples) == 50
    for (word_ids, tag_ids), sentence in zip(examples, sentences):
        assert len(word_ids) == len(tag_ids) == len(sentence)
        assert [vocab.token(i) for i in word_ids] == [w.lower() for w in sentence.words]
        assert [UPOS_TAGS[i] for i in tag_ids] == list(sentence.upos)


# -- vocabularies -----------------------------------------------------------------------


def test_vocab_build_orders_by_frequency_and_lowercases() -> None:
    vocab = Vocab.build(["b", "A", "a", "c", "B", "a"], lowercase=True)
    assert vocab.tokens == ("<unk>", "<pad>", "a", "b", "c")
    assert (vocab.unk_id, vocab.pad_id) == (0, 1)
    assert vocab["A"] == vocab.lookup("a") == 2
    assert vocab["unseen"] == 0 and "unseen" not in vocab and "B" in vocab
    assert vocab.encode(["C", "zzz"]) == [4, 0]
    assert len(vocab) == 5


def test_vocab_min_freq_and_case_sensitivity() -> None:
    vocab = Vocab.build(["x", "x", "y", "X"], min_freq=2, lowercase=False)
    assert vocab.tokens == ("<unk>", "<pad>", "x")
    assert vocab["X"] == vocab.unk_id


def test_vocab_json_round_trip() -> None:
    vocab = Vocab.build(["Über", "naïve", "über"], lowercase=True, pad_token=None)
    restored = Vocab.from_json(vocab.to_json())
    assert restored == vocab and hash(restored) == hash(vocab)
    assert restored["ÜBER"] == vocab["über"] == 1


def test_vocab_rejects_duplicates_and_bad_ids() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(["a", "A"], lowercase=True)
    with pytest.raises(IndexError):
        Vocab.build(["a"]).token(3)


def test_upos_is_a_closed_dense_tag_set() -> None:
    assert len(UPOS) == 17 and UPOS.unk_id is None and UPOS.pad_id is None
    assert [UPOS[tag] for tag in UPOS_TAGS] == list(range(17))
    with pytest.raises(KeyError, match="closed vocabulary"):
        UPOS["NOT-A-TAG"]
