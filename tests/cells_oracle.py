"""Oracle for cell programs: a batched program must equal the per-instance cell row by row, in its
outputs and in the gradients w.r.t. every operand and every parameter."""
from __future__ import annotations

import torch
from torch import nn

from phalanx.cells import densify
from phalanx.ir.aval import aval_of

from .oracle import assert_close_structures, weighted_total


def random_operands(examples, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Batched operands like ``examples`` (one instance's operands): floats normal, ints in
    [0, high) where an int example holds ``high``."""
    out = []
    for ex in examples:
        if ex.is_floating_point():
            out.append(torch.randn((size, *ex.shape), generator=gen, dtype=ex.dtype).requires_grad_())
        else:
            out.append(torch.randint(int(ex), (size, *ex.shape), generator=gen, dtype=ex.dtype))
    return out


def avals(examples):
    return [aval_of(e) for e in examples]


def eager_rows(cell: nn.Module, operands: list[torch.Tensor], size: int) -> list:
    return [nn.Module.__call__(cell, *[o[i] for o in operands]) for i in range(size)]


def _grads(total, tensors):
    if not total.requires_grad:
        return [None] * len(tensors)
    grads = torch.autograd.grad(total, tensors, allow_unused=True)
    return [densify(g) for g in grads]


def assert_program_matches_cell(program, cell: nn.Module, operands: list[torch.Tensor], size: int,
                                rtol=1e-4, atol=1e-5) -> None:
    params = [p for p in cell.parameters() if p.requires_grad]
    float_ops = [o for o in operands if o.requires_grad]
    expected = eager_rows(cell, operands, size)
    outs = program(operands, size)
    got = [program.unflatten([o[i] for o in outs]) for i in range(size)]
    assert_close_structures([tuple(map(torch.Tensor.detach, _leaves(g))) for g in got],
                            [tuple(map(torch.Tensor.detach, _leaves(e))) for e in expected], rtol, atol)
    for o, a in zip(outs, program.out_avals, strict=True):
        assert tuple(o.shape) == (size, *a.shape) and o.dtype == a.dtype
    want = _grads(weighted_total(expected), float_ops + params)
    have = _grads(weighted_total(got), float_ops + params) if size else [None] * len(want)
    for w, h, t in zip(want, have, float_ops + params, strict=True):
        if w is None or size == 0:
            assert h is None or torch.count_nonzero(h) == 0
        else:
            assert h is not None, f"no gradient for a tensor of shape {tuple(t.shape)}"
            torch.testing.assert_close(h, w, rtol=rtol, atol=atol)


def assert_inference_matches_autograd(program, operands: list[torch.Tensor], size: int, exact: bool = True) -> None:
    """Under no_grad a program may overwrite its own temporaries (NOTE: [In-place inference]): it
    must give the autograd program's values and leave every operand as it was. ``exact``: bit for
    bit (true of the LSTM / TreeLSTM cells); otherwise within an ulp (an in-place op on a gate's
    strided piece may take a kernel's scalar path where the out-of-place op on a contiguous
    temporary is vectorized: a GRUCell, see the NOTE)."""
    before = [o.detach().clone() for o in operands]
    with torch.no_grad():
        quiet = program(operands, size)
    for o, b in zip(operands, before, strict=True):
        assert torch.equal(o.detach(), b), "the program overwrote an operand"
    loud = program(operands, size)
    for q, o in zip(quiet, loud, strict=True):
        if exact:
            assert torch.equal(q, o.detach()), "the no_grad program differs from the autograd one"
        else:
            torch.testing.assert_close(q, o.detach(), rtol=1e-6, atol=1e-7)


def compile_and_check(cell: nn.Module, examples, sizes=(0, 1, 4), exact: bool = True):
    """The cell's program, checked against the cell (outputs and gradients) and its no_grad variant
    against the autograd one, on random operands of each batch size."""
    from phalanx.cells import compile_cell

    program = compile_cell(cell.forward, cell, avals(examples))
    gen = torch.Generator().manual_seed(0)
    for size in sizes:
        operands = random_operands(examples, size, gen)
        assert_program_matches_cell(program, cell, operands, size)
        assert_inference_matches_autograd(program, operands, size, exact)
    return program


def _leaves(x):
    return list(torch.utils._pytree.tree_leaves(x))
