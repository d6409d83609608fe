"""TreeLSTM on real EWT trees: phalanx and the hand-batched baseline both match the eager model."""
import pytest
import torch

import phalanx
from phalanx.models import TreeLSTM, manual_treelstm
from phalanx.models.treelstm import ewt_examples
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def data():
    examples, vocab = ewt_examples("dev", 24)
    torch.manual_seed(0)
    return examples, TreeLSTM(len(vocab), 16, embed_dim=12)


def test_examples_are_real_trees_with_root_upos_labels(data):
    examples, _ = data
    assert len(examples) == 24
    assert all(0 <= label < 17 for _, label in examples)
    assert max(tree.height() for tree, _ in examples) >= 5


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
def test_phalanx_matches_eager_on_ewt(data, policy):
    examples, model = data
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_manual_baseline_matches_eager_outputs_and_gradients(data):
    examples, model = data
    trees, labels = [t for t, _ in examples], [y for _, y in examples]
    with torch.no_grad():
        torch.testing.assert_close(manual_treelstm(model, trees), torch.stack([model(t) for t in trees]))
    model.zero_grad()
    manual_treelstm(model, trees, labels).sum().backward()
    assert model.leaf.embed.weight.grad.is_sparse      # the expert's sparse embedding gradient
    manual = [p.grad.to_dense() for p in model.parameters()]
    model.zero_grad()
    torch.stack([model.loss(x) for x in examples]).sum().backward()
    for got, expected in zip(manual, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("count", [0, 1])
def test_manual_baseline_handles_empty_and_single_tree_batches(data, count):
    examples, model = data
    trees = [t for t, _ in examples[:count]]
    with torch.no_grad():
        got = manual_treelstm(model, trees)
        assert got.shape == (count, model.classifier.out.out_features)
        if count:
            torch.testing.assert_close(got, torch.stack([model(t) for t in trees]))
        assert manual_treelstm(model, trees, [y for _, y in examples[:count]]).shape == (count,)


def test_stats_report_a_schedule_at_the_lower_bound_with_fsm(data):
    examples, model = data
    batcher = phalanx.Batcher(model, policy="fsm")
    with torch.no_grad():
        batcher([t for t, _ in examples])
    assert batcher.stats.batches == batcher.stats.lower_bound
    assert batcher.stats.nodes == sum(t.size() for t, _ in examples) + len(examples)


def test_manual_baseline_gradients_on_leaf_only_trees_and_a_repeated_backward(data):
    # Single-leaf trees (no internal level) and a second backward through the same graph: the
    # hand-written state-buffer backward must start from zero each time.
    examples, model = data
    leaves = [next(tree.leaves()) for tree, _ in examples[:3]]
    trees, labels = [examples[0][0]] + leaves, [examples[0][1]] + [1, 2, 3]
    model.zero_grad()
    loss = manual_treelstm(model, trees, labels).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    manual = [p.grad.to_dense() / 2 for p in model.parameters()]
    model.zero_grad()
    torch.stack([model.loss(x) for x in zip(trees, labels, strict=True)]).sum().backward()
    for got, expected in zip(manual, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
