"""Berxit early-exit encoder on real EWT sentences: exits (fiber decisions per layer), outputs and
gradients through the exit decisions match the eager model."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.models.berxit import Berxit, ewt_examples
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def setup():
    examples, vocab = ewt_examples(max_len=40, max_sentences=200)
    torch.manual_seed(0)
    return examples, Berxit(len(vocab), hidden=16, layers=4, heads=2, threshold=0.12)


def exit_layers(model, sentences):
    with torch.no_grad():
        return [int(model(s)[1]) for s in sentences]


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10))
def test_early_exit_matches_eager(setup, seed, count):
    examples, model = setup
    picks = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    sentences = [examples[i][0] for i in picks]
    batcher = assert_matches_eager(model, sentences)
    layers = exit_layers(model, sentences)
    last = len(model.layers) - 1
    # One decision per layer passed, except the last layer, which exits without asking.
    assert batcher.stats.fibers.decisions == [min(d + 1, last) for d in layers]


def test_exits_vary_and_rounds_are_the_max(setup):
    examples, model = setup
    sentences = [w for w, _ in examples[:20]]
    layers = exit_layers(model, sentences)
    assert len(set(layers)) > 2, layers
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        batcher(sentences)
    fs = batcher.stats.fibers
    assert fs.decision_rounds == max(fs.decisions) < sum(fs.decisions)


@pytest.mark.parametrize("policy", ["depth", "agenda"])
def test_loss_through_exit_decisions_matches_eager(setup, policy):
    examples, model = setup
    assert_matches_eager(model.loss, examples[:8], params=list(model.parameters()), policy=policy, train=True)
