"""Merging: a TreeLSTM cell written with one nn.Linear per gate runs one matmul per batch, with the
concatenated weight hoisted, and equals the per-instance cell."""
import pytest
import torch
from torch import nn

from phalanx.cells import CellOptions, compile_cell, split_program
from phalanx.models.tagger import LSTMStep

from ..cells_oracle import assert_program_matches_cell, avals, random_operands

H = 6


class PerGateTreeLSTM(nn.Module):
    """Binary TreeLSTM node as a textbook writes it: a separate layer per gate."""

    def __init__(self, hidden):
        super().__init__()
        self.i, self.fl, self.fr, self.o, self.u = (nn.Linear(2 * hidden, hidden) for _ in range(5))

    def forward(self, hl, cl, hr, cr):
        x = torch.cat([hl, hr], dim=-1)
        c = (torch.sigmoid(self.i(x)) * torch.tanh(self.u(x)) + torch.sigmoid(self.fl(x)) * cl
             + torch.sigmoid(self.fr(x)) * cr)
        return torch.sigmoid(self.o(x)) * torch.tanh(c), c


def mms(program):
    return sum(1 for n in program.graph.nodes if n.target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default))


@pytest.mark.parametrize("hoist", [True, False])
def test_per_gate_linears_merge_into_one_matmul(hoist):
    torch.manual_seed(0)
    cell = PerGateTreeLSTM(H)
    examples = [torch.zeros(H)] * 4
    merged = compile_cell(cell.forward, cell, avals(examples), options=CellOptions(hoist=hoist))
    separate = compile_cell(cell.forward, cell, avals(examples), options=CellOptions(hoist=hoist, merge=False))
    assert merged.info["merged"] == [5]
    assert (mms(merged), mms(separate)) == (1, 5)   # (add)mm nodes
    if hoist:
        gates = (cell.i, cell.u, cell.fl, cell.fr, cell.o)      # call order
        weights = torch.cat([g.weight.t() for g in gates], 1)
        biases = torch.cat([g.bias for g in gates])
        hoisted = merged.hoisted_values()
        assert any(h.shape == weights.shape and torch.equal(h, weights) for h in hoisted)
        assert any(h.shape == biases.shape and torch.equal(h, biases) for h in hoisted)
    gen = torch.Generator().manual_seed(0)
    for size in (0, 1, 6):
        operands = random_operands(examples, size, gen)
        assert_program_matches_cell(merged, cell, operands, size)
        assert_program_matches_cell(separate, cell, operands, size)


def test_matmuls_on_different_inputs_are_not_merged():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(H, H), nn.Linear(H, H)

        def forward(self, x, y):
            return self.a(x) * self.b(y)

    torch.manual_seed(0)
    cell = TwoInputs()
    program = compile_cell(cell.forward, cell, avals([torch.zeros(H)] * 2))
    assert program.info["merged"] == [] and mms(program) == 2
    operands = random_operands([torch.zeros(H)] * 2, 5, torch.Generator().manual_seed(1))
    assert_program_matches_cell(program, cell, operands, 5)


def test_bias_adds_fold_into_addmm():
    from phalanx.models.tagger import LSTMStep

    torch.manual_seed(0)
    cell = LSTMStep(3, H)
    examples = [torch.zeros(3), torch.zeros(H), torch.zeros(H)]
    fused = compile_cell(cell._phalanx_fn(), cell, avals(examples))
    plain = compile_cell(cell._phalanx_fn(), cell, avals(examples), options=CellOptions(merge=False))

    def count(program, op):
        return sum(n.target is op for n in program.graph.nodes)

    aten = torch.ops.aten
    assert fused.info["fused_bias"] == 2
    assert (count(fused, aten.addmm.default), count(fused, aten.mm.default)) == (2, 0)
    assert (count(plain, aten.addmm.default), count(plain, aten.mm.default)) == (0, 2)
    operands = random_operands(examples, 5, torch.Generator().manual_seed(0))
    assert_program_matches_cell(fused, cell, operands, 5)


class RecurrentFirst(nn.Module):
    """An RNN step written recurrent part first: ``h W_hh + x W_ih`` with operands (x, h)."""

    def __init__(self, hidden):
        super().__init__()
        self.ih, self.hh = nn.Linear(3, hidden), nn.Linear(hidden, hidden)

    def forward(self, x, h):
        return torch.tanh(self.hh(h) + self.ih(x))


def _adds(program):
    return sum(1 for n in program.graph.nodes if n.target is torch.ops.aten.add.Tensor)


@pytest.mark.parametrize("cell_factory", [lambda: LSTMStep(3, H), lambda: RecurrentFirst(H)],
                         ids=["lstm", "recurrent-first"])
def test_a_sum_of_two_gemms_accumulates_into_the_one_over_earlier_operands(cell_factory):
    torch.manual_seed(0)
    cell = cell_factory()
    examples = [torch.zeros(3)] + [torch.zeros(H)] * (2 if isinstance(cell, LSTMStep) else 1)
    program = compile_cell(cell.forward, cell, avals(examples))
    plain = compile_cell(cell.forward, cell, avals(examples), options=CellOptions(merge=False))
    assert program.info["accumulated"] == 1
    assert mms(program) == mms(plain) == 2 and _adds(program) < _adds(plain)
    # the input part (over x) holds the inner GEMM with both biases; the rest accumulates into it
    split = split_program(program, {0})
    assert split.worthwhile
    inner = [n for n in split.prefix.graph.nodes if n.target is torch.ops.aten.addmm.default]
    outer = [n for n in split.rest.graph.nodes if n.target is torch.ops.aten.addmm.default]
    assert len(inner) == len(outer) == 1 and outer[0].args[0].op == "placeholder"
    biases = [p for name, p in cell.named_parameters() if "bias" in name]
    assert len(biases) == 2
    bias_sum = biases[0] + biases[1]
    assert any(h.shape == bias_sum.shape and torch.allclose(h, bias_sum) for h in program.hoisted_values())
    gen = torch.Generator().manual_seed(0)
    for size in (0, 1, 6):
        assert_program_matches_cell(program, cell, random_operands(examples, size, gen), size)


def test_a_gemm_added_to_a_non_gemm_is_left_alone():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(H, H)

        def forward(self, x):
            return self.lin(x) + torch.tanh(x)

    cell = Residual()
    program = compile_cell(cell.forward, cell, avals([torch.zeros(H)]))
    assert program.info["accumulated"] == 0
    assert_program_matches_cell(program, cell, random_operands([torch.zeros(H)], 4, torch.Generator()), 4)
