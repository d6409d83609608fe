"""TreeGRU on binarized EWT trees: phalanx and the hand-batched baseline match the eager model."""
import pytest
import torch

from phalanx.models.treegru import TreeGRU, ewt_examples, manual_treegru
from tests.models.zoo_checks import assert_manual_matches_eager
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def examples_and_model():
    examples, vocab = ewt_examples("dev", 12)
    torch.manual_seed(0)
    return examples, TreeGRU(len(vocab), 8, embed_dim=6)


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
def test_phalanx_matches_eager_on_ewt(examples_and_model, policy):
    examples, model = examples_and_model
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_manual_baseline_matches_eager(examples_and_model):
    examples, model = examples_and_model
    trees, labels = [t for t, _ in examples], [y for _, y in examples]
    assert_manual_matches_eager(model, lambda: torch.stack([model(t) for t in trees]),
                                lambda: manual_treegru(model, trees))
    assert_manual_matches_eager(model, lambda: torch.stack([model.loss(x) for x in examples]),
                                lambda: manual_treegru(model, trees, labels))
