"""String-to-id vocabularies, and the fixed inventory of the 17 UD UPOS tags.

A ``Vocab`` is immutable once built. Open vocabularies (words, dependency relations)
have an ``<unk>`` token at id 0 that every unknown string maps to; word vocabularies
also reserve ``<pad>`` at id 1 for padded batches. Closed vocabularies (``UPOS``) have
no specials, so ids are dense class indices and an unknown string is an error.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterable, Iterator

UNK = "<unk>"
PAD = "<pad>"

# The 17 universal part-of-speech tags of UD v2, in the order of the UD documentation.
UPOS_TAGS: tuple[str, ...] = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)


class Vocab:
    """Bijection between strings and ids ``0..len-1``.

    Ids are assigned in order: ``unk_token`` (if any), ``pad_token`` (if any), then the
    regular tokens. With ``lowercase=True`` every string is lowercased both when the
    vocabulary is built and when it is looked up.
    """

    __slots__ = ("_itos", "_stoi", "unk_token", "pad_token", "lowercase")

    def __init__(
        self,
        tokens: Iterable[str],
        *,
        unk_token: str | None = UNK,
        pad_token: str | None = PAD,
        lowercase: bool = False,
    ) -> None:
        self.unk_token = unk_token
        self.pad_token = pad_token
        self.lowercase = lowercase
        specials = [token for token in (unk_token, pad_token) if token is not None]
        regular = [token.lower() if lowercase else token for token in tokens]
        self._itos: tuple[str, ...] = tuple(specials + regular)
        self._stoi: dict[str, int] = {token: index for index, token in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            duplicates = sorted(t for t, c in Counter(self._itos).items() if c > 1)
            raise ValueError(f"duplicate vocabulary tokens: {duplicates[:10]}")

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        min_freq: int = 1,
        lowercase: bool = True,
        *,
        unk_token: str | None = UNK,
        pad_token: str | None = PAD,
    ) -> Vocab:
        """Vocabulary of the tokens seen at least ``min_freq`` times.

        Regular tokens are ordered by decreasing frequency, ties alphabetically, so the
        result depends only on the multiset of tokens. Tokens equal to a special are
        not added twice.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        counts = Counter(token.lower() if lowercase else token for token in tokens)
        for special in (unk_token, pad_token):
            counts.pop(special, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(kept, unk_token=unk_token, pad_token=pad_token, lowercase=lowercase)

    # -- lookup ---------------------------------------------------------------------

    @property
    def unk_id(self) -> int | None:
        return None if self.unk_token is None else self._stoi[self.unk_token]

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self._stoi[self.pad_token]

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens, specials included, indexed by id."""
        return self._itos

    def __len__(self) -> int:
        return len(self._itos)

    def __iter__(self) -> Iterator[str]:
        return iter(self._itos)

    def __contains__(self, token: object) -> bool:
        if not isinstance(token, str):
            return False
        return (token.lower() if self.lowercase else token) in self._stoi

    def __getitem__(self, token: str) -> int:
        """Id of ``token``; ``unk_id`` if unknown, ``KeyError`` for closed vocabularies."""
        index = self._stoi.get(token.lower() if self.lowercase else token)
        if index is not None:
            return index
        if self.unk_token is None:
            raise KeyError(f"{token!r} is not in this closed vocabulary")
        return self._stoi[self.unk_token]

    def lookup(self, token: str) -> int:
        """Same as ``vocab[token]``."""
        return self[token]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of a token sequence."""
        return [self[token] for token in tokens]

    def token(self, index: int) -> str:
        """The string with id ``index`` (``IndexError`` if out of range)."""
        if not 0 <= index < len(self._itos):
            raise IndexError(f"id {index} outside 0..{len(self._itos) - 1}")
        return self._itos[index]

    # -- serialization and comparison -----------------------------------------------

    def to_json(self) -> str:
        """JSON text from which ``Vocab.from_json`` rebuilds an equal vocabulary."""
        specials = sum(token is not None for token in (self.unk_token, self.pad_token))
        return json.dumps(
            {
                "tokens": list(self._itos[specials:]),
                "unk_token": self.unk_token,
                "pad_token": self.pad_token,
                "lowercase": self.lowercase,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        return cls(
            data["tokens"],
            unk_token=data["unk_token"],
            pad_token=data["pad_token"],
            lowercase=data["lowercase"],
        )

    def _key(self) -> tuple:
        return (self._itos, self.unk_token, self.pad_token, self.lowercase)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        preview = ", ".join(self._itos[:6])
        more = ", ..." if len(self._itos) > 6 else ""
        return f"Vocab(size={len(self)}, lowercase={self.lowercase}, tokens=[{preview}{more}])"


# Closed tag set for tagging targets: ids 0..16 in UPOS_TAGS order, no <unk>/<pad>.
UPOS = Vocab(UPOS_TAGS, unk_token=None, pad_token=None, lowercase=False)
