"""Every zoo model, batched == eager (outputs and parameter gradients) over hypothesis-generated
structures, including 0 and 1 instances, and every hand-batched baseline == eager on them too."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.data import synthetic
from phalanx.models import (MVRNN, ChildSumTreeLSTM, DagRNN, LatticeRNN, ManualNestedRNN, NestedRNN, TreeGRU,
                            TwoTypeTreeLSTM, manual_childsum, manual_dag, manual_lattice, manual_mvrnn,
                            manual_treegru, manual_twotype)
from tests.models.zoo_checks import assert_manual_matches_eager
from tests.oracle import assert_matches_eager

VOCAB, HIDDEN, LABELS = 30, 8, 17


def _build(name):
    torch.manual_seed(0)
    return {
        "childsum": lambda: ChildSumTreeLSTM(VOCAB, HIDDEN, embed_dim=5),
        "treegru": lambda: TreeGRU(VOCAB, HIDDEN, embed_dim=5),
        "mvrnn": lambda: MVRNN(VOCAB, HIDDEN, num_matrices=4),
        "twotype": lambda: TwoTypeTreeLSTM(VOCAB, {0, 1}, HIDDEN, embed_dim=5),
        "nested": lambda: NestedRNN(VOCAB, HIDDEN, char_dim=5),
        "lattice_gru": lambda: LatticeRNN(VOCAB, HIDDEN, embed_dim=5, kind="gru"),
        "lattice_lstm": lambda: LatticeRNN(VOCAB, HIDDEN, embed_dim=5, kind="lstm"),
        "dag": lambda: DagRNN(VOCAB, HIDDEN, num_kinds=3, embed_dim=5),
    }[name]()


MODELS = ["childsum", "treegru", "mvrnn", "twotype", "nested", "lattice_gru", "lattice_lstm", "dag"]
_models: dict = {}


def model(name):
    if name not in _models:
        _models[name] = _build(name)
    return _models[name]


def instances(name, seed, sizes):
    """Random instances of ``name``'s structure, one per size; labelled where the model needs it."""
    rng = synthetic.as_generator(seed)
    if name == "childsum":
        structures = [synthetic.random_tree(n, rng, VOCAB, max_children=4) for n in sizes]
    elif name in ("treegru", "mvrnn", "twotype"):
        structures = [synthetic.random_binary_tree(n, rng, VOCAB, num_labels=4) for n in sizes]
    elif name == "nested":
        return [([rng.integers(2, VOCAB, size=int(rng.integers(1, 4))).tolist() for _ in range(n)],
                 rng.integers(0, LABELS, size=n).tolist()) for n in sizes]
    elif name.startswith("lattice"):
        return [synthetic.random_lattice(n, rng, VOCAB) for n in sizes]       # labels live in the lattice
    else:
        structures = [synthetic.random_dag(n, rng, VOCAB, num_kinds=3) for n in sizes]
    return [(s, int(rng.integers(0, 4))) for s in structures]


def eager_and_manual(name, m, batch):
    """(eager, manual) callables giving the batch's outputs as one tensor each (losses)."""
    if name == "nested":
        return (lambda: torch.stack([x for ex in batch for x in m.loss(ex)]),
                lambda: ManualNestedRNN(m)(*zip(*batch)))
    if name.startswith("lattice"):
        return (lambda: torch.stack([x for lat in batch for x in m.loss(lat)]),
                lambda: manual_lattice(m, batch, labels=True))
    manual = {"childsum": manual_childsum, "treegru": manual_treegru, "mvrnn": manual_mvrnn,
              "twotype": manual_twotype, "dag": manual_dag}[name]
    return (lambda: torch.stack([m.loss(ex) for ex in batch]),
            lambda: manual(m, [s for s, _ in batch], [y for _, y in batch]))


def _forward_fn(name, m):
    """The inference entry point on one instance of ``instances(name, ...)``."""
    return m if name.startswith("lattice") else (lambda ex: m(ex[0]))


sizes_strategy = st.lists(st.integers(1, 7), min_size=0, max_size=5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("policy", ["depth", "agenda"])
@pytest.mark.parametrize("train", [False, True])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), sizes=sizes_strategy)
def test_batched_matches_eager(name, policy, train, seed, sizes):
    m = model(name)
    batch = instances(name, seed, sizes)
    fn = m.loss if train else _forward_fn(name, m)
    assert_matches_eager(fn, batch, params=m.parameters(), train=train,
                         batcher=phalanx.Batcher(fn, policy=policy, verify=True))


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31), sizes=sizes_strategy)
def test_batched_matches_eager_with_memory_planning(name, seed, sizes):
    m = model(name)
    assert_matches_eager(m.loss, instances(name, seed, sizes), params=m.parameters(), train=True,
                         batcher=phalanx.Batcher(m.loss, policy="agenda", plan="auto", verify=True))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("sizes", [[], [1]])
def test_zero_and_one_tiny_instances(name, sizes):
    m = model(name)
    assert_matches_eager(m.loss, instances(name, 7, sizes), params=m.parameters(), train=True)


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), sizes=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_manual_baseline_matches_eager(name, seed, sizes):
    m = model(name)
    eager, manual = eager_and_manual(name, m, instances(name, seed, sizes))
    assert_manual_matches_eager(m, eager, manual)
