"""MV-RNN on binarized EWT trees (a vector and a matrix per node): phalanx and the hand-batched
baseline match the eager model."""
import pytest
import torch

import phalanx
from phalanx.models.mvrnn import MVRNN, ewt_examples, manual_mvrnn
from tests.models.zoo_checks import assert_manual_matches_eager
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def examples_and_model():
    examples, vocab = ewt_examples("dev", 12)
    torch.manual_seed(0)
    return examples, MVRNN(len(vocab), 8, num_matrices=5)


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
def test_phalanx_matches_eager_on_ewt(examples_and_model, policy):
    examples, model = examples_and_model
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_nodes_carry_a_vector_and_a_matrix(examples_and_model):
    examples, model = examples_and_model
    vector, matrix = phalanx.Batcher(model.encode)([examples[0][0]])[0]
    assert vector.shape == (8,) and matrix.shape == (8, 8)


def test_manual_baseline_matches_eager(examples_and_model):
    examples, model = examples_and_model
    trees, labels = [t for t, _ in examples], [y for _, y in examples]
    assert_manual_matches_eager(model, lambda: torch.stack([model(t) for t in trees]),
                                lambda: manual_mvrnn(model, trees))
    assert_manual_matches_eager(model, lambda: torch.stack([model.loss(x) for x in examples]),
                                lambda: manual_mvrnn(model, trees, labels))
