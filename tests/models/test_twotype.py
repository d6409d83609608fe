"""Two-cell-type TreeLSTM (function-word vs content attachments) on binarized EWT trees: phalanx
and the hand-batched baseline match the eager model, and both internal cells are exercised."""
import pytest
import torch

import phalanx
from phalanx.models.twotype import TwoTypeTreeLSTM, ewt_examples, manual_twotype
from tests.models.zoo_checks import assert_manual_matches_eager
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def examples_and_model():
    examples, vocab, function_labels = ewt_examples("dev", 12)
    torch.manual_seed(0)
    return examples, TwoTypeTreeLSTM(len(vocab), function_labels, 8, embed_dim=6)


def test_both_internal_cells_run(examples_and_model):
    examples, model = examples_and_model
    graph = phalanx.Batcher(model).record([t for t, _ in examples])
    names = {graph.sigs[s].describe() for s in graph.used_sids}
    assert any("function_node" in n for n in names) and any("content_node" in n for n in names), names


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
def test_phalanx_matches_eager_on_ewt(examples_and_model, policy):
    examples, model = examples_and_model
    if policy == "fsm":
        examples = examples[:4]   # fsm trains itself on the graph: Q-learning over many op types is slow
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_manual_baseline_matches_eager(examples_and_model):
    examples, model = examples_and_model
    trees, labels = [t for t, _ in examples], [y for _, y in examples]
    assert_manual_matches_eager(model, lambda: torch.stack([model(t) for t in trees]),
                                lambda: manual_twotype(model, trees))
    assert_manual_matches_eager(model, lambda: torch.stack([model.loss(x) for x in examples]),
                                lambda: manual_twotype(model, trees, labels))
