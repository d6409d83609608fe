"""NOTE: [Distinct rows] (runtime/distinct.py): a training batch of a pure cell whose operands are all
numbers runs on its distinct rows; outputs and gradients must still equal the per-instance eager loop."""
import pytest
import torch
from torch import fx, nn

import phalanx
from phalanx.data import synthetic
from phalanx.models import BiLSTMTagger, TreeLSTM
from phalanx.runtime import distinct as distinct_mod
from phalanx.runtime import executor
from tests.oracle import assert_matches_eager, weighted_total
from tests.property import test_zoo_oracle as zoo

VOCAB = 10


class Seen(list):
    def __init__(self):
        super().__init__()
        self.lazy = []


@pytest.fixture
def applied(monkeypatch):
    """(batch size, distinct rows) of every batch the training forward ran on its distinct rows;
    ``seen.lazy``: those whose operands were arena rows (NOTE: [Row classes])."""
    seen = Seen()

    def spy(step, operands, flags, classes):
        found = distinct_mod.distinct_rows(step, operands, flags, classes)
        if found is not None:
            (seen if found[0].first is None else seen.lazy).append((step.size, found[0].step.size))
        return found

    monkeypatch.setattr(executor, "distinct_rows", spy)
    return seen


def make_model(seed=0):
    torch.manual_seed(seed)
    return TreeLSTM(VOCAB, 8, embed_dim=6)


def trees(seed, n=12):
    """Enough trees over a small vocabulary that the leaves' batch repeats words."""
    return synthetic.random_trees(n, seed, VOCAB)


def test_repeated_leaves_run_once_per_word_and_match_eager_across_optimizer_steps(applied):
    model = make_model()
    params = list(model.parameters())
    batcher = phalanx.Batcher(model, verify=True)
    optimizer = torch.optim.SGD(params, lr=0.5)
    for seed in range(3):       # one Batcher; hoisted weights recomputed after every step
        assert_matches_eager(model, trees(seed), params=params, train=True, batcher=batcher)
        optimizer.step()
    leaves = [(size, count) for size, count in applied if size >= 32]
    assert leaves and all(count <= VOCAB for _, count in leaves)


def test_the_switch_turns_it_off(applied):
    from phalanx.cells import CellOptions

    model = make_model()
    batcher = phalanx.Batcher(model, cells=CellOptions(distinct_rows=False), verify=True)
    assert_matches_eager(model, trees(0), params=list(model.parameters()), train=True, batcher=batcher)
    assert not applied and not applied.lazy


def test_sparse_embedding_keeps_a_sparse_gradient(applied):
    model = make_model()
    model.leaf.embed = nn.Embedding(VOCAB, 6, sparse=True)
    batch = trees(1)
    weighted_total([model(t) for t in batch]).backward()
    expected = [p.grad.to_dense().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    weighted_total(phalanx.Batcher(model, verify=True)(batch)).backward()
    assert applied
    assert model.leaf.embed.weight.grad.is_sparse
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad.to_dense(), e, rtol=1e-4, atol=1e-5)


def test_an_unused_instance_with_nan_does_not_poison_gradients(applied):
    # NOTE: [Rows the loss does not use]: the slow path re-runs the leaves' distinct rows
    model = make_model()
    batch = trees(2)
    poison = VOCAB - 1
    for tree in batch:
        for leaf in tree.leaves():
            if leaf.word == poison:
                leaf.word = 0
    next(batch[0].leaves()).word = poison
    with torch.no_grad():
        model.leaf.embed.weight[poison] = float("nan")
    weighted_total([model(t) for t in batch[1:]]).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    outs = phalanx.Batcher(model, verify=True)(batch)
    assert torch.isnan(outs[0]).all()
    weighted_total(outs[1:]).backward()
    assert applied
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)


@phalanx.cell
class Angle(nn.Module):
    """atan2(x, -1) is pi for +0.0 and -pi for -0.0: equal numbers, different bits, different rows."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(2, 3)

    def forward(self, x, k=1):
        return self.out(torch.stack([torch.atan2(x, x - x - 1), x * k]))


@pytest.mark.parametrize("operands", [1, 2])
def test_numbers_are_distinct_by_their_bits_and_by_every_operand(applied, operands):
    torch.manual_seed(1)
    model = Angle()
    values = [0.0, -0.0, 1.5]
    instances = [(values[i % 3], i % 2)[:operands] for i in range(40)]
    got = assert_matches_eager(lambda inst: model(*inst), instances, params=list(model.parameters()), train=True)
    assert applied == [(40, 3 * operands)]
    results = got(instances[:6])
    assert not torch.equal(results[0], results[1])     # +0.0 and -0.0 stayed apart


@phalanx.cell
class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(1, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.out(x.reshape(1)))


def test_random_cells_are_never_run_on_distinct_rows(applied):
    torch.manual_seed(2)
    model = Noisy().train()
    outs = phalanx.Batcher(lambda x: model(x), verify=True)([1.0] * 40)
    weighted_total(outs).backward()
    assert not applied
    assert len({tuple(o.tolist()) for o in outs}) > 1       # every instance its own mask


def _graph(op) -> fx.Graph:
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(op, (x, x) if op is torch.ops.aten.add_.Tensor else (x,)))
    return graph


@pytest.mark.parametrize("op, pure", [(torch.ops.aten.tanh.default, True),
                                      (torch.ops.aten.bernoulli.default, False),
                                      (torch.ops.aten.add_.Tensor, False)])
def test_only_graphs_without_random_or_mutating_ops_are_pure(op, pure):
    assert distinct_mod._pure_graph(_graph(op)) is pure


ZOO = ["childsum", "treegru", "mvrnn", "twotype", "nested", "lattice_gru", "lattice_lstm", "dag"]


# The zoo models with a number-only cell (a leaf or an embedding) batched over enough rows to repeat.
REPEATING = {"treegru", "mvrnn", "twotype", "nested"}


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_train_like_eager_with_batches_big_enough_to_repeat_rows(applied, name):
    # instances large enough over the zoo's 30-word vocabulary that number-only batches repeat rows
    m = zoo.model(name)
    assert_matches_eager(m.loss, zoo.instances(name, 0, [10] * 5), params=m.parameters(), train=True,
                         batcher=phalanx.Batcher(m.loss, verify=True))
    assert bool(applied) == (name in REPEATING)


def test_a_tagger_projects_each_distinct_word_once_and_matches_eager(applied):
    # NOTE: [Row classes]: the embeddings' batch runs on distinct words; the LSTM input projections
    # read only its rows, so they run on distinct words too, their gradients summed back
    torch.manual_seed(3)
    model = BiLSTMTagger(VOCAB, 8, embed_dim=6)
    rng = torch.Generator().manual_seed(0)
    sentences = [(torch.randint(0, VOCAB, (n,), generator=rng).tolist(),
                  torch.randint(0, 5, (n,), generator=rng).tolist()) for n in (14, 12, 15, 10, 13)]
    assert_matches_eager(model.loss, sentences, params=list(model.parameters()), train=True,
                         batcher=phalanx.Batcher(model.loss, verify=True))
    assert applied and applied.lazy and all(count <= VOCAB for _, count in applied.lazy)


# *** inference (runtime/executor.py run_inference) ***

@pytest.fixture
def any_size(monkeypatch):
    """Small test cells run on distinct rows in inference too (NOTE: MIN_INFERENCE_MACS)."""
    monkeypatch.setattr(distinct_mod, "MIN_INFERENCE_MACS", 0)


def test_inference_runs_distinct_rows_only_where_the_rows_gemms_are_large(applied):
    for hidden, expect in ((8, False), (192, True)):         # leaf GEMM 8 x 24, 192 x 576
        torch.manual_seed(0)
        model = TreeLSTM(VOCAB, hidden, embed_dim=hidden).eval()
        assert_matches_eager(model, trees(0), batcher=phalanx.Batcher(model, verify=True))
        assert any(size >= 32 for size, _ in applied) == expect
        applied.clear()


def test_inference_runs_repeated_leaves_once_and_matches_eager(applied, any_size):
    model = make_model().eval()
    batcher = phalanx.Batcher(model, verify=True)
    for seed in range(2):
        assert_matches_eager(model, trees(seed), batcher=batcher)
    assert any(size >= 32 and count <= VOCAB for size, count in applied)


def test_inference_tagger_projects_each_distinct_word_once(applied, any_size):
    torch.manual_seed(3)
    model = BiLSTMTagger(VOCAB, 8, embed_dim=6).eval()
    rng = torch.Generator().manual_seed(0)
    sentences = [torch.randint(0, VOCAB, (n,), generator=rng).tolist() for n in (14, 12, 15, 10, 13)]
    assert_matches_eager(model, sentences, batcher=phalanx.Batcher(model, verify=True))
    assert applied and applied.lazy and all(count <= VOCAB for _, count in applied.lazy)


def test_inference_with_the_switch_off_or_random_cells_never_runs_distinct_rows(applied, any_size):
    from phalanx.cells import CellOptions

    model = make_model().eval()
    assert_matches_eager(model, trees(0), batcher=phalanx.Batcher(model, cells=CellOptions(distinct_rows=False)))
    torch.manual_seed(2)
    noisy = Noisy().train()             # dropout in training mode, under no_grad: a mask per row
    with torch.no_grad():
        outs = phalanx.Batcher(lambda x: noisy(x))([1.0] * 40)
    assert not applied and not applied.lazy
    assert len({tuple(o.tolist()) for o in outs}) > 1


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_infer_like_eager_with_batches_big_enough_to_repeat_rows(applied, any_size, name):
    m = zoo.model(name).eval()           # the per-instance losses, under no_grad
    try:
        assert_matches_eager(m.loss, zoo.instances(name, 0, [10] * 5), batcher=phalanx.Batcher(m.loss, verify=True))
    finally:
        m.train()
    assert bool(applied) == (name in REPEATING)
