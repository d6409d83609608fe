"""Child-sum TreeLSTM on EWT dependency trees as they are: phalanx and the hand-batched baseline
match the eager model, outputs and gradients; awkward CoNLL-U (multiword tokens, empty nodes,
non-projective arcs, one-word sentences) loads and runs."""
import pytest
import torch

import phalanx
from phalanx import data
from phalanx.models.childsum import ChildSumTreeLSTM, ewt_examples, manual_childsum
from tests.models.zoo_checks import AWKWARD_CONLLU, assert_manual_matches_eager
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def examples_and_model():
    examples, vocab = ewt_examples("dev", 12)
    torch.manual_seed(0)
    return examples, ChildSumTreeLSTM(len(vocab), 8, embed_dim=6)


def test_trees_are_dependency_trees_with_variable_arity(examples_and_model):
    examples, _ = examples_and_model
    arities = {len(node.children) for tree, _ in examples for node in tree.nodes_postorder()}
    assert 0 in arities and 1 in arities and max(arities) >= 3   # leaves, unary and wide nodes
    assert all(node.word != data.NO_WORD for tree, _ in examples for node in tree.nodes_postorder())


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
def test_phalanx_matches_eager_on_ewt(examples_and_model, policy):
    examples, model = examples_and_model
    if policy == "fsm":
        examples = examples[:4]   # fsm trains itself on the graph: Q-learning over many op types is slow
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_every_arity_is_one_op_type(examples_and_model):
    # Ragged operands (NOTE: [Ragged operands]): the stacked children of every arity are one op type,
    # with the cells' own code (segments) and with traced cells alike.
    examples, model = examples_and_model
    arities = {len(n.children) for t, _ in examples for n in t.nodes_postorder() if n.children}
    assert len(arities) >= 3
    for cells in (False, True):
        graph = phalanx.Batcher(model, cells=cells).record([t for t, _ in examples])
        node_types = {graph.sigs[s].describe() for s in graph.used_sids if "ChildSumNode" in graph.sigs[s].name}
        assert len(node_types) == 1


def test_manual_baseline_matches_eager(examples_and_model):
    examples, model = examples_and_model
    trees, labels = [t for t, _ in examples], [y for _, y in examples]
    assert_manual_matches_eager(model, lambda: torch.stack([model(t) for t in trees]),
                                lambda: manual_childsum(model, trees))
    assert_manual_matches_eager(model, lambda: torch.stack([model.loss(x) for x in examples]),
                                lambda: manual_childsum(model, trees, labels))


def test_awkward_conllu_loads_and_runs(examples_and_model):
    _, model = examples_and_model
    sentences = data.parse_conllu(AWKWARD_CONLLU)
    vocab = data.Vocab.build((w for s in sentences for w in s.words), lowercase=True)
    labels = data.Vocab.build((r for s in sentences for r in s.deprels), lowercase=False, pad_token=None)
    trees = [data.dependency_tree(s, vocab, labels) for s in sentences]
    assert [t.size() for t in trees] == [6, 1]           # the multiword token and empty node are skipped
    know = trees[0]
    assert [vocab.tokens[c.word] for c in know.children] == ["i", "n't", "it", "."]
    assert [vocab.tokens[c.word] for c in know.children[2].children] == ["do"]   # the crossing arc
    assert_matches_eager(model.loss, [(t, 3) for t in trees], params=model.parameters(), train=True)
    assert_manual_matches_eager(model, lambda: torch.stack([model(t) for t in trees]),
                                lambda: manual_childsum(model, trees))
