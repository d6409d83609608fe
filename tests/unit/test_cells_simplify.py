"""cells/simplify.py. Shape round trips: a reshape chain back to its start shape is dropped; one
that changes the shape, or whose middle is read elsewhere, is kept. Fused gate activations: adjacent
chunks under one activation take one call; a chunk read elsewhere, or a split along the batch, is
left alone. Programs still equal the cell (outputs and gradients)."""
import torch
from torch import nn

from phalanx.models.tagger import LSTMStep
from phalanx.models.treelstm import TreeLSTMInternal

from ..cells_oracle import compile_and_check

_ATEN = torch.ops.aten


class Shapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x, m):
        back = x.unsqueeze(0).reshape(6)            # a round trip: dropped
        middle = m.unsqueeze(0)                     # read twice: the trip through it stays
        flat = m.reshape(12)                        # changes the shape: stays
        return self.lin(back) * 2, middle.reshape(2, 6) + middle.sum(), flat


def _check(cell, examples):
    return compile_and_check(cell, examples)


def test_round_trips_are_dropped_and_other_reshapes_kept():
    torch.manual_seed(0)
    program = _check(Shapes(), [torch.zeros(6), torch.zeros(2, 6)])
    assert program.info["round_trips"] >= 1
    # the flattening reshape survives (as a view / reshape of the [rows, 2, 6] operand)
    assert any(n.target in (_ATEN.view.default, _ATEN.reshape.default, _ATEN._unsafe_view.default)
               and tuple(n.meta["val"].shape[1:]) == (12,) for n in program.graph.nodes)


def test_an_lstm_step_reads_its_operands_without_reshaping_them():
    torch.manual_seed(0)
    cell = LSTMStep(4, 6)
    program = _check(cell, [torch.zeros(4), torch.zeros(6), torch.zeros(6)])
    assert program.info["round_trips"] == 2          # x and h straight into their GEMMs
    gemms = [n for n in program.graph.nodes if n.target is _ATEN.addmm.default]
    operands = [n for n in program.graph.nodes if n.op == "placeholder"][-3:]
    assert {g.args[1] for g in gemms} == set(operands[:2])


def _activations(program) -> list:
    return [n.target for n in program.graph.nodes if n.target in (_ATEN.sigmoid.default, _ATEN.tanh.default)]


def test_an_lstm_step_runs_its_adjacent_input_and_forget_sigmoids_as_one():
    torch.manual_seed(0)
    program = _check(LSTMStep(4, 6), [torch.zeros(4), torch.zeros(6), torch.zeros(6)])
    assert program.info["fused_gates"] == 1           # i and f; g (tanh) sits between f and o
    assert _activations(program).count(_ATEN.sigmoid.default) == 2


def test_a_treelstm_node_runs_its_four_sigmoids_as_one():
    torch.manual_seed(0)
    program = _check(TreeLSTMInternal(5), [torch.zeros(5)] * 4)
    assert program.info["fused_gates"] == 3
    assert _activations(program).count(_ATEN.sigmoid.default) == 1


class Gates(nn.Module):
    """Chunk a is also read raw (not fused); b, c and d are; so are the halves of the [2, 6] operand
    (split along its dim 0, which is dim 1 of the batched rows: a feature split)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 12)

    def forward(self, x, pair):
        a, b, c, d = self.lin(x).chunk(4, -1)
        top, bottom = pair.chunk(2, 0)
        return torch.sigmoid(a) + a, torch.sigmoid(b), torch.sigmoid(c) * torch.sigmoid(d), \
            torch.tanh(top) + torch.tanh(bottom)


def test_only_chunks_read_by_their_activation_alone_are_fused():
    torch.manual_seed(0)
    program = _check(Gates(), [torch.zeros(3), torch.zeros(2, 6)])
    assert program.info["fused_gates"] == 3     # b, c, d: one sigmoid; the pair's halves: one tanh
    assert _activations(program).count(_ATEN.sigmoid.default) == 2


def test_a_split_along_the_batch_dimension_is_left_alone():
    from torch.fx.experimental.proxy_tensor import make_fx

    from phalanx.cells.simplify import fuse_gate_activations

    def fn(x):
        return tuple(torch.sigmoid(piece) for piece in x.split(2, 1))

    graph = make_fx(fn, tracing_mode="fake")(torch.zeros(3, 6)).graph
    for node in graph.nodes:
        node.meta["bdim"] = 1           # as if the rows were laid out along dim 1
    assert fuse_gate_activations(graph) == 0
    for node in graph.nodes:
        node.meta["bdim"] = 0
    assert fuse_gate_activations(graph) == 2
