"""BiLSTM tagger on real EWT sentences: phalanx and the packed nn.LSTM baseline match eager."""
import pytest
import torch

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
    for got, expected in pairs:
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-5)
