"""Minimal CoNLL-U reader: tokens, UPOS tags and basic dependency trees.

Only the columns phalanx needs are kept (FORM, UPOS, HEAD, DEPREL). Multiword-token
lines (ID ``1-2``) and empty nodes (ID ``1.1``) are skipped, as they are not part of
the basic dependency tree. Every returned sentence is checked to be a well-formed tree:
token IDs run 1..n, heads lie in 0..n, exactly one token has head 0, and every token
reaches the root (no cycles). Malformed input raises ``ValueError`` naming the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

_NUM_COLUMNS = 10
_ID, _FORM, _UPOS, _HEAD, _DEPREL = 0, 1, 3, 6, 7


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence of a treebank.

    All tuples have one entry per token. ``heads[i]`` is the 1-based index of token
    ``i``'s head, or 0 for the root; ``deprels[i]`` is the relation of token ``i`` to
    that head (subtypes such as ``nmod:poss`` are kept whole).
    """

    words: tuple[str, ...]
    upos: tuple[str, ...]
    heads: tuple[int, ...]
    deprels: tuple[str, ...]
    sent_id: str

    def __post_init__(self) -> None:
        n = len(self.words)
        if not (len(self.upos) == len(self.heads) == len(self.deprels) == n):
            raise ValueError(
                f"sentence {self.sent_id!r}: words/upos/heads/deprels lengths differ "
                f"({n}, {len(self.upos)}, {len(self.heads)}, {len(self.deprels)})"
            )

    def __len__(self) -> int:
        return len(self.words)


def _is_natural(field: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as "²", which int() rejects.
    return field.isascii() and field.isdigit()


def tree_error(heads: Sequence[int]) -> tuple[int, str] | None:
    """Check that ``heads`` (1-based, 0 = root) forms a single tree.

    Returns ``None`` for a valid tree, else ``(token_index, message)`` where
    ``token_index`` is the 0-based position of an offending token.
    """
    n = len(heads)
    if n == 0:
        return (0, "sentence has no tokens")
    roots = []
    for i, head in enumerate(heads):
        if not 0 <= head <= n:
            return (i, f"HEAD {head} outside 0..{n}")
        if head == i + 1:
            return (i, "token is its own head")
        if head == 0:
            roots.append(i)
    if len(roots) != 1:
        where = roots[1] if roots else 0
        return (where, f"expected exactly one root (HEAD 0), found {len(roots)}")
    # Walk each token up to the root; tokens already known to reach it stop a walk
    # early, so the whole check is linear in the sentence length.
    reaches_root = [False] * (n + 1)
    reaches_root[0] = True
    for start in range(1, n + 1):
        path = []
        node = start
        on_path = set()
        while not reaches_root[node]:
            if node in on_path:
                return (start - 1, "dependency cycle (token does not reach the root)")
            on_path.add(node)
            path.append(node)
            node = heads[node - 1]
        for visited in path:
            reaches_root[visited] = True
    return None


def parse_conllu(text: str, *, source: str = "<string>") -> list[Sentence]:
    """Parse CoNLL-U ``text`` into sentences, in file order.

    ``sent_id`` comes from the ``# sent_id = ...`` comment; a sentence without one gets
    its 1-based position in the text (as a string). ``source`` only labels error
    messages. Raises ``ValueError("<source> line N: ...")`` on malformed input.
    """
    sentences: list[Sentence] = []
    rows: list[list[str]] = []
    row_lines: list[int] = []
    sent_id: str | None = None

    def fail(line_number: int, message: str) -> ValueError:
        return ValueError(f"{source} line {line_number}: {message}")

    def finish_sentence() -> None:
        nonlocal sent_id
        if rows:
            heads = tuple(int(row[_HEAD]) for row in rows)
            problem = tree_error(heads)
            if problem is not None:
                token_index, message = problem
                raise fail(row_lines[token_index], message)
            sentences.append(
                Sentence(
                    words=tuple(row[_FORM] for row in rows),
                    upos=tuple(row[_UPOS] for row in rows),
                    heads=heads,
                    deprels=tuple(row[_DEPREL] for row in rows),
                    sent_id=sent_id if sent_id is not None else str(len(sentences) + 1),
                )
            )
        rows.clear()
        row_lines.clear()
        sent_id = None

    if text.startswith("\ufeff"):  # tolerate a UTF-8 byte-order mark
        text = text[1:]
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            finish_sentence()
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            if sep and key.strip() == "sent_id":
                sent_id = value.strip()
            continue
        fields = line.split("\t")
        if len(fields) != _NUM_COLUMNS:
            raise fail(line_number, f"expected {_NUM_COLUMNS} tab-separated fields, got {len(fields)}")
        token_id = fields[_ID]
        if "-" in token_id or "." in token_id:
            continue  # multiword token or empty node: not part of the basic tree
        if not _is_natural(token_id) or int(token_id) != len(rows) + 1:
            raise fail(line_number, f"expected token ID {len(rows) + 1}, got {token_id!r}")
        if not _is_natural(fields[_HEAD]):
            raise fail(line_number, f"HEAD must be a non-negative integer, got {fields[_HEAD]!r}")
        for column, name in ((_FORM, "FORM"), (_UPOS, "UPOS"), (_DEPREL, "DEPREL")):
            if not fields[column]:
                raise fail(line_number, f"empty {name} field")
        rows.append(fields)
        row_lines.append(line_number)
    finish_sentence()
    return sentences


def read_conllu(path: str | Path) -> list[Sentence]:
    """Read and parse a UTF-8 CoNLL-U file; errors name the file and line."""
    path = Path(path)
    return parse_conllu(path.read_text(encoding="utf-8"), source=str(path))
