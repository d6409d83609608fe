"""StackRNN on real EWT sentences: shift-reduce actions chosen by the model's own softmax (fiber
decisions) give the same actions, outputs and gradients as the eager model."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.models.stackrnn import StackRNN, ewt_examples
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def setup():
    examples, vocab = ewt_examples(max_len=16, max_sentences=150)
    torch.manual_seed(0)
    return examples, StackRNN(len(vocab), 12)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 8))
def test_parses_match_eager(setup, seed, count):
    examples, model = setup
    picks = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    sentences = [examples[i][0] for i in picks]
    batcher = assert_matches_eager(model, sentences)
    fs = batcher.stats.fibers
    assert fs.decision_rounds == max(fs.decisions, default=0)


def test_decisions_vary_and_rounds_are_the_max(setup):
    examples, model = setup
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        batcher([w for w, _ in examples[:16]])
    fs = batcher.stats.fibers
    assert len(set(fs.decisions)) > 2
    assert fs.decision_rounds == max(fs.decisions) < sum(fs.decisions)


def test_loss_through_parser_decisions_matches_eager(setup):
    examples, model = setup
    assert_matches_eager(model.loss, examples[:6], params=list(model.parameters()), train=True)
