"""Synthetic scaling families: n-ary trees, lattices and DAGs with several node kinds."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.data import synthetic


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 60), max_children=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_random_tree_has_the_size_and_arity_bound(size, max_children, seed):
    tree = synthetic.random_tree(size, seed, 20, max_children)
    nodes = tree.nodes_postorder()
    assert len(nodes) == size
    assert max(len(n.children) for n in nodes) <= max_children
    assert all(2 <= n.word < 20 for n in nodes)
    assert tree.signature() == synthetic.random_tree(size, seed, 20, max_children).signature()


def test_random_nary_trees_mix_arities():
    trees = synthetic.random_nary_trees(40, 0, 30)
    arities = {len(n.children) for t in trees for n in t.nodes_postorder()}
    assert {0, 1, 2, 3} <= arities


@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, 40), seed=st.integers(0, 2**31), max_span=st.integers(2, 5))
def test_random_lattice_is_valid(length, seed, max_span):
    lat = synthetic.random_lattice(length, seed, 20, max_span=max_span)
    assert len(lat) == length
    for i, preds in enumerate(lat.preds):
        assert preds[-1] == i and all(i + 1 - p <= max_span for p in preds)
    assert lat == synthetic.random_lattice(length, seed, 20, max_span=max_span)


def test_random_lattices_scale_and_have_word_arcs():
    small = synthetic.random_lattices(30, 1, 20)
    large = synthetic.random_lattices(30, 1, 20, scale=3.0)
    assert sum(map(len, large)) > 2 * sum(map(len, small))
    assert sum(lat.num_word_arcs for lat in small) > 0


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 50), kinds=st.integers(1, 4), max_preds=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_random_dag_is_a_valid_dag(size, kinds, max_preds, seed):
    dag = synthetic.random_dag(size, seed, 20, num_kinds=kinds, max_preds=max_preds)
    assert len(dag) == size and dag.preds[0] == ()
    for i, preds in enumerate(dag.preds[1:], start=1):
        assert 1 <= len(preds) <= max_preds and list(preds) == sorted(set(preds)) and preds[-1] < i
    assert set(dag.kinds) <= set(range(kinds))


@pytest.mark.parametrize("call", [lambda: synthetic.random_tree(0, 0, 10), lambda: synthetic.random_tree(3, 0, 10, 0),
                                  lambda: synthetic.random_lattice(0, 0, 10), lambda: synthetic.random_dag(0, 0, 10),
                                  lambda: synthetic.random_dag(3, 0, 10, num_kinds=0)])
def test_bad_sizes_raise(call):
    with pytest.raises(ValueError, match="must be >= 1"):
        call()
