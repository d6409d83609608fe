"""Seeded synthetic workloads."""

from __future__ import annotations

import numpy as np
import pytest

from phalanx.data import (
    load_sentences,
    random_binary_tree,
    random_chain,
    random_chains,
    random_trees,
    sentence_lengths,
)
from phalanx.data.synthetic import FIRST_WORD_ID, MAX_LENGTH


def signatures(trees: list) -> list[tuple[int, ...]]:
    return [t.signature() for t in trees]


def test_same_seed_same_output() -> None:
    assert np.array_equal(sentence_lengths(100, 7), sentence_lengths(100, 7))
    assert signatures(random_trees(20, 7, 100)) == signatures(random_trees(20, 7, 100))
    assert random_chains(20, 7, 100, 17) == random_chains(20, 7, 100, 17)
    assert random_binary_tree(30, np.random.default_rng(3), 50).signature() == (
        random_binary_tree(30, 3, 50).signature()
    )


def test_shared_generator_advances() -> None:
    rng = np.random.default_rng(0)
    assert signatures(random_trees(20, rng, 100)) != signatures(random_trees(20, rng, 100))
    assert signatures(random_trees(20, 1, 100)) != signatures(random_trees(20, 2, 100))


def test_length_distribution_resembles_ewt() -> None:
    lengths = sentence_lengths(50_000, 0)
    assert lengths.dtype == np.int64
    assert lengths.min() >= 1 and lengths.max() <= MAX_LENGTH
    ewt = np.array([len(s) for s in load_sentences("all")])
    assert abs(lengths.mean() - ewt.mean()) < 0.5  # both ~12.3
    assert abs(lengths.std() - ewt.std()) < 1.0  # both ~10.5
    assert abs(np.median(lengths) - np.median(ewt)) <= 1
    assert 40 <= np.percentile(lengths, 99) <= 60  # long tail, but not lognormal-heavy


def test_random_binary_tree_shape_and_ids() -> None:
    rng = np.random.default_rng(5)
    for num_leaves in [1, 2, 3, 17, 120]:
        tree = random_binary_tree(num_leaves, rng, vocab_size=10, num_labels=4)
        nodes = tree.nodes_postorder()
        assert tree.num_leaves() == num_leaves and len(nodes) == 2 * num_leaves - 1
        assert all(len(t.children) in (0, 2) for t in nodes)
        assert all(FIRST_WORD_ID <= t.word < 10 for t in tree.leaves())
        assert all(t.word == -1 for t in nodes if t.children)
        assert all(0 <= t.label < 4 for t in nodes)
    assert {t.label for t in random_binary_tree(50, 0, 10).nodes_postorder()} == {0}


def test_random_tree_heights_are_mixed() -> None:
    heights = [random_binary_tree(16, seed, 10).height() for seed in range(200)]
    assert min(heights) >= 4 and max(heights) <= 15  # 16 leaves: between balanced and a chain
    assert len(set(heights)) >= 4


def test_random_trees_use_sentence_lengths() -> None:
    trees = random_trees(200, 11, 1000)
    assert [t.num_leaves() for t in trees] == sentence_lengths(200, 11).tolist()


def test_random_chains() -> None:
    words, tags = random_chain(12, 0, vocab_size=30, num_tags=17)
    assert len(words) == len(tags) == 12
    assert all(FIRST_WORD_ID <= w < 30 for w in words) and all(0 <= t < 17 for t in tags)
    chains = random_chains(100, 4, 30, 17)
    assert [len(w) for w, _ in chains] == sentence_lengths(100, 4).tolist()
    assert all(len(w) == len(t) for w, t in chains)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="num_leaves"):
        random_binary_tree(0, 0, 10)
    with pytest.raises(ValueError, match="vocab_size"):
        random_binary_tree(3, 0, 2)
    with pytest.raises(ValueError, match="num_labels"):
        random_binary_tree(3, 0, 10, num_labels=0)
    with pytest.raises(ValueError, match="length"):
        random_chain(0, 0, 10, 3)
    with pytest.raises(ValueError, match="num_tags"):
        random_chain(3, 0, 10, 0)
