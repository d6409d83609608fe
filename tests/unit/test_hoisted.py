"""Hoisted inputs (runtime/hoisted.py, NOTE: [Hoisted inputs]): in inference, the part of a
ragged cell that reads only its number operands runs once per flush; results equal eager.

These Batchers run the cell's own code (``cells=False``): with traced cells, a cell that only
reduces its ragged argument takes NOTE: [Reduced ragged programs] instead (the same nodes under it:
tests/unit/test_cells_reduced.py)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import phalanx
from phalanx.runtime.hoisted import FlushInputs, HoistedRows, rnn_rest
from phalanx.runtime import ragged as ragged_runtime
from phalanx.runtime.ragged import RaggedKernel
from tests.oracle import assert_matches_eager

H = 6


@phalanx.cell
class RnnNode(nn.Module):
    """A lattice node over any torch RNN cell: (word, predecessors' states stacked) -> state."""

    def __init__(self, kind: str, bias: bool = True, max_norm=None):
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(20, H, max_norm=max_norm)
        cls = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "tanh": nn.RNNCell, "relu": nn.RNNCell}[kind]
        extra = {"nonlinearity": kind} if kind in ("tanh", "relu") else {}
        self.rnn = cls(H, H, bias=bias, **extra)

    def forward(self, word, hs, cs=None):
        x = self.embed(word)
        if self.kind == "lstm":
            return self.rnn(x, (hs.mean(-2), cs.mean(-2)))
        return self.rnn(x, hs.mean(-2))


@phalanx.cell
class ScaledNode(nn.Module):
    """Its input projection's weight is computed in the cell (a new tensor at every call, which
    could as well come from an operand): only the embedding's tanh is hoisted."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, H)
        self.w = nn.Parameter(torch.randn(H, H))

    def forward(self, word, hs):
        h = hs.mean(-2)
        x = torch.tanh(self.embed(word))
        return torch.tanh(F.linear(x, self.w * 0.5) + h) + x


@phalanx.cell
class InPlaceNode(nn.Module):
    """Writes into its embedding through a view and with ``inplace=True`` before using it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, H)
        self.rnn = nn.GRUCell(H, H)

    def forward(self, word, hs):
        x = self.embed(word)
        F.relu(x, inplace=True)
        x.unsqueeze(0).mul_(2)
        return self.rnn(x, hs.mean(-2))


class Lattice(nn.Module):
    """One instance: per node, its predecessors (earlier node ids); node 0 is a fixed start."""

    def __init__(self, node: nn.Module):
        super().__init__()
        self.node = node
        self.register_buffer("h0", torch.linspace(-1, 1, H), persistent=False)

    def forward(self, preds):
        lstm = getattr(self.node, "kind", None) == "lstm"
        hs, cs = [self.h0], [self.h0]
        for i, ps in enumerate(preds):
            if lstm:
                h, c = self.node((i * 7 + len(ps)) % 20, torch.stack([hs[p] for p in ps]),
                                 torch.stack([cs[p] for p in ps]))
                cs.append(c)
            else:
                h = self.node((i * 7 + len(ps)) % 20, torch.stack([hs[p] for p in ps]))
            hs.append(h)
        return torch.stack(hs[1:])


def _lattice(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = int(torch.randint(1, min(i + 1, 4) + 1, (1,), generator=g))
        out.append(tuple(sorted(set(torch.randint(0, i + 1, (k,), generator=g).tolist()) | {i})))
    return out


INSTANCES = [_lattice(n, s) for n, s in ((7, 0), (3, 1), (9, 2), (1, 3), (5, 4))]


@pytest.fixture
def flushes(monkeypatch) -> list:
    """Every FlushInputs made (one per ragged op type with number operands and flush)."""
    made = []

    class Recorded(FlushInputs):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ragged_runtime, "FlushInputs", Recorded)
    return made


def _hoisted_calls(inputs) -> set:
    """What a flush computed over all rows: the row-wise functions and the RNN cell kinds."""
    return {key[0] for key in inputs.results}


def _ragged_kernels(batcher) -> list:
    return [s.meta["kernel"] for s in batcher.table.sigs if isinstance(s.meta.get("kernel"), RaggedKernel)]


@pytest.mark.parametrize("kind", ["gru", "lstm", "tanh", "relu"])
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_rnn_cells_hoist_their_input_projection_and_match_eager(kind, grad_mode, flushes):
    torch.manual_seed(0)
    model = Lattice(RnnNode(kind)).eval()
    batcher = phalanx.Batcher(model, verify=True, cells=False)
    for _ in range(2):                   # the first call decides; the second runs hoisted throughout
        assert_matches_eager(model, INSTANCES, batcher=batcher, grad_mode=grad_mode)
    assert [list(k.hoist.values()) for k in _ragged_kernels(batcher)] == [[True]]
    assert _hoisted_calls(flushes[-1]) == {F.embedding, kind}
    # Training (grad enabled) or modules in train mode never hoist, and still match.
    made = len(flushes)
    assert_matches_eager(model, INSTANCES, params=model.parameters(), train=True, batcher=batcher)
    model.train()
    assert_matches_eager(model, INSTANCES, batcher=batcher)
    assert all(not inputs.results for inputs in flushes[made:])


def test_a_cell_without_biases_hoists_too():
    torch.manual_seed(0)
    model = Lattice(RnnNode("gru", bias=False)).eval()
    batcher = phalanx.Batcher(model, verify=True, cells=False)
    for _ in range(2):
        assert_matches_eager(model, INSTANCES, batcher=batcher)
    assert all(True in k.hoist.values() for k in _ragged_kernels(batcher))


@pytest.mark.parametrize("node, hoisted", [(lambda: ScaledNode(), {F.embedding, torch.tanh}),
                                           (lambda: RnnNode("gru", max_norm=1.0), set()),
                                           (lambda: InPlaceNode(), {F.embedding})],
                         ids=["computed-weight", "embedding-max-norm", "written-in-place"])
def test_what_cannot_be_hoisted_runs_per_batch_and_matches(node, hoisted, flushes):
    # A weight the cell computes is not a parameter (it might differ per batch); an embedding
    # with max_norm renormalizes its table in place: both stay in the per-batch run.
    torch.manual_seed(0)
    model = Lattice(node()).eval()
    batcher = phalanx.Batcher(model, verify=True, cells=False)
    for _ in range(2):
        assert_matches_eager(model, INSTANCES, batcher=batcher)
    assert _hoisted_calls(flushes[-1]) == hoisted          # neither F.linear nor gru_cell


def test_rnn_rest_equals_torch_cells():
    torch.manual_seed(0)
    x, h, c = torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 3)
    for kind, fn, n in (("gru", torch.gru_cell, 3), ("lstm", torch.lstm_cell, 4),
                        ("tanh", torch.rnn_tanh_cell, 1), ("relu", torch.rnn_relu_cell, 1)):
        w_ih, w_hh = torch.randn(n * 3, 4), torch.randn(n * 3, 3)
        for b_ih, b_hh in ((torch.randn(n * 3), torch.randn(n * 3)), (None, None)):
            hx = (h, c) if kind == "lstm" else h
            expected = fn(x, hx, w_ih, w_hh, b_ih, b_hh)
            gates = F.linear(x, w_ih, b_ih)
            if kind != "gru" and b_hh is not None:
                gates = gates + b_hh
            torch.testing.assert_close(rnn_rest(kind, gates, hx, w_hh, b_hh if kind == "gru" else None), expected)


def test_hoisted_rows_stand_for_their_slice():
    full = torch.arange(12.0).reshape(6, 2)
    rows = HoistedRows(full, 2, 5, FlushInputs({}, constants=set()))
    assert rows.shape == (3, 2) and rows.dim() == 2 and len(rows) == 3 and rows.dtype == torch.float32
    torch.testing.assert_close(rows * 2, full[2:5] * 2)
    torch.testing.assert_close(torch.tanh(rows + 1), torch.tanh(full[2:5] + 1))
    torch.testing.assert_close(torch.cat([rows, rows]), torch.cat([full[2:5], full[2:5]]))
    # A row-wise call on constants (ids in ``constants``) runs once over every row.
    w = torch.randn(3, 2)
    inputs = FlushInputs({}, constants={id(w)})
    rows = HoistedRows(full, 2, 5, inputs)
    out = F.linear(rows, w)
    assert type(out) is HoistedRows and len(inputs.results) == 1
    torch.testing.assert_close(out.rows(), F.linear(full[2:5], w))
    F.linear(HoistedRows(full, 0, 2, inputs), w)
    assert len(inputs.results) == 1         # the other batch reuses the result over all rows
