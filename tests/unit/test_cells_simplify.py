"""Shape round trips (cells/simplify.py): a reshape chain back to its start shape is dropped; one
that changes the shape, or whose middle is read elsewhere, is kept; programs still equal the cell."""
import torch
from torch import nn

from phalanx.cells import compile_cell
from phalanx.models.tagger import LSTMStep

from ..cells_oracle import assert_inference_matches_autograd, assert_program_matches_cell, avals, random_operands

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
    program = compile_cell(cell.forward, cell, avals(examples))
    gen = torch.Generator().manual_seed(0)
    for size in (0, 1, 4):
        operands = random_operands(examples, size, gen)
        assert_program_matches_cell(program, cell, operands, size)
        assert_inference_matches_autograd(program, operands, size)
    return program


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
