"""Shared test helpers: hand-built graphs and hypothesis strategies for random structures.

``make_graph`` builds a ``GraphArrays`` straight from op-type ids and producer lists, with dummy
signatures, so scheduler tests need no recording and run in microseconds. The strategies generate
the three structure families of the model zoo: random DAGs with several op types, forests of
binary trees with two internal cell types, and Lattice-LSTM-shaped lattices.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from hypothesis import strategies as st

from phalanx.ir.aval import aval
from phalanx.ir.graph import GraphArrays
from phalanx.ir.signature import Signature

_DUMMY_AVAL = aval((1,), torch.float32)


def dummy_signature(sid: int, name: str | None = None) -> Signature:
    """A signature that only names an op type (``describe()`` is ``"op<sid>()->(float32[1])"``)."""
    return Signature(sid=sid, name=name or f"op{sid}", fn=lambda *a: None, in_kinds=(), in_avals=(),
                     out_avals=(_DUMMY_AVAL,), unflatten=lambda vals: vals[0], flatten=lambda out: (out,))


def make_graph(node_sigs: Sequence[int], inputs_per_node: Sequence[Sequence[int]],
               num_sigs: int | None = None, names: Sequence[str] | None = None) -> GraphArrays:
    """A frozen graph with node ``i`` of op type ``node_sigs[i]`` reading the outputs of the nodes
    ``inputs_per_node[i]`` (each must be ``< i``: node ids are a topological order). Every node has
    one output, so value ids equal node ids. ``names[sid]`` optionally overrides the type names."""
    n = len(node_sigs)
    if len(inputs_per_node) != n:
        raise ValueError("need one input list per node")
    num_sigs = (max(node_sigs) + 1 if n else 0) if num_sigs is None else num_sigs
    sigs = [dummy_signature(s, None if names is None else names[s]) for s in range(num_sigs)]
    depth = np.zeros(n, dtype=np.int64)
    arg_start = [0]
    arg_code: list[int] = []
    for i, inputs in enumerate(inputs_per_node):
        for p in inputs:
            if not 0 <= p < i:
                raise ValueError(f"node {i} reads node {p}; inputs must come earlier")
        depth[i] = 1 + max((depth[p] for p in inputs), default=-1)
        arg_code.extend(int(p) for p in inputs)
        arg_start.append(len(arg_code))
    return GraphArrays(
        sigs=sigs,
        node_sig=np.asarray(node_sigs, dtype=np.int64).reshape(n),
        node_depth=depth,
        node_inst=np.zeros(n, dtype=np.int64),
        node_phase=np.zeros(n, dtype=np.int64),
        node_first_value=np.arange(n, dtype=np.int64),
        arg_start=np.asarray(arg_start, dtype=np.int64),
        arg_code=np.asarray(arg_code, dtype=np.int64),
        imms=[],
        value_node=np.arange(n, dtype=np.int64),
        value_aval_id=np.zeros(n, dtype=np.int64),
        avals=[_DUMMY_AVAL],
        device=torch.device("cpu"),
        used_sids=np.unique(np.asarray(node_sigs, dtype=np.int64)),
    )


# *** structure builders (deterministic, numpy-seeded; the strategies below draw their inputs) ***

LEAF, CELL_A, CELL_B = 0, 1, 2


def tree_forest(shapes: Sequence[Sequence[tuple[int, int, int]]], leaves: Sequence[int]) -> GraphArrays:
    """Forest of binary trees. Tree ``k`` has ``leaves[k]`` leaf nodes (type LEAF) and its internal
    nodes are ``shapes[k]``: ``(left, right, type)`` with children indexing that tree's nodes so far
    (leaves first). Internal types are CELL_A or CELL_B (the two-cell-type TreeLSTM)."""
    sigs: list[int] = []
    inputs: list[list[int]] = []
    for num_leaves, internal in zip(leaves, shapes, strict=True):
        local: list[int] = []
        for _ in range(num_leaves):
            local.append(len(sigs))
            sigs.append(LEAF)
            inputs.append([])
        for left, right, kind in internal:
            local.append(len(sigs))
            sigs.append(kind)
            inputs.append([local[left], local[right]])
    return make_graph(sigs, inputs, num_sigs=3, names=["leaf", "cellA", "cellB"])


def _random_forest(rng: np.random.Generator, num_trees: int, max_leaves: int, kind_of) -> GraphArrays:
    """Random binary trees (1..max_leaves leaves, merging random adjacent subtrees); each merge's
    cell is ``kind_of(number of subtrees left before it)``."""
    shapes, leaves = [], []
    for _ in range(num_trees):
        k = int(rng.integers(1, max_leaves + 1))
        open_ids = list(range(k))
        nxt = k
        internal = []
        while len(open_ids) > 1:
            i = int(rng.integers(len(open_ids) - 1))   # merge two adjacent subtrees
            internal.append((open_ids[i], open_ids[i + 1], kind_of(len(open_ids))))
            open_ids[i:i + 2] = [nxt]
            nxt += 1
        shapes.append(internal)
        leaves.append(k)
    return tree_forest(shapes, leaves)


def random_tree_forest(rng: np.random.Generator, num_trees: int, max_leaves: int, p_b: float = 0.5) -> GraphArrays:
    """``num_trees`` random binary trees whose internal nodes are CELL_B with probability ``p_b``,
    else CELL_A."""
    return _random_forest(rng, num_trees, max_leaves, lambda _: CELL_B if rng.random() < p_b else CELL_A)


def random_root_cell_forest(rng: np.random.Generator, num_trees: int, max_leaves: int) -> GraphArrays:
    """Like ``random_tree_forest`` but every internal node is CELL_A except each root, which is
    CELL_B (a TreeLSTM whose root runs a different cell). Batching all roots at once reaches the
    lower bound, but roots of small trees are ready long before those of big trees, which tempts
    depth, agenda and largest-ready-first into extra root batches."""
    return _random_forest(rng, num_trees, max_leaves, lambda left: CELL_B if left == 2 else CELL_A)


CHAR, WORD = 0, 1


def lattice(length: int, words: Sequence[tuple[int, int]], sigs: list[int], inputs: list[list[int]]) -> None:
    """Append one Lattice-LSTM instance: a chain of ``length`` CHAR cells; each word ``(s, e)``
    (``s < e <= length - 1``) is a WORD cell reading char ``s`` whose output char ``e`` also reads."""
    char_ids: list[int] = []
    ending: dict[int, list[int]] = {}
    words = sorted(words)
    wi = 0
    for c in range(length):
        node = len(sigs)
        sigs.append(CHAR)
        inputs.append(([char_ids[-1]] if char_ids else []) + ending.get(c, []))
        char_ids.append(node)
        while wi < len(words) and words[wi][0] == c:
            s, e = words[wi]
            wi += 1
            ending.setdefault(e, []).append(len(sigs))
            sigs.append(WORD)
            inputs.append([node])


def random_lattices(rng: np.random.Generator, num: int, max_len: int, max_word: int = 4,
                    p_word: float = 0.5) -> GraphArrays:
    """``num`` lattices of 1..max_len chars; from each char a word of length 1..max_word starts with
    probability ``p_word``."""
    sigs: list[int] = []
    inputs: list[list[int]] = []
    for _ in range(num):
        length = int(rng.integers(1, max_len + 1))
        words = []
        for s in range(length - 1):
            if rng.random() < p_word:
                words.append((s, min(length - 1, s + int(rng.integers(1, max_word + 1)))))
        lattice(length, words, sigs, inputs)
    return make_graph(sigs, inputs, num_sigs=2, names=["char", "word"])


def random_suffix_lattices(rng: np.random.Generator, num: int, max_len: int, p_word: float = 0.3) -> GraphArrays:
    """``num`` lattices of 2..max_len chars whose words all end at the last char (suffix matches):
    the whole sentence is a word, and another word starts at each inner char with probability
    ``p_word``. Running chars first reaches the lower bound (chars to the last, every word at once,
    the last chars); the heuristics run words as they become ready and pay extra word batches."""
    sigs: list[int] = []
    inputs: list[list[int]] = []
    for _ in range(num):
        length = int(rng.integers(2, max_len + 1))
        words = [(0, length - 1)] + [(s, length - 1) for s in range(1, length - 1) if rng.random() < p_word]
        lattice(length, words, sigs, inputs)
    return make_graph(sigs, inputs, num_sigs=2, names=["char", "word"])


# *** hypothesis strategies ***

@st.composite
def dags(draw, max_nodes: int = 12, max_types: int = 3, max_inputs: int = 3) -> GraphArrays:
    """Random DAGs (possibly empty) over up to ``max_types`` op types."""
    n = draw(st.integers(0, max_nodes))
    num_types = draw(st.integers(1, max_types))
    sigs = [draw(st.integers(0, num_types - 1)) for _ in range(n)]
    inputs = []
    for i in range(n):
        k = draw(st.integers(0, min(i, max_inputs)))
        inputs.append(sorted(draw(st.sets(st.integers(0, i - 1), min_size=k, max_size=k))) if k else [])
    return make_graph(sigs, inputs, num_sigs=num_types)


@st.composite
def trees(draw, max_trees: int = 3, max_leaves: int = 5) -> GraphArrays:
    """Forests of binary trees with two internal cell types."""
    seed = draw(st.integers(0, 2**32 - 1))
    return random_tree_forest(np.random.default_rng(seed), draw(st.integers(1, max_trees)), max_leaves)


@st.composite
def lattices(draw, max_num: int = 3, max_len: int = 6) -> GraphArrays:
    """Lattice-LSTM-shaped graphs: char chains plus word cells spanning them."""
    seed = draw(st.integers(0, 2**32 - 1))
    return random_lattices(np.random.default_rng(seed), draw(st.integers(1, max_num)), max_len)


def any_graph(max_nodes: int = 12) -> st.SearchStrategy[GraphArrays]:
    """One of the three families (DAGs up to ``max_nodes``; small trees and lattices)."""
    return st.one_of(dags(max_nodes=max_nodes), trees(max_trees=2, max_leaves=max(1, max_nodes // 4)),
                     lattices(max_num=2, max_len=max(1, max_nodes // 3)))
