"""Splitting by dependence: LSTMStep's input projection is a prefix over x alone; prefix then rest
equals the whole cell (outputs and gradients), and the prefix can run at another batch."""
import pytest
import torch

from phalanx.cells import CellOptions, auto_split, compile_cell, split_program
from phalanx.models.tagger import LSTMStep
from phalanx.models.treelstm import TreeLSTMInternal

from ..cells_oracle import assert_program_matches_cell, avals, random_operands

X, H = 3, 5
EXAMPLES = [torch.zeros(X), torch.zeros(H), torch.zeros(H)]


class Chained:
    """prefix over the kept operands, then rest: the same call contract as a CellProgram."""

    def __init__(self, split, program):
        self.split, self.program = split, program
        self.out_avals, self.unflatten = program.out_avals, program.unflatten

    def __call__(self, operands, size):
        kept = [operands[i] for i in self.split.keep]
        others = [o for i, o in enumerate(operands) if i not in self.split.keep]
        return self.split.rest([*self.split.prefix(kept, size), *others], size)


@pytest.mark.parametrize("hoist", [True, False])
def test_lstm_input_projection_splits_off_and_chains_back_exactly(hoist):
    torch.manual_seed(0)
    cell = LSTMStep(X, H)
    program = compile_cell(cell._phalanx_fn(), cell, avals(EXAMPLES), options=CellOptions(hoist=hoist))
    split = split_program(program, {0})
    assert split.worthwhile
    gemms = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
    assert sum(n.target in gemms for n in split.prefix.graph.nodes) == 1     # W_ih x + b_ih
    assert sum(n.target in gemms for n in split.rest.graph.nodes) == 1       # W_hh h + b_hh
    assert split.prefix.in_avals == program.in_avals[:1]
    gen = torch.Generator().manual_seed(0)
    for size in (0, 1, 4):
        assert_program_matches_cell(Chained(split, program), cell, random_operands(EXAMPLES, size, gen), size)


def test_prefix_runs_over_all_tokens_at_once():
    torch.manual_seed(0)
    cell = LSTMStep(X, H)
    program = compile_cell(cell._phalanx_fn(), cell, avals(EXAMPLES))
    split = split_program(program, {0})
    xs = torch.randn(9, X)
    projected, = split.prefix([xs], 9)           # one GEMM for 9 tokens
    h = c = torch.zeros(1, H)
    for t in range(9):                            # then the recurrence, one row per step
        h, c = split.rest([projected[t:t + 1], h, c], 1)
        eh, ec = cell.lstm(xs[t], (h.new_zeros(H) if t == 0 else eh, ec if t else h.new_zeros(H)))
        torch.testing.assert_close(h[0], eh)
        torch.testing.assert_close(c[0], ec)


def test_auto_split_honours_the_switch_and_refuses_splits_without_a_gemm():
    torch.manual_seed(0)
    cell = LSTMStep(X, H)
    assert auto_split(compile_cell(cell._phalanx_fn(), cell, avals(EXAMPLES)), {0}) is not None
    assert auto_split(compile_cell(cell._phalanx_fn(), cell, avals(EXAMPLES), options=CellOptions(split=False)),
                      {0}) is None
    # TreeLSTMInternal's only GEMM reads hl and hr together: nothing worth splitting over cl alone
    internal = TreeLSTMInternal(H)
    assert auto_split(compile_cell(internal._phalanx_fn(), internal, avals([torch.zeros(H)] * 4)), {1}) is None


def test_split_needs_a_proper_subset():
    cell = LSTMStep(X, H)
    program = compile_cell(cell._phalanx_fn(), cell, avals(EXAMPLES))
    with pytest.raises(ValueError, match="proper subset"):
        split_program(program, {0, 1, 2})


def test_split_parts_refuse_parameters_that_changed_dtype():
    from phalanx.errors import BatchExecutionError

    cell = LSTMStep(X, H)
    split = split_program(compile_cell(cell._phalanx_fn(), cell, avals(EXAMPLES)), {0})
    cell.double()
    with pytest.raises(BatchExecutionError, match=r"LSTMStep\[prefix \[0\]\]: the cell's parameters changed dtype"):
        split.prefix([torch.zeros(2, X, dtype=torch.float64)], 2)
