"""Word lattices over a character sequence, for Lattice-LSTM / Lattice-GRU models.

A lattice over ``n`` characters has ``n + 1`` nodes: node 0 is the start, node ``i`` (1..n) is
the position after character ``i - 1``. Two kinds of arcs end at node ``i``: the character arc
``i - 1 -> i`` (always there) and one word arc ``s -> i`` for every lexicon word that spans
characters ``s .. i - 1`` (at least two characters). A model computes node ``i`` from character
``i - 1`` and the states of its predecessors (the arcs' start nodes), as the lattice-LSTM
literature does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Sequence


@dataclass(frozen=True, slots=True)
class Lattice:
    """``chars[i]``: id of character ``i``. ``preds[i]``: the predecessor nodes of node ``i + 1``,
    ascending, always ending with ``i`` (the character arc). ``labels[i]``: a per-character target
    (for Chinese UD: 1 where a gold word begins, else 0)."""

    chars: tuple[int, ...]
    preds: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.chars)
        if len(self.preds) != n or len(self.labels) != n:
            raise ValueError(f"lattice: chars/preds/labels lengths differ ({n}, {len(self.preds)}, {len(self.labels)})")
        for i, preds in enumerate(self.preds):
            if not preds or preds[-1] != i or any(not 0 <= p < i + 1 for p in preds) or list(preds) != sorted(set(preds)):
                raise ValueError(f"lattice: node {i + 1} has predecessors {preds}; expected distinct ascending "
                                 f"nodes in 0..{i} ending with {i} (the character arc)")

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def num_word_arcs(self) -> int:
        return sum(len(p) - 1 for p in self.preds)


def word_spans(text: str, lexicon: AbstractSet[str], max_word_len: int) -> list[tuple[int, int]]:
    """``(start, end)`` character spans (end exclusive) of every lexicon word of 2..``max_word_len``
    characters that occurs in ``text``, in order of ``end`` then ``start``."""
    spans = []
    for end in range(2, len(text) + 1):
        for start in range(max(0, end - max_word_len), end - 1):
            if text[start:end] in lexicon:
                spans.append((start, end))
    return spans


def build_lattice(char_ids: Sequence[int], spans: Sequence[tuple[int, int]], labels: Sequence[int]) -> Lattice:
    """A lattice from character ids and word spans (``(start, end)``, end exclusive, >= 2 chars)."""
    n = len(char_ids)
    preds: list[set[int]] = [{i} for i in range(n)]
    for start, end in spans:
        if not 0 <= start < end - 1 < n:
            raise ValueError(f"lattice: word span ({start}, {end}) outside 0..{n} or shorter than 2 characters")
        preds[end - 1].add(start)
    return Lattice(tuple(char_ids), tuple(tuple(sorted(p)) for p in preds), tuple(labels))
