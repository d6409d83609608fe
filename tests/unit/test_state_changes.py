"""ONE Batcher through a whole training script: every state change between calls must keep outputs
and gradients equal to the per-instance eager loop (see docs/design.md, "What an op type may cache")."""
import copy

import pytest
import torch
from torch import nn

import phalanx
from phalanx.data import synthetic
from phalanx.models import TreeLSTM
from tests.oracle import assert_matches_eager, weighted_total


def make_model(seed=0):
    torch.manual_seed(seed)
    return TreeLSTM(30, 8, embed_dim=6)


def trees(n=6, seed=0):
    return synthetic.random_trees(n, seed, 30)


def check(batcher, model, seed=0, train=True):
    """One call of ``batcher`` against eager on fresh trees: outputs and every parameter's grad."""
    return assert_matches_eager(model, trees(seed=seed), params=list(model.parameters()), train=train,
                                batcher=batcher)


@pytest.mark.parametrize("first", ["inference_mode", "no_grad"])
def test_first_call_without_grad_then_training(first):
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    context = torch.inference_mode() if first == "inference_mode" else torch.no_grad()
    with context:
        batcher(trees(seed=1))
    check(batcher, model, seed=2)


def test_first_call_without_grad_through_phalanx_batch():
    model = make_model()
    with torch.inference_mode():
        phalanx.batch(model, trees(seed=1))
    for p in model.parameters():
        p.grad = None
    expected = weighted_total([model(t) for t in trees(seed=2)])
    expected.backward()
    want = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    weighted_total(phalanx.batch(model, trees(seed=2))).backward()
    for p, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w)


def test_freeze_then_unfreeze():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    model.internal.gates.weight.requires_grad_(False)
    check(batcher, model, seed=1)
    assert model.internal.gates.weight.grad is None
    model.internal.gates.weight.requires_grad_(True)
    check(batcher, model, seed=2)
    assert model.internal.gates.weight.grad is not None


def test_replace_layer_inside_a_cell():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    check(batcher, model, seed=1)
    model.internal.gates = nn.Linear(16, 40)
    check(batcher, model, seed=2)


def test_replace_a_parameter():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    check(batcher, model, seed=1)
    model.leaf.gates.weight = nn.Parameter(torch.randn_like(model.leaf.gates.weight))
    check(batcher, model, seed=2)


def test_load_state_dict_assign():
    model = make_model()
    other = make_model(seed=5)
    batcher = phalanx.Batcher(model, verify=True)
    check(batcher, model, seed=1)
    model.load_state_dict(copy.deepcopy(other.state_dict()), assign=True)
    check(batcher, model, seed=2)


def test_double_after_first_call():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    check(batcher, model, seed=1)
    model.double()
    got = batcher(trees(seed=2))
    assert all(g.dtype == torch.float64 for g in got)
    check(batcher, model, seed=2)


def test_optimizer_steps_between_calls():
    model = make_model()
    reference = copy.deepcopy(model)
    batcher = phalanx.Batcher(model, verify=True)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(3):
        batch = trees(seed=10 + step)
        opt.zero_grad(), ref_opt.zero_grad()
        weighted_total(batcher(batch)).backward()
        weighted_total([reference(t) for t in batch]).backward()
        opt.step(), ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_eval_then_train_mode_toggle():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    model.eval()
    check(batcher, model, seed=1, train=False)
    model.train()
    check(batcher, model, seed=2)


def test_parameter_hook_runs_once_on_the_total():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    calls = []
    weight = model.internal.gates.weight
    handle = weight.register_hook(lambda g: calls.append(1) or g * 0.5)
    try:
        weighted_total([model(t) for t in trees(seed=1)]).backward()
        expected, eager_calls = weight.grad.clone(), len(calls)
        weight.grad, calls[:] = None, []
        weighted_total(batcher(trees(seed=1))).backward()
        assert len(calls) == eager_calls == 1
        torch.testing.assert_close(weight.grad, expected)
    finally:
        handle.remove()


def _penalty_grads(outputs_fn, params):
    total = weighted_total(outputs_fn())
    grads = torch.autograd.grad(total, params, create_graph=True)
    penalty = sum((g ** 2).sum() for g in grads)
    return torch.autograd.grad(penalty, params, allow_unused=True)


def test_create_graph_gradient_penalty():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    params = list(model.parameters())
    batch = trees(n=4, seed=1)
    expected = _penalty_grads(lambda: [model(t) for t in batch], params)
    got = _penalty_grads(lambda: batcher(batch), params)
    assert sum(e is not None for e in expected) >= 5
    for g, e in zip(got, expected, strict=True):
        assert (g is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_checkpoint_around_a_batcher_call():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    batch = trees(seed=1)
    weighted_total([model(t) for t in batch]).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    total = torch.utils.checkpoint.checkpoint(lambda: weighted_total(batcher(batch)), use_reentrant=False)
    total.backward()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)


def poisoned_batch(model, poison=29):
    """Trees where only instance 0 reads word ``poison``, whose embedding is NaN."""
    batch = trees(seed=1)
    for k, tree in enumerate(batch):
        for leaf in tree.leaves():
            if leaf.word == poison:
                leaf.word = poison - 1
    next(batch[0].leaves()).word = poison
    with torch.no_grad():
        model.leaf.embed.weight[poison] = float("nan")
    return batch


def test_unused_instance_with_nan_does_not_poison_gradients():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    batch = poisoned_batch(model)
    weighted_total([model(t) for t in batch[1:]]).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    outs = batcher(batch)
    assert torch.isnan(outs[0]).all()
    weighted_total(outs[1:]).backward()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_used_instance_with_nan_gives_nan_like_eager():
    model = make_model()
    batcher = phalanx.Batcher(model, verify=True)
    batch = poisoned_batch(model)
    weighted_total(batcher(batch)).backward()
    assert torch.isnan(model.internal.gates.weight.grad).any()


def test_in_place_op_on_a_returned_result():
    model = make_model()
    batch = trees(seed=1)
    outs = phalanx.Batcher(model)(batch)
    outs[0].mul_(2)                              # allowed eagerly, so allowed here
    (outs[0].sum() + outs[1].sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    eager = [model(t) for t in batch]
    eager[0].mul_(2)
    (eager[0].sum() + eager[1].sum()).backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


def test_data_dependent_cell_never_batches_natively():
    @phalanx.cell
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.max() > 5 else x

    cell = Branchy()
    batcher = phalanx.Batcher(cell)
    small = [torch.full((3,), float(i)) for i in range(4)]      # every probe row takes one branch
    with pytest.raises(phalanx.DataDependentError, match=r"cell .*Branchy branches on tensor data.*fibers"):
        batcher(small)
    mixed = [torch.full((3,), float(i)) for i in range(10)]
    with pytest.raises(phalanx.DataDependentError, match=r"cell .*Branchy"):
        batcher(mixed)


def test_dropout_in_train_mode_on_a_fresh_batcher():
    @phalanx.cell
    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(50, 50)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.lin(x))

    torch.manual_seed(0)
    cell = Drop().train()
    xs = [torch.randn(50) for _ in range(8)]
    outs = phalanx.Batcher(cell)(xs)
    zeros = torch.stack([(o == 0) for o in outs]).float()
    assert 0.3 < zeros.mean() < 0.7                              # dropout really happened
    assert not all(torch.equal(zeros[0], z) for z in zeros[1:])  # independent masks per instance
    cell.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(phalanx.Batcher(cell)(xs)), torch.stack([cell(x) for x in xs]))


def test_bfloat16_cell_with_a_number():
    @phalanx.cell
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 16).to(torch.bfloat16)

        def forward(self, x, k):
            return torch.tanh(self.lin(x)) * k

    cell = Scale()
    xs = [(torch.randn(16, dtype=torch.bfloat16), 0.5 + i) for i in range(6)]
    with torch.no_grad():
        got = phalanx.Batcher(lambda xk: cell(*xk))(xs)
        expected = [cell(x, k) for x, k in xs]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


def test_deeply_nested_instance_lazifies():
    nested = torch.ones(3)
    for _ in range(3000):
        nested = [nested]

    def fn(x):
        while isinstance(x, list):
            x = x[0]
        return x * 2

    out, = phalanx.Batcher(fn)([nested])
    torch.testing.assert_close(out, torch.full((3,), 2.0))
