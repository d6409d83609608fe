"""Ahead-of-time cells inside a Batcher (``cells=True``) (cells/aot.py, the recorder's NOTE: [Input split]): every
switch equals per-instance eager code, outputs and gradients, through one Batcher reused across
calls; data-dependent cells are refused while recording; untraceable cells fall back."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import phalanx
from phalanx.cells import CellOptions
from phalanx.cells.aot import structure_key
from phalanx.cells.kernel import CellKernel
from phalanx.data import synthetic
from phalanx.errors import DataDependentError
from phalanx.models import TreeLSTM
from phalanx.models.tagger import BiLSTMTagger

from ..oracle import assert_matches_eager

SWITCHES = {"default": True, "no-split": CellOptions(split=False), "no-hoist": CellOptions(hoist=False),
            "no-merge": CellOptions(merge=False), "dense-grads": CellOptions(sparse_grads=False),
            "no-defer": CellOptions(defer_grads=False), "no-group": CellOptions(group=False),
            "no-distinct": CellOptions(distinct_rows=False),
            "all-off": CellOptions.all_off(), "probe": False}


def _sentences(lengths, seed=0, vocab=20, tags=5):
    gen = torch.Generator().manual_seed(seed)
    return [([int(w) for w in torch.randint(vocab, (n,), generator=gen)],
             [int(t) for t in torch.randint(tags, (n,), generator=gen)]) for n in lengths]


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_tagger_every_switch_matches_eager(switch):
    torch.manual_seed(0)
    model = BiLSTMTagger(20, 6, embed_dim=4, num_tags=5)
    batcher = phalanx.Batcher(model.loss, cells=SWITCHES[switch], verify=True)
    data = _sentences([1, 5, 2, 7, 3])
    assert_matches_eager(model.loss, data, params=model.parameters(), train=True, batcher=batcher)
    assert_matches_eager(model.loss, data[:1], params=model.parameters(), train=True, batcher=batcher)
    assert_matches_eager(model.loss, [], params=model.parameters(), train=True, batcher=batcher)
    inference = phalanx.Batcher(model.forward, cells=SWITCHES[switch], verify=True)
    assert_matches_eager(model.forward, [w for w, _ in data], batcher=inference)
    names = {s.name for s in batcher.table.sigs}
    options = SWITCHES[switch]
    split = options is True or (options is not False and options.split)
    assert ("cell LSTMStep[input part]" in names) == split
    aot = [s for s in batcher.table.sigs if isinstance(s.kernel, CellKernel)]
    assert bool(aot) == (SWITCHES[switch] is not False)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(1, 6), max_size=5), st.integers(0, 3))
def test_tagger_random_lengths_one_batcher(lengths, seed):
    torch.manual_seed(seed)
    model = BiLSTMTagger(20, 6, embed_dim=4, num_tags=5)
    batcher = phalanx.Batcher(model.loss, verify=True, cells=True)
    assert_matches_eager(model.loss, _sentences(lengths, seed), params=model.parameters(), train=True,
                         batcher=batcher)


def test_input_part_runs_as_one_batch_per_direction():
    """The split's point: every token's input projection of one direction in ONE batch."""
    torch.manual_seed(0)
    model = BiLSTMTagger(20, 6, embed_dim=4, num_tags=5)
    batcher = phalanx.Batcher(model.forward, profile=True, cells=True)
    with torch.no_grad():
        batcher([w for w, _ in _sentences([4, 6, 3, 5])])
    per_op = batcher.stats.per_op
    parts = {name: row for name, row in per_op.items() if "[input part]" in name}
    assert parts and all(row["batches"] <= 2 for row in parts.values()), per_op


def test_hoisted_values_follow_optimizer_steps():
    torch.manual_seed(0)
    model = TreeLSTM(30, 8, embed_dim=4)
    trees = [(t, i % 5) for i, t in enumerate(synthetic.random_trees(5, 0, 30))]
    batcher = phalanx.Batcher(model.loss, verify=True, cells=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)      # Adam: needs dense gradients
    for _ in range(3):
        assert_matches_eager(model.loss, trees, params=model.parameters(), train=True, batcher=batcher)
        opt.zero_grad()
        torch.stack([o for o in batcher(trees)]).sum().backward()
        assert all(p.grad is None or not p.grad.is_sparse for p in model.parameters())
        opt.step()
    with torch.no_grad():
        assert_matches_eager(model.loss, trees, batcher=batcher)


class SparseLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 4, sparse=True)
        self.out = nn.Linear(4, 3)

    def forward(self, word):
        return torch.tanh(self.out(self.embed(word)))


def test_user_sparse_embedding_keeps_sparse_gradients():
    torch.manual_seed(0)
    leaf = phalanx.cell(SparseLeaf())
    weight = next(m for m in leaf.modules() if isinstance(m, nn.Embedding)).weight
    words = [3, 7, 3, 11]
    torch.stack([leaf(w) for w in words]).pow(2).sum().backward()
    want = weight.grad.to_dense()
    for p in leaf.parameters():
        p.grad = None
    torch.stack(phalanx.Batcher(leaf, verify=True, cells=True)(words)).pow(2).sum().backward()
    assert weight.grad.is_sparse
    torch.testing.assert_close(weight.grad.to_dense(), want)


@phalanx.cell
class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        return y if y.sum() > 0 else -y          # a decision on the cell's own data


def test_data_dependent_cell_is_refused_while_recording():
    cell = Branchy()
    batcher = phalanx.Batcher(lambda x: cell(x), cells=True)
    with pytest.raises(DataDependentError, match="Branchy.*fibers"):
        batcher.record([torch.randn(4), torch.randn(4)])


def test_closure_tensor_cell_falls_back_to_probing():
    scale = torch.randn(4)

    @phalanx.cell
    def scaled(x):
        return torch.tanh(x * scale)

    xs = [torch.randn(4) for _ in range(3)]
    batcher = assert_matches_eager(lambda x: scaled(x), xs, batcher=phalanx.Batcher(lambda x: scaled(x), cells=True))
    sig = next(s for s in batcher.table.sigs if s.name == "cell scaled")
    assert not isinstance(sig.kernel, CellKernel)
    assert "closure" in next(iter(sig.meta["aot"].errors.values()))


def test_dropout_cell_batches_per_training_flag():
    @phalanx.cell
    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.lin(x))

    cell = Drop()
    xs = [torch.randn(4) for _ in range(4)]
    batcher = phalanx.Batcher(lambda x: cell(x), cells=True)
    cell.eval()
    assert_matches_eager(lambda x: cell(x), xs, batcher=batcher)
    cell.train()
    with torch.no_grad():
        out = torch.stack(batcher(xs))
    dropped = out == 0
    assert dropped.any() and not dropped.all()       # independent draws per row, not one shared mask


def test_same_structure_shares_a_trace_but_not_weights():
    torch.manual_seed(0)
    a, b = TreeLSTM(30, 8, embed_dim=4), TreeLSTM(30, 8, embed_dim=4)
    assert structure_key(a.internal) == structure_key(b.internal)
    trees = synthetic.random_trees(4, 1, 30)
    batcher_a = assert_matches_eager(a, trees, batcher=phalanx.Batcher(a, cells=True))
    batcher_b = assert_matches_eager(b, trees, batcher=phalanx.Batcher(b, cells=True))
    program = {s.name: s.kernel.program for s in batcher_a.table.sigs if isinstance(s.kernel, CellKernel)}
    other = {s.name: s.kernel.program for s in batcher_b.table.sigs if isinstance(s.kernel, CellKernel)}
    name = "cell TreeLSTMInternal"
    assert program[name].main is other[name].main                       # one trace
    assert program[name].params()[0] is not other[name].params()[0]      # each reads its own weights
    c = TreeLSTM(30, 8, embed_dim=4)
    c.internal.register_forward_hook(lambda m, i, o: o)
    assert structure_key(c.internal) is None                             # hooks: never shared



class TwoLinears(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.a, self.b = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, h, x):
        return torch.tanh(self.a(h) + self.b(x))


class TiedChain(nn.Module):
    def __init__(self, tied: bool, frozen: bool):
        super().__init__()
        self.mix = phalanx.cell(TwoLinears)()
        if tied:
            self.mix.b.weight = self.mix.a.weight
        self.mix.a.bias.requires_grad_(not frozen)

    def forward(self, inst):
        h, xs = inst
        for x in xs:
            h = self.mix(h, x)
        return h


@pytest.mark.parametrize("first", [(True, False), (False, True), (True, True)])
def test_tied_or_frozen_parameters_never_share_a_trace_with_other_ones(first):
    """A program traced with ``b.weight is a.weight`` reads one weight: an untied model of the same
    class served by it would silently use ``a.weight`` for ``b`` (wrong outputs, no gradient for
    ``b.weight``). Ties and requires_grad are part of the structure key."""
    gen = torch.Generator().manual_seed(3)
    instances = [(torch.randn(3, generator=gen), [torch.randn(3, generator=gen) for _ in range(1 + k % 3)])
                 for k in range(5)]
    torch.manual_seed(0)
    earlier, plain = TiedChain(*first), TiedChain(False, False)
    assert structure_key(earlier.mix) != structure_key(plain.mix)
    for model in (earlier, plain):
        params = [p for p in model.parameters() if p.requires_grad]
        assert_matches_eager(model, instances, params=params, train=True, batcher=phalanx.Batcher(model, cells=True))

def test_gradient_penalty_through_traced_cells():
    """create_graph=True re-runs the flush with dense, differentiable embedding gradients."""
    torch.manual_seed(0)
    model = TreeLSTM(30, 8, embed_dim=4)
    trees = synthetic.random_trees(4, 1, 30)
    params = list(model.parameters())

    def penalty_grads(outputs):
        total = sum((o * torch.arange(1.0, o.numel() + 1).reshape(o.shape)).sum() for o in outputs)
        grads = torch.autograd.grad(total, params, create_graph=True)
        return torch.autograd.grad(sum((g ** 2).sum() for g in grads), params, allow_unused=True)

    expected = penalty_grads([model(t) for t in trees])
    got = penalty_grads(phalanx.Batcher(model, cells=True)(trees))
    assert sum(e is not None for e in expected) >= 5
    for g, e in zip(got, expected, strict=True):
        assert (g is None) == (e is None)
        if e is not None:
            assert not g.is_sparse
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def _program_of(batcher, name):
    return next(s.kernel.program for s in batcher.table.sigs if s.name == name and isinstance(s.kernel, CellKernel))


@pytest.mark.parametrize("plan", [False, "auto"])
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_inference_consumes_input_projections_and_writes_outputs_direct(plan, grad_mode):
    """NOTE: [Consumed operands] and [Direct outputs] (cells/inplace.py): each LSTM step's GEMM
    accumulates into its own rows of the input projections, which the input part computed straight
    into its arena rows; every call (a reused Batcher, several layouts) still equals eager."""
    torch.manual_seed(0)
    model = BiLSTMTagger(20, 6, embed_dim=4, num_tags=5).eval()
    batcher = phalanx.Batcher(model.forward, cells=True, verify=True, plan=plan)
    for lengths, seed in (([4, 6, 3, 5], 0), ([1], 1), ([], 2), ([7, 1, 2, 2, 9, 3], 3)):
        assert_matches_eager(model.forward, [w for w, _ in _sentences(lengths, seed)], batcher=batcher,
                             grad_mode=grad_mode)
    rest = _program_of(batcher, "cell LSTMStep[rest]")
    assert rest.consumable and rest.info["consumed_ops"] >= 1
    consuming = rest._variant(True, False)[0].__self__.graph     # (the executor ran the direct one)
    assert "addmm_" in [n.target for n in consuming.nodes if n.op == "call_method"]
    assert _program_of(batcher, "cell LSTMStep[input part]").direct_outputs() == (True,)
    # h and c, elementwise results the in-place rewrite would write into the gate buffer, are
    # computed into their arena rows by the program that also consumes the input projections
    assert rest.direct_outputs() == (True, True)
    both = rest.variants[(True, True)][0].__self__.graph
    assert sum("out" in n.kwargs for n in both.nodes if n.op == "call_function") == 2
    assert "addmm_" in [n.target for n in both.nodes if n.op == "call_method"]
    # a training call after the inference calls: the autograd program never overwrites an operand
    data = _sentences([3, 5, 2])
    train = phalanx.Batcher(model.loss, cells=True, verify=True)
    assert_matches_eager(model.loss, data, params=model.parameters(), train=True, batcher=train)


@pytest.mark.parametrize("defer", [True, False])
def test_weight_gradients_of_a_flush_take_one_gemm_per_weight(defer, monkeypatch):
    # NOTE: [Deferred GEMM gradients]: every batch's (X, G) of one weight joins one GEMM at the end
    from phalanx.cells import defer as deferral

    torch.manual_seed(0)
    model = TreeLSTM(30, 6, embed_dim=4)
    rng = synthetic.as_generator(3)
    data = [(synthetic.random_binary_tree(n, rng, 30), n % 3) for n in (2, 5, 3, 7, 1)]
    gemms = []
    original = deferral.DeferredGemms.gradients

    def counted(self, targets):
        gemms.append(self.counts())
        return original(self, targets)

    monkeypatch.setattr(deferral.DeferredGemms, "gradients", counted)
    batcher = phalanx.Batcher(model.loss, cells=CellOptions(defer_grads=defer), verify=True)
    assert_matches_eager(model.loss, data, params=model.parameters(), train=True, batcher=batcher)
    assert gemms, "the flush's backward did not ask for deferred gradients"
    if defer:
        # leaf, node and classifier weights; the node weight collected one pair per internal batch
        assert len(gemms[0]) == 3 and max(gemms[0].values()) > 1
    else:
        assert gemms[0] == {}
