"""Tree structure, dependency trees and head-outward binarization."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.data import NO_WORD, Sentence, Tree, Vocab, binarize, dependency_tree, load_treebank


def leaf(word: int, label: int = 0) -> Tree:
    return Tree(word, (), label)


def node(*children: Tree, label: int = 0) -> Tree:
    return Tree(NO_WORD, tuple(children), label)


def make_sentence(heads: list[int], deprels: list[str] | None = None) -> Sentence:
    n = len(heads)
    return Sentence(
        words=tuple(f"w{i}" for i in range(n)),  # unique words: word id identifies the token
        upos=("X",) * n,
        heads=tuple(heads),
        deprels=tuple(deprels) if deprels else tuple("root" if h == 0 else f"r{i}" for i, h in enumerate(heads)),
        sent_id="t",
    )


def vocabs(sentence: Sentence) -> tuple[Vocab, Vocab]:
    return Vocab(sentence.words), Vocab(sorted(set(sentence.deprels)), pad_token=None)


def token_ids(tree_leaves: list[Tree], vocab: Vocab) -> list[int]:
    """0-based token positions of leaves (words are ``w<position>``)."""
    return [int(vocab.token(t.word)[1:]) for t in tree_leaves]


# -- Tree -------------------------------------------------------------------------------


def test_tree_measures() -> None:
    tree = node(node(leaf(1), leaf(2)), leaf(3))
    assert (tree.size(), tree.num_leaves(), tree.height()) == (5, 3, 2)
    assert [t.word for t in tree.leaves()] == [1, 2, 3]
    assert [t.word for t in tree.nodes_postorder()] == [1, 2, NO_WORD, 3, NO_WORD]
    assert tree.nodes_postorder()[-1] is tree
    assert leaf(4).is_leaf and not tree.is_leaf
    assert (leaf(4).size(), leaf(4).num_leaves(), leaf(4).height()) == (1, 1, 0)
    assert repr(tree) == "Tree(((1 2) 3))"
    assert repr(Tree(7, (leaf(1), leaf(2)))) == "Tree(7(1 2))"


def test_signature_is_structural_and_nodes_hash_by_identity() -> None:
    a = node(leaf(1), node(leaf(2), leaf(3)), label=4)
    b = node(leaf(1), node(leaf(2), leaf(3)), label=4)
    assert a.signature() == b.signature()
    assert a.signature() != node(node(leaf(1), leaf(2)), leaf(3), label=4).signature()
    assert a.signature() != node(leaf(1), node(leaf(2), leaf(3)), label=5).signature()
    assert len({a, b}) == 2


def test_deep_trees_do_not_recurse() -> None:
    depth = 50_000
    tree = leaf(0)
    for i in range(depth):
        tree = node(tree, leaf(i + 1))
    assert tree.height() == depth
    assert tree.size() == 2 * depth + 1
    assert tree.num_leaves() == depth + 1
    assert len(tree.nodes_postorder()) == 2 * depth + 1
    assert len(tree.signature()) == 3 * (2 * depth + 1)
    assert repr(tree).endswith("...)")


# -- dependency trees and binarization on a hand-checked sentence -----------------------

# "the big dog saw it ." : dog <- the, big ; saw <- dog, it, . (root)
EXAMPLE = make_sentence([3, 3, 4, 0, 4, 4], ["det", "amod", "nsubj", "root", "obj", "punct"])


def test_dependency_tree_keeps_heads_as_word_nodes() -> None:
    vocab, labels = vocabs(EXAMPLE)
    tree = dependency_tree(EXAMPLE, vocab, labels)
    assert repr(tree) == "Tree(5(4(2 3) 6 7))"  # word id = position + 2 (<unk>, <pad>)
    assert tree.size() == len(EXAMPLE)
    assert tree.label == labels["root"]
    assert [c.label for c in tree.children] == [labels["nsubj"], labels["obj"], labels["punct"]]


def test_binarize_attaches_right_then_left_nearest_first() -> None:
    vocab, labels = vocabs(EXAMPLE)
    tree = binarize(EXAMPLE, vocab, labels)
    # (the (big dog)) attached as subject after (saw it) and "." on the right.
    assert repr(tree) == "Tree(((2 (3 4)) ((5 6) 7)))"
    assert tree.label == labels["nsubj"]
    assert [c.label for c in tree.children[1].children[0].children] == [labels["root"], labels["obj"]]
    assert tree.children[1].label == labels["punct"]


def test_single_word_sentence_is_a_leaf() -> None:
    sentence = make_sentence([0])
    vocab, labels = vocabs(sentence)
    for build in (binarize, dependency_tree):
        tree = build(sentence, vocab, labels)
        assert tree.is_leaf and tree.word == vocab["w0"] and tree.label == labels["root"]


def test_invalid_heads_are_rejected() -> None:
    sentence = Sentence(words=("a", "b"), upos=("X", "X"), heads=(2, 1), deprels=("d", "d"), sent_id="cyc")
    vocab, labels = vocabs(sentence)
    with pytest.raises(ValueError, match="'cyc'.*exactly one root"):
        binarize(sentence, vocab, labels)


# -- properties on random dependency trees (projective and not) -------------------------


@st.composite
def dependency_heads(draw: st.DrawFn, max_size: int = 30) -> list[int]:
    """Any rooted tree over tokens 1..n: attach tokens in random order to earlier ones."""
    n = draw(st.integers(1, max_size))
    order = draw(st.permutations(range(1, n + 1)))
    heads = [0] * n
    for position, token in enumerate(order[1:], start=1):
        heads[token - 1] = order[draw(st.integers(0, position - 1))]
    return heads


def is_projective(heads: list[int]) -> bool:
    # No two arcs cross, counting the root's arc from the virtual token 0 (so an arc
    # may not span the root either).
    arcs = [(min(i + 1, h), max(i + 1, h)) for i, h in enumerate(heads)]
    return not any(a < c < b < d for a, b in arcs for c, d in arcs)


@settings(max_examples=300, deadline=None)
@given(dependency_heads())
def test_binarize_is_binary_with_every_word_once(heads: list[int]) -> None:
    sentence = make_sentence(heads)
    vocab, labels = vocabs(sentence)
    tree = binarize(sentence, vocab, labels)
    nodes = tree.nodes_postorder()
    internal = [t for t in nodes if t.children]
    assert all(len(t.children) == 2 and t.word == NO_WORD for t in internal)
    assert len(internal) == len(heads) - 1
    order = token_ids(list(tree.leaves()), vocab)
    assert sorted(order) == list(range(len(heads)))  # every word exactly once
    if is_projective(heads):
        assert order == list(range(len(heads)))
    # Each non-root token's relation labels exactly one attachment step.
    non_root = [labels[r] for r, h in zip(sentence.deprels, heads) if h]
    assert Counter(t.label for t in internal) == Counter(non_root)


@settings(max_examples=200, deadline=None)
@given(dependency_heads())
def test_dependency_tree_mirrors_heads(heads: list[int]) -> None:
    sentence = make_sentence(heads)
    vocab, labels = vocabs(sentence)
    tree = dependency_tree(sentence, vocab, labels)
    assert tree.size() == len(heads)
    found_heads = [None] * len(heads)
    found_heads[int(vocab.token(tree.word)[1:])] = 0
    for parent in tree.nodes_postorder():
        positions = [int(vocab.token(c.word)[1:]) for c in parent.children]
        assert positions == sorted(positions)  # dependents in word order
        for position in positions:
            found_heads[position] = int(vocab.token(parent.word)[1:]) + 1
    assert found_heads == heads


# -- the shipped treebank ---------------------------------------------------------------


def test_ewt_dev_trees() -> None:
    binary, vocab, labels = load_treebank("dev", binary=True)
    dependency, vocab2, labels2 = load_treebank("dev", binary=False)
    assert (vocab, labels) == (vocab2, labels2)
    assert labels.unk_id == 0 and labels.pad_id is None and vocab.pad_id == 1
    from phalanx.data import load_sentences

    sentences = load_sentences("dev")
    assert len(binary) == len(dependency) == len(sentences) == 2001
    non_projective = 0
    for sentence, btree, dtree in zip(sentences, binary, dependency):
        assert dtree.size() == btree.num_leaves() == len(sentence)
        assert all(len(t.children) in (0, 2) for t in btree.nodes_postorder())
        assert Counter(t.word for t in btree.leaves()) == Counter(vocab.encode(sentence.words))
        if not is_projective(list(sentence.heads)):
            non_projective += 1
    assert non_projective > 0  # the property above is exercised on real crossing arcs
