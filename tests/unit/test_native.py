"""The plan stage's native loops (memory/_plan.c, NOTE: [Native plan]) against their Python twins
(memory/native.py): same sorted batches and rows, same operand tuples, same steps, on random
arrays and on the plans of random models; and bad arrays are refused with a clear error, not read.
Skipped where the extension was not built (the rest of the suite then runs the twins)."""
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.bench.plan_ab import _plain
from phalanx.data import synthetic
from phalanx.memory import layout as layout_module
from phalanx.memory import native
from phalanx.memory.layout import plan_layout
from phalanx.models import BiLSTMTagger, TreeLSTM
from phalanx.runtime import steps as steps_module
from phalanx.runtime.steps import Step, build_steps
from phalanx.schedule import schedule_graph

plan = pytest.importorskip("phalanx.memory._plan") if native.NATIVE else None
pytestmark = pytest.mark.skipif(not native.NATIVE, reason="native plan extension not built or PHALANX_NATIVE=0")


def _random_batches(rng: random.Random, n: int):
    """A permutation of n nodes cut into batches, with random static keys (many ties) and readers."""
    order = np.array(rng.sample(range(n), n), dtype=np.int64)
    cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 6)))) if n > 1 else []
    bounds = np.array([0, *cuts, n], dtype=np.int64)
    static_in = np.array([rng.randrange(4) * 1000 for _ in range(n)], dtype=np.int64)
    reader_in = np.array([rng.randrange(n) for _ in range(n)], dtype=np.int64)
    row = np.array([rng.randrange(50) for _ in range(n)], dtype=np.int64)
    todo = np.array([b for b in range(len(bounds) - 1)[::-1] if rng.random() < 0.8], dtype=np.int64)
    return order, static_in, reader_in, row, bounds, todo


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 120))
def test_reader_sort_sorts_as_the_twin(seed, n):
    args = _random_batches(random.Random(seed), n)
    mine, theirs = [a.copy() for a in args], [a.copy() for a in args]
    plan.reader_sort(*mine)
    native.reader_sort_py(*theirs)
    assert mine[0].tolist() == theirs[0].tolist()       # order, sorted batch by batch (ties stable)
    assert mine[3].tolist() == theirs[3].tolist()       # row: each sorted node's new position


def test_reader_sort_refuses_bad_arrays():
    order, static_in, reader_in, row, bounds, todo = _random_batches(random.Random(1), 10)
    with pytest.raises(TypeError, match="static_in: expected a 1-d int64 array"):
        plan.reader_sort(order, static_in.astype(np.int32), reader_in, row, bounds, todo)
    with pytest.raises(ValueError, match="batch 7 has no valid bounds"):
        plan.reader_sort(order, static_in, reader_in, row, bounds, np.array([7], dtype=np.int64))
    with pytest.raises(ValueError, match="reads a node outside row"):
        plan.reader_sort(order, static_in, reader_in + 100, row, np.array([0, 10]), np.array([0]))
    with pytest.raises(ValueError):     # read-only order: written in place
        frozen = order.copy()
        frozen.flags.writeable = False
        plan.reader_sort(frozen, static_in, reader_in, row, bounds, todo)


def test_fill_operands_fills_as_the_twin():
    arena, lo, size = np.array([2, 0, 5]), np.array([10, 0, 7]), np.array([3, 1, 4])
    index = np.array([4, 0, 2])
    views = (torch.arange(3), torch.arange(1), torch.arange(4), torch.arange(9))    # one more than needed
    for args in ((index, 1, arena, lo, size, None), (None, 0, arena, lo, size, None), (index, 1, arena, None, None,
                                                                                         views)):
        mine, theirs = [None] * 5, [None] * 5
        plan.fill_operands(mine, *args)
        native.fill_operands_py(theirs, *args)
        assert [(k, a, p if isinstance(p, tuple) else id(p)) for k, a, p in filter(None, mine)] == \
            [(k, a, p if isinstance(p, tuple) else id(p)) for k, a, p in filter(None, theirs)]
        assert [x is None for x in mine] == [x is None for x in theirs]
    with pytest.raises(IndexError, match="index outside the target list"):
        plan.fill_operands([None] * 2, index, 1, arena, lo, size, None)
    with pytest.raises(ValueError, match="fewer views than operands"):
        plan.fill_operands([None] * 5, index, 1, arena, None, None, views[:2])


def _steps_plain(steps):
    return [(s.sig, s.size, _plain(s.operands), _plain(s.outputs), s.nodes.tolist(), s.insts.tolist(),
             _plain(s.fused), _plain(s.whole), s.joint) for s in steps]


_MODELS = None


def _models():
    global _MODELS
    if _MODELS is None:
        torch.manual_seed(0)
        _MODELS = TreeLSTM(40, 6, embed_dim=4), BiLSTMTagger(40, 6, embed_dim=4)
    return _MODELS


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 7), cells=st.booleans())
def test_plans_of_models_equal_the_twins(seed, count, cells):
    # Whole reads, joint writes, gathers, numbers, tensors (TreeLSTM, tagger): the layout and the
    # steps built through the native loops equal those built through the twins.
    tree_model, tagger = _models()
    rng = random.Random(seed)
    trees = synthetic.random_trees(count, seed, 40)
    chains = [[rng.randrange(40) for _ in range(rng.randint(1, 8))] for _ in range(count)]
    for model, instances in ((tree_model, trees), (tagger, chains)):
        graph = phalanx.Batcher(model, cells=cells).record(instances)
        schedule = schedule_graph(graph, "depth")
        found = []
        for loops in ((plan.reader_sort, plan.fill_operands, plan.assemble_steps),
                      (native.reader_sort_py, native.fill_operands_py, native.assemble_steps_py)):
            saved = layout_module.reader_sort, steps_module.fill_operands, steps_module.assemble_steps
            layout_module.reader_sort, steps_module.fill_operands, steps_module.assemble_steps = loops
            try:
                layout = plan_layout(graph, schedule)
                steps, counts = build_steps(graph, schedule, layout)
            finally:
                layout_module.reader_sort, steps_module.fill_operands, steps_module.assemble_steps = saved
            found.append((layout.value_row.tolist(), [b.tolist() for b in layout.batches], _steps_plain(steps),
                          sorted(vars(counts).items())))
        assert found[0] == found[1]


def test_assemble_steps_refuses_mismatched_bounds():
    with pytest.raises(ValueError, match="differ in length"):
        plan.assemble_steps(Step, [np.array([0])], (0,), [None], np.array([1]), np.array([0]), np.array([0, 0]),
                            np.array([0, 1]), [], [], np.array([0]), {}, frozenset())
