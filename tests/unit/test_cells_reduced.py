"""NOTE: [Reduced ragged programs] (cells/reduced.py, runtime/ragged.py): a ragged cell that only
sums or averages its ragged argument over the ragged dim runs as segment sums plus its traced
program, equal to the per-instance eager loop; any other use of the ragged argument keeps the
probe-checked kernels, with the reason kept."""
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import phalanx
from phalanx.cells import CellOptions
from phalanx.models.lattice import LatticeRNN
from phalanx.data.synthetic import random_lattices
from tests.oracle import assert_matches_eager
from tests.unit.test_ragged import H, MeanNode


@phalanx.cell
class SumAndMeanNode(nn.Module):
    """Both reductions of one argument, spelled as functions and methods, dim 0 and negative (the
    segment kernel refuses dim 0, which is the batch dim of the rows it sees: grouped, without)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(H, H)

    def forward(self, x, hs):
        return torch.tanh(self.lin(x) + torch.sum(hs, 0) - 0.5 * hs.mean(dim=-2) + torch.mean(hs, dim=(0,)))


@phalanx.cell
class KeepdimNode(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(H, H)

    def forward(self, x, hs):
        return torch.tanh(self.lin(x) + hs.mean(0, keepdim=True).squeeze(0))


@phalanx.cell
class PerMemberNode(nn.Module):
    """Uses each member before reducing (child-sum style): no reduced form."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(H, H)

    def forward(self, x, hs):
        return torch.tanh(self.lin(x) + torch.sigmoid(hs).sum(0))


class Net(nn.Module):
    """One instance: a list of arities; node i reads ``arity`` earlier states through ``node``."""

    def __init__(self, node: nn.Module, by_word: bool):
        super().__init__()
        self.node, self.by_word = node, by_word
        self.start = nn.Parameter(torch.randn(H))
        self.inp = phalanx.cell(nn.Linear(H, H))

    def forward(self, arities):
        hs = [torch.tanh(self.start)]
        for i, k in enumerate(arities):
            preds = [(i * 7 + 3 * j) % len(hs) for j in range(k)]
            first = (i * 5 + k) % 20 if self.by_word else self.inp(hs[-1])
            hs.append(self.node(first, torch.stack([hs[p] for p in preds])))
        return torch.stack(hs[1:]) if len(hs) > 1 else hs[0]


def _ragged_kernels(batcher):
    return [s.meta["kernel"] for s in batcher.table.sigs if "ragged" in s.meta]


BATCH = [[1, 2, 3, 4, 5, 6, 7, 8], [8, 1], [3, 3, 2]]


@pytest.mark.parametrize("node, by_word", [(MeanNode, True), (SumAndMeanNode, False)])
def test_a_cell_that_only_reduces_runs_reduced_and_matches_eager(node, by_word):
    torch.manual_seed(0)
    model = Net(node(), by_word).eval()
    batcher = assert_matches_eager(model, BATCH)
    assert_matches_eager(model, BATCH, batcher=batcher)          # the second flush runs the reduced form
    (kernel,) = _ragged_kernels(batcher)
    assert kernel.mode == "ragged-reduced", kernel.reduced_errors
    # number operands (the word) go to a prefix computed over every row of the flush at once
    (form,) = kernel.reduced.values()
    assert (form.split is not None) == by_word


@pytest.mark.parametrize("node, reason", [(KeepdimNode, "dim"), (PerMemberNode, "sigmoid")])
def test_any_other_use_of_the_ragged_argument_keeps_the_segment_kernel(node, reason):
    torch.manual_seed(0)
    model = Net(node(), False).eval()
    batcher = assert_matches_eager(model, BATCH)
    assert_matches_eager(model, BATCH, batcher=batcher)
    (kernel,) = _ragged_kernels(batcher)
    assert kernel.mode in ("ragged-segment", "ragged-grouped")
    (why,) = kernel.reduced_errors.values()
    assert reason in why


@pytest.mark.parametrize("cells", [False, CellOptions(reduce_ragged=False)], ids=["probe", "switched-off"])
def test_without_cells_or_with_the_switch_off_there_is_no_reduced_form(cells):
    torch.manual_seed(0)
    model = Net(MeanNode(), True).eval()
    batcher = phalanx.Batcher(model, cells=cells)
    assert_matches_eager(model, BATCH, batcher=batcher)
    assert_matches_eager(model, BATCH, params=model.parameters(), train=True, batcher=batcher)
    (kernel,) = _ragged_kernels(batcher)
    assert kernel.reduced == {} and kernel.mode == "ragged-segment"


@pytest.mark.parametrize("node, by_word", [(MeanNode, True), (SumAndMeanNode, False)])
def test_training_runs_reduced_and_matches_eager_outputs_and_gradients(node, by_word):
    torch.manual_seed(0)
    model = Net(node(), by_word)
    batcher = phalanx.Batcher(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):          # the first flush decides; parameters move between flushes
        assert_matches_eager(model, BATCH, params=model.parameters(), train=True, batcher=batcher)
        optimizer.step()
    (kernel,) = _ragged_kernels(batcher)
    assert kernel.mode == "ragged-reduced", kernel.reduced_errors


def test_modules_in_training_mode_with_buffers_keep_the_probed_kernel():
    # The first batch's check runs the batch twice: batch-norm statistics would move twice.
    torch.manual_seed(0)
    node = MeanNode()
    node.register_buffer("calls", torch.zeros(1))
    model = Net(node, True)
    batcher = phalanx.Batcher(model)
    assert_matches_eager(model, BATCH, params=model.parameters(), train=True, batcher=batcher)
    assert _ragged_kernels(batcher)[0].reduced == {}


def test_the_prefix_runs_once_per_flush_and_new_weights_are_read():
    torch.manual_seed(0)
    model = Net(MeanNode(), True).eval()
    batcher = assert_matches_eager(model, BATCH)
    (kernel,) = _ragged_kernels(batcher)
    (flags, form), = kernel.reduced.items()
    calls = []

    def counted(operands, size, *rest):
        calls.append(size)
        return form.split.prefix.__class__.__call__(form.split.prefix, operands, size, *rest)

    kernel.reduced[flags] = dataclasses.replace(form, split=dataclasses.replace(form.split, prefix=counted))
    assert_matches_eager(model, BATCH, batcher=batcher)
    # one call over every row of the op type (each instance's first node stacks the start state, a
    # parameter's value rather than a recorded one, so it is an ordinary op)
    assert calls == [sum(len(a) - 1 for a in BATCH)]
    with torch.no_grad():                                                  # an optimizer step, say
        for p in model.parameters():
            p.add_(0.1)
    assert_matches_eager(model, BATCH, batcher=batcher)


@settings(max_examples=12, deadline=None)
@given(batch=st.lists(st.lists(st.integers(1, 8), min_size=1, max_size=5), min_size=0, max_size=4),
       by_word=st.booleans(), train=st.booleans())
def test_random_arities_match_eager(batch, by_word, train):
    torch.manual_seed(0)
    model = Net(MeanNode() if by_word else SumAndMeanNode(), by_word).train(train)
    batcher = phalanx.Batcher(model, verify=True)
    params = model.parameters() if train else ()
    assert_matches_eager(model, batch, params=params, train=train, batcher=batcher)
    assert_matches_eager(model, batch, params=model.parameters() if train else (), train=train, batcher=batcher)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_lattice_models_run_reduced(kind):
    torch.manual_seed(0)
    model = LatticeRNN(50, hidden=8, kind=kind).eval()
    lattices = random_lattices(5, 0, 50)
    batcher = assert_matches_eager(model, lattices)
    assert_matches_eager(model, lattices, batcher=batcher)
    assert {k.mode for k in _ragged_kernels(batcher)} == {"ragged-reduced"}


# (test_hoisted's max-norm embedding is left out: its trace fails only after vmap's per-row fallback
# for embedding_renorm, ~5 s; KeepdimNode and PerMemberNode above cover a cell without a reduced form)
@pytest.mark.parametrize("node", ["gru", "lstm", "tanh", "relu", "no-bias", "computed-weight", "in-place"])
def test_the_hoisting_tests_nodes_match_eager_reduced_or_not(node):
    from tests.unit.test_hoisted import INSTANCES, InPlaceNode, Lattice, RnnNode, ScaledNode

    torch.manual_seed(0)
    made = {"no-bias": lambda: RnnNode("gru", bias=False), "computed-weight": ScaledNode,
            "in-place": InPlaceNode}.get(node, lambda: RnnNode(node))
    model = Lattice(made()).eval()
    batcher = phalanx.Batcher(model, verify=True)
    for _ in range(2):
        assert_matches_eager(model, INSTANCES, batcher=batcher)


@pytest.mark.parametrize("distinct", [True, False])
def test_the_prefix_runs_once_per_distinct_character(monkeypatch, distinct):
    """NOTE: [Distinct rows] for the flush-wide prefix (a node's embedding and input projection of its
    character): computed once per distinct character, every row equal to eager's; the switch off (or
    a batch without enough repeats) computes every row."""
    from phalanx.runtime import distinct as distinct_mod

    ran = []
    real = distinct_mod.on_distinct_numbers

    def spy(program, numbers):
        outs = real(program, numbers)
        ran.append((len(numbers[0]), outs is not None, len(torch.unique(numbers[0]))))
        return outs

    monkeypatch.setattr(distinct_mod, "on_distinct_numbers", spy)
    torch.manual_seed(0)
    # hidden 160: the input GEMM does 160 x 480 multiply-adds a row, above MIN_INFERENCE_MACS
    model = LatticeRNN(6, hidden=160, kind="gru").eval()
    lattices = random_lattices(8, 1, 6)
    batcher = phalanx.Batcher(model, cells=CellOptions(distinct_rows=distinct))
    for _ in range(2):      # the first flush traces and checks the reduced form; the second hoists
        assert_matches_eager(model, lattices, batcher=batcher)
    assert ran
    rows, used, distinct_chars = ran[-1]
    assert rows >= distinct_mod.MIN_ROWS and distinct_chars <= 6
    assert used == distinct
