"""Lattice-GRU and Lattice-LSTM on Chinese UD lattices (jieba word arcs) and synthetic lattices:
phalanx and the hand-batched baseline match the eager model, outputs and gradients."""
import importlib.util

import pytest
import torch

from phalanx.data import synthetic
from phalanx.models.lattice import LatticeRNN, chinese_examples, manual_lattice
from tests.models.zoo_checks import assert_manual_matches_eager
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def lattices():
    if importlib.util.find_spec("jieba") is None:
        pytest.skip("the jieba lexicon is not installed")
    gsd, chars = chinese_examples(("gsdsimp-dev",), 3)
    pud, _ = chinese_examples(("pud",), 2)
    return gsd, pud, chars


def _model(kind, num_chars=3000):
    torch.manual_seed(0)
    return LatticeRNN(num_chars, 8, embed_dim=6, kind=kind)


def test_chinese_lattices_have_word_arcs(lattices):
    gsd, pud, _ = lattices
    assert all(lat.num_word_arcs > 0 for lat in gsd + pud)
    assert max(len(p) for lat in gsd for p in lat.preds) >= 2


@pytest.mark.parametrize("kind", ["gru", "lstm"])
# fsm is left out: its Q-learning on these long, many-typed graphs takes over a minute.
@pytest.mark.parametrize("policy", ["depth", "agenda"])
def test_phalanx_matches_eager_on_chinese_ud(lattices, kind, policy):
    gsd, pud, _ = lattices
    model = _model(kind)
    assert_matches_eager(model.loss, gsd[:2] + pud[:1], params=model.parameters(), policy=policy, train=True)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_phalanx_matches_eager_on_synthetic_lattices(kind):
    model = _model(kind, 50)
    lattices = synthetic.random_lattices(4, 3, 50, scale=0.8)
    assert_matches_eager(model.loss, lattices, params=model.parameters(), policy="agenda", train=True)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_manual_baseline_matches_eager(lattices, kind):
    gsd, pud, _ = lattices
    model = _model(kind)
    batch = gsd + pud
    assert_manual_matches_eager(model, lambda: torch.cat([torch.stack(model(x)) for x in batch]),
                                lambda: manual_lattice(model, batch))
    assert_manual_matches_eager(model, lambda: torch.stack([y for x in batch for y in model.loss(x)]),
                                lambda: manual_lattice(model, batch, labels=True))
