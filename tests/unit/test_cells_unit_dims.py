"""cells/unit_dims.py (NOTE: [Unit dimensions]). Cells that unsqueeze a 1-D input (nn.LSTMCell,
nn.GRUCell, a Linear on one row) run on (rows, N) without the unit dimension, with the same values
bit for bit as the program that keeps it, and equal the per-instance cell in outputs and
gradients; where the rule does not hold (an operand broadcasting through the unit dimension, a
reader outside the rule, a unit value returned) the graph keeps it."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.cells import build, compile_cell

from ..cells_oracle import avals, compile_and_check, random_operands
from ..oracle import assert_matches_eager


class LSTM(nn.Module):
    def __init__(self, n=5, h=6):
        super().__init__()
        self.cell = nn.LSTMCell(n, h)

    def forward(self, x, h, c):
        return self.cell(x, (h, c))


class GRU(nn.Module):
    def __init__(self, n=5, h=6):
        super().__init__()
        self.cell = nn.GRUCell(n, h)

    def forward(self, x, h):
        return self.cell(x, h)


class RowLinear(nn.Module):
    """A Linear on one row, as code written for a batch of one often does."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 6)

    def forward(self, x, y):
        row = torch.tanh(self.lin(x.unsqueeze(0))) * 2 - y.unsqueeze(0)
        a, b = row.split([2, 4], dim=-1)
        return torch.cat([torch.sigmoid(a), b + 1], dim=1).squeeze(0), self.lin(x)


class ThroughUnit(nn.Module):
    """(1, 6) + (3, 6): the parameter broadcasts along the unit dimension, which must stay."""

    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.randn(3, 6))

    def forward(self, x):
        return torch.tanh(x.unsqueeze(0) + self.m)


class ReadOutside(nn.Module):
    """A unit value read by a reduction (not in the rule) and one returned with its unit dimension."""

    def forward(self, x):
        u = torch.sigmoid(x.unsqueeze(0))
        v = torch.tanh(x.unsqueeze(0))
        return (u * 2).squeeze(0), u.sum(-1), v


def _unit_values(program) -> list:
    """Values the program computes with a size-1 dimension after the batch."""
    return [n for n in program.graph.nodes if n.op == "call_function" and isinstance(n.meta.get("val"), torch.Tensor)
            and n.meta["val"].dim() >= 2 and n.meta["val"].shape[1] == 1]


def _check(cell, examples):
    return compile_and_check(cell, examples, sizes=(0, 1, 5), exact=False)


def _same_as_without(cell, examples, monkeypatch) -> None:
    """The rewritten program's values equal, bit for bit, those of the program that keeps the units."""
    with_units = compile_cell(cell.forward, cell, avals(examples))
    monkeypatch.setattr(build, "drop_unit_dims", lambda graph: 0)
    kept = compile_cell(cell.forward, cell, avals(examples))
    monkeypatch.undo()
    operands = random_operands(examples, 7, torch.Generator().manual_seed(1))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            for a, b in zip(with_units(operands, 7), kept(operands, 7), strict=True):
                assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("make, examples, removed", [
    (LSTM, [torch.zeros(5), torch.zeros(6), torch.zeros(6)], 4),    # unsqueeze c, reshape of the gates, 2 squeezes
    (GRU, [torch.zeros(5), torch.zeros(6)], 5),
    (RowLinear, [torch.zeros(5), torch.zeros(6)], 1),
])
def test_cells_on_one_row_run_without_the_unit_dimension(make, examples, removed, monkeypatch):
    torch.manual_seed(0)
    cell = make()
    program = _check(cell, examples)
    assert program.info["unit_dims"] >= removed
    assert _unit_values(program) == []
    _same_as_without(cell, examples, monkeypatch)


def test_an_lstm_step_loses_its_unsqueeze_and_squeezes():
    torch.manual_seed(0)
    program = _check(LSTM(), [torch.zeros(5), torch.zeros(6), torch.zeros(6)])
    targets = {n.target for n in program.graph.nodes}
    aten = torch.ops.aten
    assert not targets & {aten.unsqueeze.default, aten.squeeze.dims, aten.squeeze.dim, aten._unsafe_view.default}


@pytest.mark.parametrize("make, examples", [
    (ThroughUnit, [torch.zeros(6)]),
    (ReadOutside, [torch.zeros(6)]),
])
def test_the_unit_dimension_stays_where_the_rule_does_not_hold(make, examples):
    torch.manual_seed(0)
    program = _check(make(), examples)
    assert program.info["unit_dims"] == 0
    assert _unit_values(program) != []


def test_a_gru_over_sequences_matches_eager():
    torch.manual_seed(0)
    cell = phalanx.cell(nn.GRUCell(4, 5))

    def encode(xs):
        h = torch.zeros(5)
        for x in xs:
            h = cell(x, h)
        return h

    gen = torch.Generator().manual_seed(2)
    for count in (0, 1, 6):
        instances = [torch.randn(int(torch.randint(1, 5, (), generator=gen)), 4, generator=gen) for _ in range(count)]
        assert_matches_eager(encode, instances, params=list(cell.parameters()))
        assert_matches_eager(encode, instances, params=list(cell.parameters()), train=True)
        batcher = phalanx.Batcher(encode, cells=True)
        assert_matches_eager(encode, instances, params=list(cell.parameters()), batcher=batcher)
        assert_matches_eager(encode, instances, params=list(cell.parameters()), batcher=batcher, train=True)
