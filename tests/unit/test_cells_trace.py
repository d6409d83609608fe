"""Tracing: proven batching of cell bodies, the batch size as a graph input, and clear errors for
bodies that branch on data."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.cells import compile_cell
from phalanx.errors import CellDataDependentError, CellTraceError

from ..cells_oracle import assert_program_matches_cell, avals, random_operands


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, h):
        if h.sum() > 0:            # branches on the data of one row
            return self.lin(h)
        return -h


class ReadsItem(nn.Module):
    def forward(self, h):
        return h * h.max().item()


class MasksRows(nn.Module):
    def forward(self, h):
        return h[h > 0].sum() + h


@pytest.mark.parametrize("cell", [Branchy(), ReadsItem(), MasksRows()], ids=["if", "item", "mask"])
def test_data_dependent_body_gives_a_clear_error_pointing_to_fibers(cell):
    with pytest.raises(CellDataDependentError, match=r"cell Branchy|on operands \(float32\[4\]\).*fibers") as info:
        compile_cell(cell.forward, cell, avals([torch.zeros(4)]), name=f"cell {type(cell).__name__}")
    assert isinstance(info.value, phalanx.DataDependentError)
    assert "fibers" in str(info.value) and "float32[4]" in str(info.value)


class Reshapes(nn.Module):
    """Shapes that vmap turns into batch-size-dependent literals ([B, 2, 3], [B * 6], expand to B)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3))
        self.register_buffer("scale", torch.tensor([1.0, -2.0]))

    def forward(self, x, k):
        m = x.reshape(2, 3) @ self.w                  # per-row matrix times a shared weight
        flat = m.flatten() * self.scale.repeat_interleave(3)
        return flat.softmax(-1).gather(0, k.reshape(1)) + m.sum(), torch.ones(4) * x.mean()


def test_batch_size_dependent_shapes_are_generalized_and_exact():
    torch.manual_seed(0)
    cell = Reshapes()
    examples = [torch.zeros(6), torch.tensor(6)]
    program = compile_cell(cell.forward, cell, avals(examples))
    assert program.info["trace_sizes"][0] > max(6, 3)
    gen = torch.Generator().manual_seed(0)
    for size in (0, 1, 2, 3, 6, 13):
        assert_program_matches_cell(program, cell, random_operands(examples, size, gen), size)


def test_a_cell_whose_batch_size_equals_a_dimension_is_still_right():
    # W @ x natively batched would silently "work" at batch 4 == width; the traced program is
    # vmap's exact form whatever the size.
    class LeftMul(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return self.w @ x

    cell = LeftMul()
    program = compile_cell(cell.forward, cell, avals([torch.zeros(4)]))
    assert_program_matches_cell(program, cell, random_operands([torch.zeros(4)], 4, torch.Generator()), 4)


def test_function_cell_without_closure_parameters_compiles():
    def gate(a, b):
        return torch.sigmoid(a) * torch.tanh(b)

    program = compile_cell(gate, None, avals([torch.zeros(3)] * 2))
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(program([a, b], 5)[0], torch.sigmoid(a) * torch.tanh(b))


def test_cells_reading_closure_tensors_are_refused():
    w = nn.Parameter(torch.randn(3, 3))
    message = r"cell closure on operands \(float32\[3\]\): reads a tensor from its closure"
    with pytest.raises(CellTraceError, match=message):
        compile_cell(lambda x: w @ x, None, avals([torch.zeros(3)]), name="cell closure")

    class UsesGlobal(nn.Module):
        def forward(self, x):
            return w @ x

    with pytest.raises(CellTraceError, match="not a parameter or buffer"):
        compile_cell(UsesGlobal().forward, UsesGlobal(), avals([torch.zeros(3)]))
    table = torch.randn(3, 3)      # a plain (non-parameter) global tensor: would be baked, stale
    with pytest.raises(CellTraceError, match="not a parameter or buffer"):
        compile_cell(lambda x: table @ x, None, avals([torch.zeros(3)]))


def test_untraceable_body_names_the_cell_and_shapes():
    class Random(nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5, training=True)

    with pytest.raises(CellTraceError, match=r"cell Random on operands \(float32\[3\]\)"):
        compile_cell(Random().forward, Random(), avals([torch.zeros(3)]), name="cell Random")


def test_cell_without_operands_is_computed_once_and_broadcast():
    class Start(nn.Module):
        def __init__(self):
            super().__init__()
            self.h0 = nn.Parameter(torch.randn(3))

        def forward(self):
            return torch.tanh(self.h0)

    cell = Start()
    program = compile_cell(cell.forward, cell, ())
    out, = program([], 4)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, torch.tanh(cell.h0).expand(4, 3))
    g, = torch.autograd.grad(out.sum(), [cell.h0])
    torch.testing.assert_close(g, 4 * (1 - torch.tanh(cell.h0) ** 2))
