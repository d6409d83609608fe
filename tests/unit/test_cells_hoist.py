"""Hoisting: parameter-only values are computed once per parameter state and recomputed after an
optimizer step, a replaced parameter, a freeze, or a switch between no_grad and training."""
import torch

from phalanx.cells import CellOptions, compile_cell
from phalanx.models.tagger import LSTMStep
from phalanx.models.treelstm import TreeLSTMInternal

from ..cells_oracle import assert_program_matches_cell, avals, random_operands

H = 5
EXAMPLES = [torch.zeros(H)] * 4


def make():
    torch.manual_seed(0)
    cell = TreeLSTMInternal(H)
    return cell, compile_cell(cell._phalanx_fn(), cell, avals(EXAMPLES))


def test_transposed_weight_is_hoisted_and_reused_while_parameters_are_unchanged():
    cell, program = make()
    hoisted = program.hoisted_values()
    assert any(torch.equal(h, cell.gates.weight.t()) for h in hoisted)
    # the per-batch graph no longer transposes the weight
    assert not any(n.target is torch.ops.aten.t.default for n in program.graph.nodes)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        program(random_operands(EXAMPLES, 2, gen), 2)     # grad mode changed: computed once more
        before = program.hoist.computed
        for size in (3, 4, 5):
            program(random_operands(EXAMPLES, size, gen), size)
        assert program.hoist.computed == before   # cached across calls


def test_hoisted_values_are_recomputed_after_an_optimizer_step():
    cell, program = make()
    opt = torch.optim.SGD(cell.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        program.begin_flush()
        operands = random_operands(EXAMPLES, 4, gen)
        outs = program(operands, 4)
        computed = program.hoist.computed
        assert_program_matches_cell(program, cell, operands, 4)     # same flush, same weights: reused
        assert program.hoist.computed == computed
        (outs[0].sum() + outs[1].pow(2).sum()).backward()
        opt.step()
        opt.zero_grad()
        hoisted = program.hoisted_values()
        assert program.hoist.computed == computed + 1
        assert any(torch.equal(h, cell.gates.weight.t()) for h in hoisted)


def test_no_grad_values_never_serve_a_training_call():
    cell, program = make()
    gen = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        program(random_operands(EXAMPLES, 3, gen), 3)
    with torch.no_grad():
        program(random_operands(EXAMPLES, 3, gen), 3)
    assert_program_matches_cell(program, cell, random_operands(EXAMPLES, 3, gen), 3)


def test_one_training_flush_shares_hoisted_values_and_the_next_flush_recomputes():
    cell, program = make()
    gen = torch.Generator().manual_seed(3)
    program.begin_flush()
    computed = program.hoist.computed
    for size in (2, 3):
        program(random_operands(EXAMPLES, size, gen), size)
    assert program.hoist.computed == computed + 1
    program.begin_flush()
    program(random_operands(EXAMPLES, 2, gen), 2)
    assert program.hoist.computed == computed + 2


def test_hoisting_off_keeps_the_transpose_in_the_batch_graph():
    torch.manual_seed(0)
    cell = LSTMStep(3, H)
    program = compile_cell(cell._phalanx_fn(), cell, avals([torch.zeros(3), torch.zeros(H), torch.zeros(H)]),
                           options=CellOptions(hoist=False))
    assert program.hoisted_values() == ()
    assert any(n.target is torch.ops.aten.t.default for n in program.graph.nodes)
