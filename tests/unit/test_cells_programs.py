"""Traced / batchified / hoisted / merged programs of every zoo cell equal the per-instance cell
(outputs, operand gradients, parameter gradients), with each switch on and off, batch 0, 1 and more."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.cells import CellOptions, compile_cell
from phalanx.models.tagger import Embed, LSTMStep, TagScorer
from phalanx.models.treelstm import RootClassifier, TreeLSTMInternal, TreeLSTMLeaf

from ..cells_oracle import assert_inference_matches_autograd, assert_program_matches_cell, avals, random_operands

H, V, C = 6, 11, 5

# name -> (cell factory, example operands of one instance; an int example is the exclusive bound)
ZOO = {
    "TreeLSTMLeaf": (lambda: TreeLSTMLeaf(V, 4, H), [torch.tensor(V)]),
    "TreeLSTMInternal": (lambda: TreeLSTMInternal(H), [torch.zeros(H)] * 4),
    "RootClassifier": (lambda: RootClassifier(H, C), [torch.zeros(H)]),
    "RootClassifier+label": (lambda: RootClassifier(H, C), [torch.zeros(H), torch.tensor(C)]),
    "Embed": (lambda: Embed(V, H), [torch.tensor(V)]),
    "LSTMStep": (lambda: LSTMStep(4, H), [torch.zeros(4), torch.zeros(H), torch.zeros(H)]),
    "TagScorer": (lambda: TagScorer(H, C), [torch.zeros(H), torch.zeros(H)]),
    "TagScorer+tag": (lambda: TagScorer(H, C), [torch.zeros(H), torch.zeros(H), torch.tensor(C)]),
}

OPTIONS = {
    "all-on": CellOptions(),
    "all-off": CellOptions.all_off(),
    "no-hoist": CellOptions(hoist=False),
    "no-merge": CellOptions(merge=False),
    "no-sparse": CellOptions(sparse_grads=False),
    "no-inplace": CellOptions(inplace=False),
    "vmap-untraced": CellOptions(trace=False),
}


# every switch on and off on every zoo cell (all-on, all-off, untraced); one switch off at a time on
# the two cells where each switch changes the program (an embedding, a bias-folded GEMM pair)
CASES = ([(c, o) for c in ZOO for o in ("all-on", "all-off", "vmap-untraced")]
         + [(c, o) for c in ("TreeLSTMLeaf", "LSTMStep") for o in ("no-hoist", "no-merge", "no-sparse", "no-inplace")])


@pytest.mark.parametrize(("cell_name", "options"), CASES, ids=[f"{c}-{o}" for c, o in CASES])
def test_zoo_cell_program_matches_per_instance_cell(cell_name, options):
    torch.manual_seed(0)
    factory, examples = ZOO[cell_name]
    cell = factory()
    program = compile_cell(cell._phalanx_fn(), cell, avals(examples), options=OPTIONS[options])
    assert program.mode == ("vmap" if options == "vmap-untraced" else "traced")
    gen = torch.Generator().manual_seed(1)
    for size in (0, 1, 5):
        operands = random_operands(examples, size, gen)
        assert_program_matches_cell(program, cell, operands, size)
        assert_inference_matches_autograd(program, operands, size)


def test_parameters_are_inputs_not_constants():
    cell = TreeLSTMInternal(H)
    program = compile_cell(cell._phalanx_fn(), cell, avals([torch.zeros(H)] * 4))
    assert all(n.op != "get_attr" for n in program.graph.nodes)
    gen = torch.Generator().manual_seed(2)
    operands = random_operands([torch.zeros(H)] * 4, 3, gen)
    # a replaced parameter, a frozen one and a retyped module are all seen by the next call
    cell.gates.weight = torch.nn.Parameter(torch.randn_like(cell.gates.weight))
    assert_program_matches_cell(program, cell, operands, 3)
    cell.gates.bias.requires_grad_(False)
    assert_program_matches_cell(program, cell, operands, 3)


class CastingCell(torch.nn.Module):
    """Works in whatever dtype its parameters have; float32 in and out."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(H, H)

    def forward(self, x):
        return torch.tanh(self.lin(x.to(self.lin.weight.dtype))).float()


def test_a_parameter_dtype_change_retraces():
    cell = CastingCell()
    program = compile_cell(cell.forward, cell, avals([torch.zeros(H)]))
    operands = random_operands([torch.zeros(H)], 4, torch.Generator().manual_seed(3))
    assert_program_matches_cell(program, cell, operands, 4)
    cell.double()
    assert_program_matches_cell(program, cell, operands, 4)
    assert program.hoisted_values()[0].dtype == torch.float64


@pytest.fixture(scope="module")
def compiled_zoo():
    torch.manual_seed(0)
    out = {}
    for name in ("TreeLSTMInternal", "LSTMStep", "RootClassifier+label"):
        factory, examples = ZOO[name]
        cell = factory()
        out[name] = (cell, examples, compile_cell(cell._phalanx_fn(), cell, avals(examples)))
    return out


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(["TreeLSTMInternal", "LSTMStep", "RootClassifier+label"]),
       size=st.integers(0, 9), seed=st.integers(0, 2 ** 16))
def test_programs_match_on_random_batches(compiled_zoo, name, size, seed):
    cell, examples, program = compiled_zoo[name]
    operands = random_operands(examples, size, torch.Generator().manual_seed(seed))
    assert_program_matches_cell(program, cell, operands, size)


# *** NOTE: [Bound programs]: one no_grad flush binds a program once; every call equals __call__ ***

@pytest.mark.parametrize("name", sorted(ZOO))
def test_a_bound_program_equals_its_calls(name):
    torch.manual_seed(0)
    factory, examples = ZOO[name]
    cell = factory()
    program = compile_cell(cell._phalanx_fn(), cell, avals(examples))
    if name == "LSTMStep":
        program.consumable = frozenset({0})      # as a split cell's rest: its first operand may be consumed
    assert program.bind() is None                # grad mode: every call goes through __call__
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        run = program.bind()
        direct = program.direct_outputs()
        for size in (0, 1, 4):
            operands = [o.detach() for o in random_operands(examples, size, gen)]
            want = program(operands, size)
            for consume in (False, True):
                got = run([o.clone() for o in operands], size, consume)
                assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
                if direct is not None:
                    into = [torch.full_like(w, float("nan")) if d else None for w, d in zip(want, direct, strict=True)]
                    got = run([o.clone() for o in operands], size, consume, into)
                    for w, g, b in zip(want, got, into, strict=True):
                        assert torch.equal(b if b is not None else g, w)
        # a parameter changed in place (an optimizer step between flushes): the next bind sees it
        with torch.no_grad():
            for p in cell.parameters():
                if p.is_floating_point():
                    p.mul_(0.5)
        operands = [o.detach() for o in random_operands(examples, 3, gen)]
        fresh = program.bind()([o.clone() for o in operands], 3)
        assert all(torch.equal(g, w) for g, w in zip(fresh, program(operands, 3), strict=True))
