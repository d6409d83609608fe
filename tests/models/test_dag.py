"""DAG-RNN with three node kinds on synthetic DAGs: phalanx and the hand-batched baseline match
the eager model, outputs and gradients."""
import pytest
import torch

from phalanx.models.dag import DagRNN, manual_dag, synthetic_examples
from tests.models.zoo_checks import assert_manual_matches_eager
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def examples_and_model():
    torch.manual_seed(0)
    return synthetic_examples(5, 0, 40, scale=0.7), DagRNN(40, 8, num_kinds=3, embed_dim=6)


@pytest.mark.parametrize("policy", ["depth", "agenda"])   # fsm: see test_fsm_runs_on_a_tiny_batch
def test_phalanx_matches_eager(examples_and_model, policy):
    examples, model = examples_and_model
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_manual_baseline_matches_eager(examples_and_model):
    examples, model = examples_and_model
    dags, labels = [d for d, _ in examples], [y for _, y in examples]
    assert_manual_matches_eager(model, lambda: torch.stack([model(d) for d in dags]), lambda: manual_dag(model, dags))
    assert_manual_matches_eager(model, lambda: torch.stack([model.loss(x) for x in examples]),
                                lambda: manual_dag(model, dags, labels))


def test_fsm_runs_on_a_tiny_batch(examples_and_model):
    # Q-learning on a DAG mini-batch with many op types is slow; one small DAG keeps this test fast.
    examples, model = examples_and_model
    assert_matches_eager(model.loss, examples[:1], params=model.parameters(), policy="fsm", train=True)
