"""BiLSTM tagger on real EWT sentences: phalanx and the packed nn.LSTM baseline match eager."""
import pytest
import torch

from phalanx.errors import PhalanxError
from phalanx.models import BiLSTMTagger, ManualTagger
from phalanx.models.tagger import ewt_examples
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def data():
    examples, vocab = ewt_examples("dev", 16)
    torch.manual_seed(1)
    return examples, BiLSTMTagger(len(vocab), 12, embed_dim=10)


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
def test_phalanx_matches_eager_on_ewt(data, policy):
    examples, model = data
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_manual_baseline_matches_eager_outputs(data):
    examples, model = data
    words = [w for w, _ in examples]
    with torch.no_grad():
        expected = torch.cat([torch.stack(model(w)) for w in words])
        torch.testing.assert_close(ManualTagger(model)(words), expected, rtol=1e-4, atol=1e-5)
        losses = ManualTagger(model)(words, [t for _, t in examples])
        torch.testing.assert_close(losses, torch.stack([l for ex in examples for l in model.loss(ex)]),
                                   rtol=1e-4, atol=1e-5)


def test_manual_baseline_gradients_match_eager(data):
    examples, model = data
    baseline = ManualTagger(model)
    baseline(*zip(*examples)).sum().backward()
    model.zero_grad()
    torch.stack([l for ex in examples for l in model.loss(ex)]).sum().backward()
    pairs = [(baseline.lstm.weight_ih_l0, model.fwd.lstm.weight_ih), (baseline.lstm.weight_hh_l0_reverse, model.bwd.lstm.weight_hh),
             (baseline.out.weight, model.scorer.out.weight), (baseline.embed.weight, model.embed.table.weight)]
    assert baseline.embed.weight.grad.is_sparse         # the expert's sparse embedding gradient
    for got, expected in pairs:
        torch.testing.assert_close(got.grad.to_dense(), expected.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_manual_baseline_handles_tiny_batches(data, count):
    examples, model = data
    words = [w for w, _ in examples[:count]] + [[3]] * (count == 2)     # a one-token sentence too
    with torch.no_grad():
        got = ManualTagger(model)(words)
        expected = [l for w in words for l in model(w)]
        torch.testing.assert_close(got, torch.stack(expected) if expected else torch.zeros(0, 17), rtol=1e-4, atol=1e-5)


def test_manual_baseline_rejects_an_empty_sentence(data):
    _, model = data
    with pytest.raises(PhalanxError, match="sentence 1 has no tokens"):
        ManualTagger(model)([[1, 2], []])
