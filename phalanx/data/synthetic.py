"""Seeded synthetic workloads shaped like the English Web Treebank.

Every generator takes ``rng``: an ``int`` seed or a ``numpy.random.Generator``. The
same seed always gives the same output; a shared ``Generator`` advances, so successive
calls give fresh draws.

Sentence lengths follow ``1 + NegativeBinomial(r, p)`` clipped to ``[1, 120]``, with
``r`` and ``p`` matched to the mean and variance of the shipped EWT dev+test sentence
lengths (4,078 sentences: mean 12.32 tokens, std 10.51, median 9, max 81). It
reproduces the EWT length percentiles (5/10/25/50/75/90/95/99th: 1, 2, 5, 9, 17, 26,
33, 48) to within one token; a moment-matched lognormal was also tried and rejected
because its tail is far too heavy (99th percentile ~78).

Word ids are drawn uniformly from ``[FIRST_WORD_ID, vocab_size)`` so they never
collide with the ``<unk>`` (0) and ``<pad>`` (1) ids of a ``Vocab``; ``vocab_size``
has the meaning of ``len(vocab)``.
"""

from __future__ import annotations

import numpy as np

from .trees import NO_WORD, Tree

# 1 + NegBin(r, p) has mean 1 + r(1-p)/p = 12.32 and variance r(1-p)/p^2 = 10.51^2.
LENGTH_NEGBIN_R = 1.29
LENGTH_NEGBIN_P = 0.1024
MIN_LENGTH = 1
MAX_LENGTH = 120

FIRST_WORD_ID = 2  # ids 0 and 1 are <unk> and <pad> in word vocabularies


def as_generator(rng: int | np.random.Generator) -> np.random.Generator:
    """``rng`` itself if it is a Generator, else a new Generator seeded with it."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def sentence_lengths(n: int, rng: int | np.random.Generator) -> np.ndarray:
    """``n`` EWT-like sentence lengths (int64 array, values in ``[1, 120]``)."""
    rng = as_generator(rng)
    lengths = MIN_LENGTH + rng.negative_binomial(LENGTH_NEGBIN_R, LENGTH_NEGBIN_P, size=n)
    return np.clip(lengths, MIN_LENGTH, MAX_LENGTH).astype(np.int64)


def _word_ids(count: int, rng: np.random.Generator, vocab_size: int) -> list[int]:
    if vocab_size <= FIRST_WORD_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_WORD_ID} (ids 0, 1 are special), got {vocab_size}")
    return rng.integers(FIRST_WORD_ID, vocab_size, size=count).tolist()


def random_binary_tree(
    num_leaves: int, rng: int | np.random.Generator, vocab_size: int, num_labels: int = 1
) -> Tree:
    """A random strictly binary tree with ``num_leaves`` leaves.

    Shape: each internal node spanning ``k >= 2`` leaves splits them at a uniform
    point into ``j`` and ``k - j`` leaves (``1 <= j < k``), like a random binary
    search tree, so heights are mixed (expected O(log n), occasionally deep).
    Leaves carry random word ids; all nodes carry labels uniform in
    ``[0, num_labels)`` (all 0 by default). Internal nodes have ``word == -1``.
    """
    if num_leaves < 1:
        raise ValueError(f"num_leaves must be >= 1, got {num_leaves}")
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    rng = as_generator(rng)
    words = _word_ids(num_leaves, rng, vocab_size)
    split_draws = rng.random(num_leaves - 1).tolist()  # one per internal node
    labels = rng.integers(0, num_labels, size=2 * num_leaves - 1).tolist()

    # Iterative construction: a "span" task (first_leaf, count) expands into a node;
    # a "join" task pops two finished subtrees and combines them.
    finished: list[Tree] = []
    tasks: list[tuple[int, int]] = [(0, num_leaves)]  # count < 0 marks a join
    next_split = next_label = 0
    while tasks:
        first, count = tasks.pop()
        if count == 1:
            finished.append(Tree(words[first], (), labels[next_label]))
            next_label += 1
        elif count > 1:
            left = 1 + int(split_draws[next_split] * (count - 1))
            next_split += 1
            # Stack order: build left, then right, then join them.
            tasks.append((first, -1))
            tasks.append((first + left, count - left))
            tasks.append((first, left))
        else:
            right = finished.pop()
            left_tree = finished.pop()
            finished.append(Tree(NO_WORD, (left_tree, right), labels[next_label]))
            next_label += 1
    (root,) = finished
    return root


def random_trees(
    n: int, rng: int | np.random.Generator, vocab_size: int, num_labels: int = 1
) -> list[Tree]:
    """``n`` random binary trees whose leaf counts follow ``sentence_lengths``."""
    rng = as_generator(rng)
    return [
        random_binary_tree(int(length), rng, vocab_size, num_labels)
        for length in sentence_lengths(n, rng)
    ]


def random_chain(
    length: int, rng: int | np.random.Generator, vocab_size: int, num_tags: int
) -> tuple[list[int], list[int]]:
    """A random tagging example: ``length`` word ids and ``length`` tag ids in ``[0, num_tags)``."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if num_tags < 1:
        raise ValueError(f"num_tags must be >= 1, got {num_tags}")
    rng = as_generator(rng)
    return _word_ids(length, rng, vocab_size), rng.integers(0, num_tags, size=length).tolist()


def random_chains(
    n: int, rng: int | np.random.Generator, vocab_size: int, num_tags: int
) -> list[tuple[list[int], list[int]]]:
    """``n`` random tagging examples whose lengths follow ``sentence_lengths``."""
    rng = as_generator(rng)
    return [random_chain(int(length), rng, vocab_size, num_tags) for length in sentence_lengths(n, rng)]


# *** scaling families: n-ary trees, lattices and DAGs with several node kinds ***

def random_tree(
    num_nodes: int, rng: int | np.random.Generator, vocab_size: int, max_children: int = 4, num_labels: int = 1
) -> Tree:
    """A random ordered tree with ``num_nodes`` nodes, each carrying a word (like a dependency tree:
    internal nodes have words too) and at most ``max_children`` children.

    Shape: node ``i > 0`` attaches to a uniform earlier node that still has room (a random
    recursive tree), so arities vary from 0 (leaves) to ``max_children`` and heights are O(log n).
    """
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if max_children < 1:
        raise ValueError(f"max_children must be >= 1, got {max_children}")
    rng = as_generator(rng)
    words = _word_ids(num_nodes, rng, vocab_size)
    labels = rng.integers(0, num_labels, size=num_nodes).tolist()
    children: list[list[int]] = [[] for _ in range(num_nodes)]
    open_nodes = [0]                      # nodes with fewer than max_children children
    for node in range(1, num_nodes):
        k = int(rng.integers(0, len(open_nodes)))
        parent = open_nodes[k]
        children[parent].append(node)
        if len(children[parent]) == max_children:
            open_nodes[k] = open_nodes[-1]
            open_nodes.pop()
        open_nodes.append(node)
    nodes: list[Tree | None] = [None] * num_nodes
    for node in range(num_nodes - 1, -1, -1):     # children have larger ids than their parent
        nodes[node] = Tree(words[node], tuple(nodes[c] for c in children[node]), labels[node])  # type: ignore[misc]
    return nodes[0]  # type: ignore[return-value]


def random_nary_trees(
    n: int, rng: int | np.random.Generator, vocab_size: int, max_children: int = 4, num_labels: int = 1
) -> list[Tree]:
    """``n`` random n-ary trees whose node counts follow ``sentence_lengths``."""
    rng = as_generator(rng)
    return [random_tree(int(size), rng, vocab_size, max_children, num_labels) for size in sentence_lengths(n, rng)]


def random_lattice(
    length: int, rng: int | np.random.Generator, vocab_size: int, arc_prob: float = 0.35, max_span: int = 4,
    num_labels: int = 2,
):
    """A random ``Lattice`` over ``length`` characters: every span of 2..``max_span`` characters is
    a word arc with probability ``arc_prob / (span - 1)`` (longer words are rarer, as in a lexicon)."""
    from .lattice import build_lattice

    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    rng = as_generator(rng)
    chars = _word_ids(length, rng, vocab_size)
    spans = [(end - span, end) for end in range(2, length + 1) for span in range(2, min(max_span, end) + 1)
             if rng.random() < arc_prob / (span - 1)]
    return build_lattice(chars, spans, rng.integers(0, num_labels, size=length).tolist())


def random_lattices(n: int, rng: int | np.random.Generator, vocab_size: int, scale: float = 1.0, **options) -> list:
    """``n`` random lattices whose lengths are ``scale`` times ``sentence_lengths`` (at least 1)."""
    rng = as_generator(rng)
    return [random_lattice(max(1, int(length * scale)), rng, vocab_size, **options)
            for length in sentence_lengths(n, rng)]


class Dag:
    """A random DAG instance: node ``i`` has kind ``kinds[i]`` (which cell computes it), word
    ``words[i]`` and predecessors ``preds[i]`` (earlier nodes; empty only for node 0)."""

    __slots__ = ("kinds", "words", "preds")

    def __init__(self, kinds: tuple[int, ...], words: tuple[int, ...], preds: tuple[tuple[int, ...], ...]):
        self.kinds, self.words, self.preds = kinds, words, preds

    def __len__(self) -> int:
        return len(self.kinds)

    def __repr__(self) -> str:
        return f"Dag({len(self)} nodes, {sum(map(len, self.preds))} edges)"


def random_dag(
    num_nodes: int, rng: int | np.random.Generator, vocab_size: int, num_kinds: int = 3, max_preds: int = 3,
    window: int = 8,
) -> Dag:
    """A random DAG of ``num_nodes`` nodes with ``num_kinds`` node kinds: node ``i > 0`` reads
    1..``max_preds`` distinct nodes among the ``window`` before it (so depth grows with size)."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if num_kinds < 1 or max_preds < 1 or window < 1:
        raise ValueError(f"num_kinds, max_preds and window must be >= 1, got {num_kinds}, {max_preds}, {window}")
    rng = as_generator(rng)
    preds: list[tuple[int, ...]] = [()]
    for node in range(1, num_nodes):
        candidates = np.arange(max(0, node - window), node)
        count = int(rng.integers(1, min(max_preds, len(candidates)) + 1))
        preds.append(tuple(sorted(rng.choice(candidates, size=count, replace=False).tolist())))
    kinds = tuple(rng.integers(0, num_kinds, size=num_nodes).tolist())
    return Dag(kinds, tuple(_word_ids(num_nodes, rng, vocab_size)), tuple(preds))


def random_dags(n: int, rng: int | np.random.Generator, vocab_size: int, scale: float = 1.0, **options) -> list[Dag]:
    """``n`` random DAGs whose sizes are ``scale`` times ``sentence_lengths`` (at least 1)."""
    rng = as_generator(rng)
    return [random_dag(max(1, int(size * scale)), rng, vocab_size, **options) for size in sentence_lengths(n, rng)]
