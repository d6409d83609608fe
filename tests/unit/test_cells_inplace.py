"""In-place inference (cells/inplace.py): under no_grad a program overwrites only its own temporaries,
never an operand, a parameter or a value something still reads, and gives the autograd program's
values bit for bit; direct calls reach the same kernels."""
import operator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from phalanx.cells import CellOptions, compile_cell
from phalanx.models.tagger import LSTMStep

from ..cells_oracle import assert_inference_matches_autograd, assert_program_matches_cell, avals, random_operands

H = 6


def _inplace_targets(program):
    """Targets of the no_grad program's calls (after one no_grad call built it)."""
    return [n.target for n in program.inference.__self__.graph.nodes if n.op in ("call_function", "call_method")]


def _eager_rows(fn, operands, size):
    return [fn(*[o[i] for o in operands]) for i in range(size)]


def _check(fn, examples, sizes=(0, 1, 5), seed=0):
    program = compile_cell(fn, None, avals(examples))
    gen = torch.Generator().manual_seed(seed)
    for size in sizes:
        operands = [o.detach() for o in random_operands(examples, size, gen)]
        before = [o.clone() for o in operands]
        with torch.no_grad():
            got = program(operands, size)
            want = _eager_rows(fn, operands, size)
        for o, b in zip(operands, before, strict=True):
            assert torch.equal(o, b)
        for row, expected in enumerate(want):
            expected = expected if isinstance(expected, tuple) else (expected,)
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g[row], e, rtol=1e-5, atol=1e-6)
        assert_inference_matches_autograd(program, operands, size)
    return program


def test_lstm_step_tail_runs_in_place_and_matches_the_cell():
    torch.manual_seed(0)
    cell = LSTMStep(4, H)
    examples = [torch.zeros(4), torch.zeros(H), torch.zeros(H)]
    program = compile_cell(cell._phalanx_fn(), cell, avals(examples))
    gen = torch.Generator().manual_seed(1)
    for size in (0, 1, 5):
        operands = random_operands(examples, size, gen)
        assert_program_matches_cell(program, cell, operands, size)
        assert_inference_matches_autograd(program, operands, size)
    # gate activations, the state update and the accumulating GEMM all overwrite temporaries
    assert program.info["in_place_ops"] >= 8
    targets = _inplace_targets(program)
    assert torch.sigmoid_ in targets and "addmm_" in targets and "mul_" in targets
    # the no_grad program never holds an OpOverload the direct calls cover
    assert torch.ops.aten.sigmoid.default not in targets


def test_no_inplace_option_keeps_the_functional_program():
    torch.manual_seed(0)
    cell = LSTMStep(4, H)
    examples = [torch.zeros(4), torch.zeros(H), torch.zeros(H)]
    program = compile_cell(cell._phalanx_fn(), cell, avals(examples), options=CellOptions(inplace=False))
    operands = random_operands(examples, 3, torch.Generator().manual_seed(2))
    assert_inference_matches_autograd(program, operands, 3)
    assert "in_place_ops" not in program.info
    assert not any(str(t).endswith("_") for t in _inplace_targets(program))


def test_a_temporary_read_later_is_not_overwritten():
    def fn(x):
        a = x * 2
        b = torch.sigmoid(a)     # a is read again below: sigmoid must not overwrite it
        return a + b, b

    program = _check(fn, [torch.zeros(H)])
    sig = [n for n in program.inference.__self__.graph.nodes if n.target in (torch.sigmoid, torch.sigmoid_)]
    assert [n.target for n in sig] == [torch.sigmoid]


def test_a_piece_of_a_split_keeps_its_old_values():
    def fn(x):
        t = x * 3
        first, second = t.chunk(2, -1)
        s = torch.tanh(t)           # would overwrite ``first`` and ``second``, which are returned
        return s, first, second * 2

    _check(fn, [torch.zeros(2 * H)])


def test_disjoint_pieces_are_overwritten_independently():
    def fn(x):
        i, f, g, o = (x * 1.5).chunk(4, -1)
        c = torch.sigmoid(f) * torch.tanh(g) + torch.sigmoid(i)
        return torch.sigmoid(o) * torch.tanh(c), c

    program = _check(fn, [torch.zeros(4 * H)])
    assert program.info["in_place_ops"] >= 4


def test_operands_and_views_of_operands_are_never_written():
    def fn(x, y):
        v = x.view(-1)           # a view of an operand: not the program's memory
        return torch.relu(v) * y, torch.neg(x)

    program = _check(fn, [torch.zeros(H), torch.zeros(H)])
    assert program.info["in_place_ops"] >= 1       # the product of two operand reads is a temporary


def test_broadcast_into_a_smaller_temporary_is_not_in_place():
    def fn(x, y):
        s = x.sum(-1, keepdim=True) * 2       # [1]: the product with y below is [H]
        return s * y, s

    _check(fn, [torch.zeros(H), torch.zeros(H)])


# *** random elementwise programs: the no_grad program equals eager row by row ***

UNARY = [torch.sigmoid, torch.tanh, torch.relu, torch.neg, torch.exp]
BINARY = [operator.mul, operator.add, operator.sub]


def _program(recipe):
    """A cell from a recipe: each step applies an op to values chosen by index (operands first);
    aliases make two names for one temporary; some temporaries are returned, some read again later."""
    def fn(x, y):
        values = [x, y]
        for kind, a, b, k in recipe:
            va, vb = values[a % len(values)], values[b % len(values)]
            if kind == "unary":
                values.append(UNARY[k % len(UNARY)](va * 1.0 if k % 2 else va))
            elif kind == "binary":
                values.append(BINARY[k % len(BINARY)](va, vb))
            else:               # a temporary and an alias of it: writing one changes the other
                t = va * 0.5
                values.extend((t, t.unsqueeze(0).squeeze(0) if k % 2 else t.view(-1)))
        return tuple(values[2:]) or (x * 1,)
    return fn


STEP = st.tuples(st.sampled_from(["unary", "binary", "binary", "alias"]), st.integers(0, 30), st.integers(0, 30),
                 st.integers(0, 9))


@settings(max_examples=40, deadline=None)
@given(recipe=st.lists(STEP, min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_random_elementwise_programs_match_eager(recipe, seed):
    _check(_program(recipe), [torch.zeros(2 * H), torch.zeros(2 * H)], sizes=(0, 1, 3), seed=seed)


class Explicit(nn.Module):
    """A cell with its own tensors: a parameter and a buffer that must never be written."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(H))
        self.register_buffer("b", torch.randn(H))

    def forward(self, x):
        return torch.tanh(self.w) * x + torch.sigmoid(self.b)


@pytest.mark.parametrize("hoist", [True, False])
def test_parameters_buffers_and_hoisted_values_are_never_written(hoist):
    cell = Explicit()
    w, b = cell.w.detach().clone(), cell.b.clone()
    program = compile_cell(cell.forward, cell, avals([torch.zeros(H)]), options=CellOptions(hoist=hoist))
    operands = random_operands([torch.zeros(H)], 4, torch.Generator().manual_seed(3))
    hoisted = [h.clone() for h in program.hoisted_values()] if hoist else []
    for _ in range(3):
        assert_inference_matches_autograd(program, operands, 4)
    assert torch.equal(cell.w.detach(), w) and torch.equal(cell.b, b)
    if hoist:
        with torch.no_grad():
            program(operands, 4)
            assert all(torch.equal(h, k) for h, k in zip(program.hoisted_values(), hoisted, strict=True))


def test_a_piece_taken_after_another_piece_was_overwritten_still_allows_both():
    # TreeLSTMInternal takes its gate pieces one by one between the gate ops (its tanh piece after
    # the fused sigmoid over the four others, NOTE: [Fused gate activations]): taking a piece reads
    # nothing, so every gate activation still runs in place
    from phalanx.models.treelstm import TreeLSTMInternal

    torch.manual_seed(0)
    cell = TreeLSTMInternal(H)
    examples = [torch.zeros(H)] * 4
    program = compile_cell(cell._phalanx_fn(), cell, avals(examples))
    gen = torch.Generator().manual_seed(4)
    for size in (1, 5):
        operands = random_operands(examples, size, gen)
        assert_program_matches_cell(program, cell, operands, size)
        assert_inference_matches_autograd(program, operands, size)
    assert program.info["fused_gates"] == 3
    # one sigmoid_, one tanh_, four mul_, two add_: all but the tanh of the returned cell state
    assert program.info["in_place_ops"] == 8


def test_a_piece_taken_after_the_whole_was_overwritten_keeps_the_old_values():
    def fn(x):
        t = x * 2
        s = torch.sigmoid(t)              # t's first half is read below, after this op
        first = t.chunk(2, -1)[0]
        return s, first * 1.0

    program = _check(fn, [torch.zeros(2 * H)])
    assert torch.sigmoid_ not in _inplace_targets(program)


# *** NOTE: [Consumed operands]: operands a caller hands over are overwritten only then ***

def _consuming_check(fn, examples, consumable, size=5, seed=0, module=None):
    """The consuming program equals the plain one bit for bit; it writes only handed-over operands."""
    program = compile_cell(fn, module, avals(examples))
    program.consumable = frozenset(consumable)
    operands = [o.detach() for o in random_operands(examples, size, torch.Generator().manual_seed(seed))]
    before = [o.clone() for o in operands]
    with torch.no_grad():
        want = program(operands, size)
        for o, b in zip(operands, before, strict=True):      # not asked to consume: nothing written
            assert torch.equal(o, b)
        got = program([o.clone() for o in operands], size, consume=True)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    # without consume the operands are still never written
    with torch.no_grad():
        program(operands, size)
    assert all(torch.equal(o, b) for o, b in zip(operands, before, strict=True))
    return program


class Accumulate(nn.Module):
    """``p + h @ W`` (an LSTM step's input projection plus its recurrent GEMM) and a tail ``tail``."""

    def __init__(self, n_out, tail):
        super().__init__()
        self.w = nn.Parameter(torch.randn(H, n_out))
        self.tail = tail

    def forward(self, p, h):
        return self.tail(torch.addmm(p, h.unsqueeze(0), self.w).squeeze(0), p, h)


def _gates(gates, p, h):
    i, g = gates.chunk(2, -1)
    return torch.sigmoid(i) * torch.tanh(g)


def test_a_consumed_operand_takes_the_gemm_accumulation():
    cell = Accumulate(2 * H, _gates)
    examples = [torch.zeros(2 * H), torch.zeros(H)]
    program = _consuming_check(cell.forward, examples, {0}, module=cell)
    assert program.info["consumed_ops"] >= 1       # the accumulation (traced as mm + add) writes p
    # the handed-over rows now hold the step's gates: the operand itself was written
    operands = [o.detach() for o in random_operands(examples, 3, torch.Generator().manual_seed(5))]
    p = operands[0].clone()
    with torch.no_grad():
        program(operands, 3, consume=True)
    assert not torch.equal(operands[0], p)


def test_a_consumed_operand_read_again_is_not_overwritten():
    cell = Accumulate(H, lambda gates, p, h: torch.tanh(gates) + p)     # p's old values read after the GEMM
    program = _consuming_check(cell.forward, [torch.zeros(H), torch.zeros(H)], {0}, module=cell)
    assert program.info["consumed_ops"] == 0


def test_an_operand_not_handed_over_is_never_written():
    cell = Accumulate(H, lambda gates, p, h: torch.sigmoid(gates))
    # the GEMM could accumulate into p, but only h is handed over
    program = _consuming_check(cell.forward, [torch.zeros(H), torch.zeros(H)], {1}, module=cell)
    assert program.info["consumed_ops"] == 0


@settings(max_examples=25, deadline=None)
@given(recipe=st.lists(STEP, min_size=1, max_size=8), seed=st.integers(0, 1000),
       which=st.sampled_from([{0}, {1}, {0, 1}]))
def test_random_programs_consuming_operands_match(recipe, seed, which):
    _consuming_check(_program(recipe), [torch.zeros(2 * H), torch.zeros(2 * H)], which, size=3, seed=seed)


# *** NOTE: [Direct outputs]: an output made by an op with an out= form lands in the caller's buffer ***

class Project(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(H, 2 * H)

    def forward(self, x, y):
        return self.lin(x), torch.relu(y)        # the first is one addmm; relu has no out= form


def test_an_output_is_computed_into_the_buffer_given():
    cell = Project()
    examples = [torch.zeros(H), torch.zeros(H)]
    program = compile_cell(cell.forward, cell, avals(examples))
    assert program.direct_outputs() == (True, False)
    operands = random_operands(examples, 4, torch.Generator().manual_seed(6))
    arena = torch.full((7, 2 * H), -1.0)
    with torch.no_grad():
        want = program(operands, 4)
        got = program(operands, 4, into=[arena[2:6], None])
    assert torch.equal(arena[2:6], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(arena[:2], torch.full((2, 2 * H), -1.0)) and torch.equal(arena[6:], torch.full((1, 2 * H), -1.0))
    assert_inference_matches_autograd(program, operands, 4)


class Reuse(nn.Module):
    def __init__(self, tail):
        super().__init__()
        self.lin = nn.Linear(H, H)
        self.tail = tail

    def forward(self, x):
        t = self.lin(x)
        return self.tail(t)


def test_an_output_returned_twice_is_not_direct():
    cell = Reuse(lambda t: (t, t))
    program = compile_cell(cell.forward, cell, avals([torch.zeros(H)]))
    assert program.direct_outputs() is None
    eligible = Reuse(lambda t: (t,))
    assert compile_cell(eligible.forward, eligible, avals([torch.zeros(H)])).direct_outputs() == (True,)


def test_an_output_read_again_and_seen_through_views_lands_in_the_buffer():
    # t (one addmm) is returned through a view and read again by the sigmoid and the mul, whose
    # elementwise results land in buffers of their own
    cell = Reuse(lambda t: (t.unsqueeze(0).view(2, -1), torch.sigmoid(t), t.mul(2.0)))
    program = compile_cell(cell.forward, cell, avals([torch.zeros(H)]))
    assert program.direct_outputs() == (True, True, True)
    operands = random_operands([torch.zeros(H)], 3, torch.Generator().manual_seed(7))
    buffers = [torch.empty(3, 2, H // 2), torch.empty(3, H), torch.empty(3, H)]
    with torch.no_grad():
        want = program(operands, 3)
        program(operands, 3, into=buffers)
    for b, w in zip(buffers, want, strict=True):
        assert torch.equal(b, w)


def test_an_in_place_output_prefers_the_callers_buffer():
    # the LSTM step's h and c: the in-place rewrite writes them into the gate buffer, the direct
    # program computes them into the caller's rows instead, with the same values
    torch.manual_seed(3)
    cell = LSTMStep(4, H)
    examples = [torch.zeros(4), torch.zeros(H), torch.zeros(H)]
    program = compile_cell(cell._phalanx_fn(), cell, avals(examples))
    assert program.direct_outputs() == (True, True)
    run = program._variant(False, True)[0]
    calls = {n.target: n.kwargs.get("out") for n in run.__self__.graph.nodes if n.op == "call_function"}
    assert calls.get(torch.mul) is not None and calls.get(torch.add) is not None
    operands = [o.detach() for o in random_operands(examples, 5, torch.Generator().manual_seed(4))]
    arena = torch.full((12, H), float("nan"))
    with torch.no_grad():
        want = program(operands, 5)
        program(operands, 5, into=[arena[1:6], arena[6:11]])
    assert torch.equal(arena[1:6], want[0]) and torch.equal(arena[6:11], want[1])
    assert arena[0].isnan().all() and arena[11].isnan().all()
    assert_program_matches_cell(program, cell, operands, 5)


def _direct_check(fn, examples, size, seed):
    """Every output the direct program writes into a buffer equals the plain no_grad program's."""
    program = compile_cell(fn, None, avals(examples))
    direct = program.direct_outputs()
    if direct is None:
        return
    gen = torch.Generator().manual_seed(seed)
    operands = [o.detach() for o in random_operands(examples, size, gen)]
    before = [o.clone() for o in operands]
    with torch.no_grad():
        want = program(operands, size)
        buffers = [torch.full_like(w, float("nan")) if d else None for w, d in zip(want, direct, strict=True)]
        got = program(operands, size, into=buffers)
    for o, b in zip(operands, before, strict=True):
        assert torch.equal(o, b), "the direct program overwrote an operand"
    for w, g, b in zip(want, got, buffers, strict=True):
        assert torch.equal(b if b is not None else g, w)


@settings(max_examples=40, deadline=None)
@given(recipe=st.lists(STEP, min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_random_elementwise_programs_into_buffers_match(recipe, seed):
    _direct_check(_program(recipe), [torch.zeros(2 * H), torch.zeros(2 * H)], 3, seed)


class Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, H, padding_idx=0)

    def forward(self, word):
        return self.embed(word)


@pytest.mark.parametrize("sparse_grads", [True, False])
def test_an_embedding_lookup_is_read_into_the_buffer(sparse_grads):
    # one index per row: the lookup is an index_select of the weight, into the caller's rows
    torch.manual_seed(5)
    cell = Lookup()
    examples = [torch.tensor(3)]
    program = compile_cell(cell.forward, cell, avals(examples), options=CellOptions(sparse_grads=sparse_grads))
    assert program.direct_outputs() == (True,)
    words = torch.tensor([4, 0, 10, 4, 7])
    arena = torch.full((7, H), float("nan"))
    with torch.no_grad():
        program([words], 5, into=[arena[2:7]])
    assert torch.equal(arena[2:7], cell.embed.weight.detach()[words]) and arena[:2].isnan().all()
    assert_inference_matches_autograd(program, [words], 5)
