"""LSTM-NMT on real PUD English->German pairs: greedy decoding until <eos> (fiber decisions) and the
teacher-forced loss match the eager model; rounds are the longest translation, not the total."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.models.nmt import NMT, pud_examples
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def setup():
    examples, src_vocab, tgt_vocab = pud_examples(max_len=12, max_pairs=120)
    torch.manual_seed(4)
    model = NMT(len(src_vocab), len(tgt_vocab), hidden=12, max_src=12, max_len=8)
    with torch.no_grad():
        # Untrained weights, sharpened and with an <eos> bias so <eos> comes at varied steps (1..8).
        model.decoder.out.weight.mul_(4.0)
        model.decoder.out.bias[model.eos] += 1.0
    return examples, model


def eager_lengths(model, sources):
    with torch.no_grad():
        return [len(model(s)[0]) for s in sources]


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10))
def test_greedy_decoding_matches_eager(setup, seed, count):
    examples, model = setup
    picks = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    sources = [examples[i][0] for i in picks]
    batcher = assert_matches_eager(model, sources)
    fs = batcher.stats.fibers
    lengths = eager_lengths(model, sources)
    assert fs.decisions == lengths
    assert fs.decision_rounds == max(lengths, default=0)


def test_instances_stop_at_different_steps_and_rounds_are_the_max(setup):
    examples, model = setup
    sources = [s for s, _ in examples[:24]]
    lengths = eager_lengths(model, sources)
    assert len(set(lengths)) > 2, lengths
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        batcher(sources)
    assert batcher.stats.fibers.decision_rounds == max(lengths) < sum(lengths)


@pytest.mark.parametrize("policy", ["depth", "agenda"])
def test_teacher_forced_loss_gradients_match_eager(setup, policy):
    examples, model = setup
    assert_matches_eager(model.loss, examples[:6], params=list(model.parameters()), policy=policy, train=True)


def test_too_long_source_is_named():
    model = NMT(10, 10, hidden=4, max_src=3)
    with pytest.raises(phalanx.InstanceError, match="instance 1: ValueError: source sentence has 5 words"):
        with torch.no_grad():
            phalanx.Batcher(model)([[1, 2], [1, 2, 3, 4, 5]])
