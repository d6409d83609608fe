"""PQ-tree (memory/pqtree.py): reduce agrees with brute force, rejects leave the tree as it was."""

from __future__ import annotations

import itertools
import math
import random
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.memory.pqtree import PQTree


def is_consecutive(order: list, subset) -> bool:
    subset = set(subset)
    if len(subset) <= 1:
        return True
    positions = [i for i, element in enumerate(order) if element in subset]
    return positions[-1] - positions[0] == len(subset) - 1


def assert_frontier_valid(tree: PQTree, accepted: list) -> None:
    order = tree.frontier()
    position = {element: i for i, element in enumerate(order)}
    assert len(order) == len(position) == len(tree) and position.keys() == set(tree.elements)
    for subset in accepted:
        spots = [position[element] for element in set(subset)]
        assert not spots or max(spots) - min(spots) == len(spots) - 1, (str(tree), subset)
    assert tree.admits(order)


@lru_cache(maxsize=None)
def all_orders(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every permutation of range(n) (row i: element at each position) and its inverse (row i:
    position of each element)."""
    orders = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    orders = orders.reshape(math.factorial(n), n)
    return orders, np.argsort(orders, axis=1)


def consecutive_mask(positions: np.ndarray, subset: list[int]) -> np.ndarray:
    if len(subset) <= 1:
        return np.ones(len(positions), dtype=bool)
    where = positions[:, subset]
    return where.max(axis=1) - where.min(axis=1) == len(subset) - 1


# ---------------------------------------------------------------------- edge cases


def test_empty_universe():
    tree = PQTree([])
    assert len(tree) == 0 and tree.elements == ()
    assert tree.frontier() == []
    assert tree.reduce([]) is True
    assert tree.count_orders() == 1 and list(tree.orders()) == [()]
    assert tree.admits([]) and not tree.admits([1])
    assert str(tree) == str(tree.copy())
    tree.check()
    with pytest.raises(ValueError, match="not in the universe"):
        tree.reduce([0])


def test_singleton_universe():
    tree = PQTree(["x"])
    assert len(tree) == 1 and tree.frontier() == ["x"] and str(tree) == "x"
    assert tree.reduce([]) and tree.reduce(["x"]) and tree.reduce(["x", "x"])
    assert tree.count_orders() == 1
    tree.check()
    tree.copy().check()


def test_duplicate_element_is_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        PQTree([1, 2, 1])


def test_unknown_element_is_named_and_changes_nothing():
    tree = PQTree("abcd")
    assert tree.reduce("ab")
    before = str(tree)
    with pytest.raises(ValueError, match="'z'"):
        tree.reduce(["a", "z"])
    assert str(tree) == before
    tree.check()


def test_trivial_subsets_are_accepted_without_change():
    tree = PQTree(range(5))
    assert tree.reduce([0, 1, 2])
    assert tree.reduce([3, 4])  # still satisfiable: blocks {0,1,2} and {3,4}
    before = str(tree)
    for subset in ([], [2], [4, 4], range(5), [0, 1, 2]):  # empty, single, universe, implied
        assert tree.reduce(subset)
        assert str(tree) == before


def test_str_nests_p_and_q_nodes():
    tree = PQTree("abc")
    assert str(tree) == "(a b c)"
    assert tree.reduce("ab")
    assert str(tree) in {"(c (a b))", "((a b) c)", "(c (b a))", "((b a) c)"}
    assert tree.reduce("bc")
    assert str(tree) in {"[a b c]", "[c b a]"}
    assert tree.count_orders() == 2


def test_rejected_reduce_leaves_tree_unchanged():
    tree = PQTree("abcdef")
    for subset in ("ab", "bc", "cd", "ef"):
        assert tree.reduce(subset)
    before, frontier, count = str(tree), tree.frontier(), tree.count_orders()
    for bad in ("ac", "bd", "ad", "be", "abd", "acef"):
        assert tree.reduce(bad) is False
        assert str(tree) == before and tree.frontier() == frontier
        assert tree.count_orders() == count
        tree.check()


def test_copy_is_independent():
    tree = PQTree(range(6))
    assert tree.reduce([0, 1, 2])
    clone = tree.copy()
    assert str(clone) == str(tree) and clone.frontier() == tree.frontier()
    assert clone.reduce([2, 3])
    clone.check()
    tree.check()
    assert str(clone) != str(tree)
    assert tree.count_orders() == 2 * 3 * math.factorial(4)


def test_admits_checks_membership():
    tree = PQTree(range(4))
    assert tree.reduce([0, 1]) and tree.reduce([1, 2])
    assert tree.admits([0, 1, 2, 3]) and tree.admits([3, 2, 1, 0]) and tree.admits([3, 0, 1, 2])
    assert not tree.admits([1, 0, 2, 3])
    assert not tree.admits([0, 1, 2]) and not tree.admits([0, 1, 2, 2]) and not tree.admits([0, 1, 2, 9])


def test_deep_tree_needs_no_recursion():
    # Nested prefixes build a chain of P-nodes deeper than Python's default recursion limit.
    n = 1050
    tree = PQTree(range(n))
    for k in range(2, n):
        assert tree.reduce(range(k))
    tree.check()
    assert len(str(tree)) > n and str(tree.copy()) == str(tree)
    assert tree.count_orders() == 2 ** (n - 1)
    assert tree.reduce([0, n - 1])  # 0 must sit at the far end of the chain, next to n-1
    assert tree.reduce([0, n - 2]) is False
    assert_frontier_valid(tree, [range(k) for k in range(2, n)] + [[0, n - 1]])
    tree.check()


# ---------------------------------------------------------------------- against brute force


@settings(max_examples=400, deadline=None)
@given(data=st.data(), n=st.integers(0, 8))
def test_agrees_with_brute_force(data, n):
    orders, positions = all_orders(n)
    alive = np.ones(len(orders), dtype=bool)  # the orders satisfying every accepted constraint
    tree = PQTree(range(n))
    accepted: list[list[int]] = []
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        if n == 0:
            subset: list[int] = []
        elif data.draw(st.booleans(), label="interval of an admitted order"):
            candidates = np.flatnonzero(alive)
            order = orders[candidates[data.draw(st.integers(0, len(candidates) - 1))]]
            start = data.draw(st.integers(0, n - 1))
            stop = data.draw(st.integers(start + 1, n))
            subset = order[start:stop].tolist()
        else:
            subset = data.draw(st.lists(st.integers(0, n - 1), unique=True))
        before, frontier = str(tree), tree.frontier()
        still_alive = alive & consecutive_mask(positions, subset)
        result = tree.reduce(subset)
        assert result == bool(still_alive.any()), (before, subset)
        if result:
            alive = still_alive
            accepted.append(subset)
        else:
            assert str(tree) == before and tree.frontier() == frontier
        tree.check()
        assert_frontier_valid(tree, accepted)
        assert tree.count_orders() == int(alive.sum())
        if alive.sum() <= 720:
            assert set(tree.orders()) == {tuple(row) for row in orders[alive].tolist()}
        else:  # too many to list: sample membership instead
            for index in np.random.default_rng(len(accepted)).integers(0, len(orders), 16):
                assert tree.admits(orders[index].tolist()) == bool(alive[index])


@pytest.mark.parametrize("n", range(0, 7))
def test_every_pair_sequence_small(n):
    # Exhaustive over one family: all consecutive-pair chains built from every order of range(n)
    # give a single Q-node (or less) admitting exactly that order and its reverse.
    for order in itertools.permutations(range(n)):
        tree = PQTree(range(n))
        for a, b in zip(order, order[1:]):
            assert tree.reduce([a, b])
        tree.check()
        assert set(tree.orders()) == ({order, order[::-1]} if n else {()})


# ---------------------------------------------------------------------- fuzz, no brute force


def test_fuzz_intervals_of_hidden_order_are_always_accepted():
    rng = random.Random(0x9A7)
    for _ in range(3000):
        n = rng.randint(0, 30)
        hidden = [f"e{i}" for i in range(n)]
        rng.shuffle(hidden)
        tree = PQTree(sorted(hidden))
        accepted = []
        previous_count = tree.count_orders()
        for _ in range(rng.randint(1, 10)):
            start = rng.randint(0, n)
            stop = rng.randint(start, min(n, start + rng.choice((2, 3, 5, n))))
            subset = hidden[start:stop]
            rng.shuffle(subset)
            assert tree.reduce(subset), (str(tree), subset)
            accepted.append(subset)
            assert tree.admits(hidden) and tree.admits(hidden[::-1])
            count = tree.count_orders()
            assert count <= previous_count
            previous_count = count
        tree.check()
        assert_frontier_valid(tree, accepted)


def test_fuzz_random_subsets():
    # Oracles without brute force: a subset consecutive in the frontier (an admitted order) must be
    # accepted; an accepted subset must be consecutive in the new frontier; a rejection must leave
    # the tree as it was; the admitted family only shrinks.
    rng = random.Random(0xC0FFEE)
    rejected = 0
    for _ in range(3000):
        n = rng.randint(2, 30)
        tree = PQTree(range(n))
        accepted = []
        for _ in range(rng.randint(1, 12)):
            frontier = tree.frontier()
            if rng.random() < 0.5:
                start = rng.randrange(n)
                subset = frontier[start : start + rng.randint(1, 6)]
            else:
                subset = rng.sample(range(n), rng.randint(2, min(n, 6)))
            before, count = str(tree), tree.count_orders()
            result = tree.reduce(subset)
            if is_consecutive(frontier, subset):
                assert result, (before, subset)
            if result:
                accepted.append(subset)
                assert is_consecutive(tree.frontier(), subset)
                assert tree.count_orders() <= count
            else:
                rejected += 1
                assert str(tree) == before and tree.frontier() == frontier
                assert tree.count_orders() == count
        tree.check()
        assert_frontier_valid(tree, accepted)
    assert rejected > 100  # the oracle for rejections was exercised


def test_large_universe_with_many_reductions():
    rng = random.Random(7)
    n = 10_000
    hidden = list(range(n))
    rng.shuffle(hidden)
    tree = PQTree(range(n))
    accepted = []
    for _ in range(2000):
        start = rng.randrange(n)
        subset = hidden[start : start + rng.randint(2, 12)]
        assert tree.reduce(subset)
        accepted.append(subset)
    assert tree.admits(hidden)
    for attempt in range(200):  # random small subsets: nearly all rejected
        subset = rng.sample(range(n), 3)
        before = str(tree) if attempt < 10 else None  # O(n): checked on a few only
        if tree.reduce(subset):
            accepted.append(subset)
        elif before is not None:
            assert str(tree) == before
    tree.check()
    assert_frontier_valid(tree, accepted)
