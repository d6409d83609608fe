"""Executor edge cases: mixed dtypes, non-differentiable outputs, reuse across calls."""
import torch
from torch import nn

import phalanx
from tests.oracle import assert_matches_eager


@phalanx.cell
class Classify(nn.Module):
    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.out = nn.Linear(dim, classes)

    def forward(self, x):
        logits = self.out(x)
        return logits, logits.argmax(-1)          # a float and an int64 output


def test_training_with_integer_outputs_alongside_float_ones():
    torch.manual_seed(0)
    model = Classify()
    xs = [torch.randn(4) for _ in range(5)]
    got = phalanx.Batcher(model)(xs)
    for x, (logits, label) in zip(xs, got, strict=True):
        exp_logits, exp_label = model(x)
        torch.testing.assert_close(logits, exp_logits)
        assert label.dtype == torch.int64 and label == exp_label and not label.requires_grad
    torch.stack([g[0] for g in got]).sum().backward()
    expected = torch.autograd.grad(torch.stack([model(x)[0] for x in xs]).sum(), model.out.weight)[0]
    torch.testing.assert_close(model.out.weight.grad, expected)


def test_float64_model():
    torch.manual_seed(1)
    model = nn.Linear(3, 3).double()

    def fn(x):
        return torch.tanh(model(x)) * model(x).sum()

    xs = [torch.randn(3, dtype=torch.float64) for _ in range(4)]
    assert_matches_eager(fn, xs, params=model.parameters(), train=True, rtol=1e-10, atol=1e-12)


def test_one_batcher_serves_calls_of_different_sizes_and_shapes():
    torch.manual_seed(2)
    lin = nn.Linear(5, 5)
    batcher = phalanx.Batcher(lambda x: lin(x).relu())
    for n, shape in ((3, (5,)), (1, (5,)), (7, (2, 5)), (0, (5,)), (4, (5,))):
        xs = [torch.randn(shape) for _ in range(n)]
        got = batcher(xs)
        assert len(got) == n
        for x, g in zip(xs, got, strict=True):
            torch.testing.assert_close(g, lin(x).relu())


def test_results_keep_their_structure_and_concrete_parts():
    lin = nn.Linear(2, 2)

    def fn(x):
        return {"h": lin(x), "pair": (x * 2, None), "constant": torch.ones(1)}

    xs = [torch.randn(2) for _ in range(3)]
    for x, g in zip(xs, phalanx.Batcher(fn)(xs), strict=True):
        assert set(g) == {"h", "pair", "constant"} and g["pair"][1] is None
        torch.testing.assert_close(g["h"], lin(x))
        torch.testing.assert_close(g["pair"][0], x * 2)
        assert torch.equal(g["constant"], torch.ones(1))


def test_cell_closing_over_a_derived_tensor_trains_across_several_batches():
    # W2 is not a leaf: its graph (W2 = W * 2) is shared by every batch's backward.
    torch.manual_seed(3)
    W = nn.Parameter(torch.randn(3, 3))
    W2 = W * 2

    @phalanx.cell
    def step(x):
        return torch.tanh(W2 @ x)

    def fn(n):
        x = torch.ones(3)
        for _ in range(n):
            x = step(x)
        return x

    got = phalanx.Batcher(fn)([1, 2, 3])
    torch.stack(got).sum().backward(retain_graph=True)
    expected = torch.autograd.grad(torch.stack([fn(n) for n in (1, 2, 3)]).sum(), W)[0]
    torch.testing.assert_close(W.grad, expected)


def test_training_with_float_number_operands():
    torch.manual_seed(4)
    lin = nn.Linear(2, 2)

    @phalanx.cell
    def scaled(x, factor):
        return lin(x) * factor              # factor arrives as a 0-d float tensor

    xs = [(torch.randn(2), float(i) + 0.5) for i in range(4)]
    assert_matches_eager(lambda inst: scaled(*inst), xs, params=lin.parameters(), train=True)


def test_profile_accounts_for_every_batch_forward_and_backward():
    from phalanx.models import TreeLSTM
    from phalanx.data import synthetic

    model = TreeLSTM(30, 8)
    batcher = phalanx.Batcher(model.loss, profile=True)
    examples = [(t, 1) for t in synthetic.random_trees(6, 0, 30)]
    torch.stack(batcher(examples)).sum().backward()
    per_op = batcher.stats.per_op
    assert sum(r["batches"] for r in per_op.values()) == batcher.stats.batches
    assert sum(r["nodes"] for r in per_op.values()) == batcher.stats.nodes
    assert all(r["forward_s"] > 0 and r["backward_s"] > 0 for r in per_op.values())
    assert phalanx.Batcher(model).stats.per_op == {}


def test_one_shot_batch_matches_eager_and_reuses_its_batcher():
    from phalanx import api

    lin = nn.Linear(3, 2)

    def fn(x):
        return torch.sigmoid(lin(x))

    xs = [torch.randn(3) for _ in range(4)]
    got = phalanx.batch(fn, xs)
    for x, g in zip(xs, got, strict=True):
        torch.testing.assert_close(g, fn(x))
    phalanx.batch(fn, xs[:2], policy="agenda")
    assert len(api._CACHE[fn]) == 2               # one table per distinct option set
    table = api._CACHE[fn][(None, (("policy", "agenda"),))][0]
    phalanx.batch(fn, xs[:3], policy="agenda")
    assert len(api._CACHE[fn]) == 2               # ...reused, not rebuilt
    assert api._CACHE[fn][(None, (("policy", "agenda"),))][0] is table


def test_one_shot_batch_does_not_keep_the_model_alive():
    import gc
    import weakref

    from phalanx.models import TreeLSTM
    from phalanx.data import synthetic

    model = TreeLSTM(30, 8, embed_dim=4)
    phalanx.batch(model, synthetic.random_trees(3, 0, 30))
    phalanx.batch(model.encode, synthetic.random_trees(3, 0, 30))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_numbers_of_two_dtypes_across_batches_of_every_size():
    # build_steps picks every number of a flush at once and cuts one tensor per dtype into the
    # batches' lists: int and float numbers, in several batches of sizes 1 and up, in order.
    torch.manual_seed(5)
    emb, lin = nn.Embedding(10, 3), nn.Linear(3, 3)

    @phalanx.cell
    def step(h, word, scale):
        return torch.tanh(lin(h) + emb(word)) * scale

    def fn(inst):
        words, h = inst
        for i, w in enumerate(words):
            h = step(h, w, 0.5 + i)
        return h

    xs = [([w % 10 for w in range(k, 2 * k + 1)], torch.randn(3)) for k in range(5)]
    assert_matches_eager(fn, xs, params=[*emb.parameters(), *lin.parameters()], train=True)
