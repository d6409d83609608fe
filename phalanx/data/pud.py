"""English -> German sentence pairs from the shipped PUD treebanks (``phalanx/data/ud``).

The two files hold the same 1,000 sentences, aligned by ``sent_id``. Word ids come from lowercased
vocabularies of the loaded pairs; the German vocabulary also holds ``<bos>`` and ``<eos>``.
"""
from __future__ import annotations

from .ewt import _parse_shipped
from .vocab import Vocab

BOS, EOS = "<bos>", "<eos>"


def load_pairs(max_len: int | None = None, max_pairs: int | None = None) -> tuple[list[tuple[list[int], list[int]]], Vocab, Vocab]:
    """``([(english ids, german ids)], english vocab, german vocab)``; pairs where either side is
    longer than ``max_len`` words are left out. German ids do not include ``<bos>`` / ``<eos>``."""
    english = _parse_shipped("en_pud-ud-test.conllu")
    german = {s.sent_id: s for s in _parse_shipped("de_pud-ud-test.conllu")}
    pairs = []
    for en in english:
        de = german.get(en.sent_id)
        if de is None:
            raise ValueError(f"en_pud-ud-test.conllu: sentence {en.sent_id!r} has no German counterpart")
        if max_len is None or max(len(en), len(de)) <= max_len:
            pairs.append((en.words, de.words))
    pairs = pairs[:max_pairs]
    src_vocab = Vocab.build((w for s, _ in pairs for w in s), lowercase=True)
    tgt_vocab = Vocab([BOS, EOS] + list(Vocab.build((w for _, t in pairs for w in t), lowercase=True).tokens[2:]),
                      lowercase=True)
    return [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs], src_vocab, tgt_vocab
