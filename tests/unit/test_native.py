"""The plan stage's native loops (memory/_plan.c, NOTE: [Native plan]) against their twins (numpy
``reader_order_numpy`` and ``_list_reads``, the Python loops of memory/native.py): the same
layouts, steps and counts on the plans of random models and programs; and bad arrays are refused
with a clear error, not read.
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
from phalanx.memory import native
from phalanx.memory.layout import plan_layout
from phalanx.models import BiLSTMTagger, TreeLSTM
from phalanx.runtime import steps as steps_module
from phalanx.runtime.steps import Step, build_steps
from phalanx.schedule import schedule_graph
from tests.unit.test_layout import _run_program, random_program_instances

plan = pytest.importorskip("phalanx.memory._plan") if native.NATIVE else None
pytestmark = pytest.mark.skipif(not native.NATIVE, reason="native plan extension not built or PHALANX_NATIVE=0")


def test_reader_order_refuses_bad_arrays():
    # Batch 0 = nodes 0, 1; batch 1 = node 2, reading value 1 then value 0: batch 0 becomes [1, 0].
    order, bounds = np.array([0, 1, 2]), np.array([0, 2, 3])
    arg_start, arg_code, value_node = np.array([0, 0, 0, 2]), np.array([1, 0]), np.array([0, 1, 2])
    ordered = order.copy()
    assert plan.reader_order(ordered, bounds, arg_start, arg_code, value_node) == [0]
    assert ordered.tolist() == [1, 0, 2]
    assert plan.reader_order(order.copy(), bounds, arg_start, arg_code[::-1].copy(), value_node) == []  # in order
    with pytest.raises(TypeError, match="arg_code: expected a 1-d int64 array"):
        plan.reader_order(order.copy(), bounds, arg_start, arg_code.astype(np.int32), value_node)
    with pytest.raises(ValueError, match="batch 0 holds node 7 of 3"):
        plan.reader_order(np.array([0, 7, 2]), bounds, arg_start, arg_code, value_node)
    with pytest.raises(ValueError, match="node 2 reads an unknown value 9"):
        plan.reader_order(order.copy(), bounds, arg_start, np.array([0, 9]), value_node)
    with pytest.raises(ValueError, match="do not fit"):
        plan.reader_order(order.copy(), np.array([0, 2]), arg_start, arg_code, value_node)   # order has 3
    with pytest.raises(ValueError):     # read-only order: it is sorted in place
        frozen = order.copy()
        frozen.flags.writeable = False
        plan.reader_order(frozen, bounds, arg_start, arg_code, value_node)


def test_list_reads_refuses_bad_arrays():
    order, node_start = np.array([0, 1]), np.array([0, 2])
    arg_start, arg_code = np.array([0, 1, 2]), np.array([-1, 0])
    value_row, aval = np.array([0]), np.array([0])
    out = [np.zeros(2, dtype=np.int64) for _ in range(2)] + [np.zeros(1, dtype=np.int64) for _ in range(3)]
    plan.list_reads(order, node_start, np.array([0]), np.array([0]), arg_start, arg_code, value_row, aval, *out)
    assert out[0].tolist() == [-1, 0] and out[2].tolist() == [1]      # an immediate, then value 0: not a slice
    with pytest.raises(ValueError, match="node 0 has no operand 1"):
        plan.list_reads(order, node_start, np.array([0]), np.array([1]), arg_start, arg_code, value_row, aval, *out)
    with pytest.raises(ValueError, match="list 0 names no batch"):
        plan.list_reads(order, node_start, np.array([3]), np.array([0]), arg_start, arg_code, value_row, aval, *out)
    with pytest.raises(ValueError, match="codes too short"):
        plan.list_reads(order, node_start, np.array([0]), np.array([0]), arg_start, arg_code, value_row, aval,
                        out[0][:1], out[1][:1], *out[2:])


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


def _plan_with(graph, schedule, loops):
    """Layout and steps planned with ``loops`` = (reader_order, list_reads, gather_runs,
    fill_operands, assemble_steps) in place of memory/native.py's, as plain data."""
    names = ("reader_order", "list_reads", "gather_runs", "fill_operands", "assemble_steps")
    saved = [getattr(native, name) for name in names], steps_module.fill_operands, steps_module.assemble_steps
    for name, loop in zip(names, loops, strict=True):
        setattr(native, name, loop)
    steps_module.fill_operands, steps_module.assemble_steps = loops[3], loops[4]
    try:
        layout = plan_layout(graph, schedule)
        steps, counts = build_steps(graph, schedule, layout)
    finally:
        for name, loop in zip(names, saved[0], strict=True):
            setattr(native, name, loop)
        steps_module.fill_operands, steps_module.assemble_steps = saved[1], saved[2]
    return (layout.value_row.tolist(), layout.arena_rows.tolist(), [b.tolist() for b in layout.batches],
            _steps_plain(steps), sorted(vars(counts).items()))


NATIVE_LOOPS = (plan.reader_order, plan.list_reads, plan.gather_runs, plan.fill_operands,
                plan.assemble_steps) if plan else None
TWINS = (None, None, None, native.fill_operands_py, native.assemble_steps_py)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 7), cells=st.booleans(),
       policy=st.sampled_from(["depth", "agenda"]))
def test_plans_of_models_equal_the_twins(seed, count, cells, policy):
    # Whole reads, joint writes, gathers, numbers, tensors (TreeLSTM, tagger), then random programs:
    # the layout and the steps planned through the native loops equal those of the numpy twins.
    tree_model, tagger = _models()
    rng = random.Random(seed)
    trees = synthetic.random_trees(count, seed, 40)
    chains = [[rng.randrange(40) for _ in range(rng.randint(1, 8))] for _ in range(count)]
    for fn, instances in ((tree_model, trees), (tagger, chains), (_run_program, random_program_instances(seed, count))):
        graph = phalanx.Batcher(fn, policy=policy, cells=cells).record(instances)
        schedule = schedule_graph(graph, policy)
        assert _plan_with(graph, schedule, NATIVE_LOOPS) == _plan_with(graph, schedule, TWINS)


def test_assemble_steps_refuses_mismatched_bounds():
    with pytest.raises(ValueError, match="differ in length"):
        plan.assemble_steps(Step, [np.array([0])], (0,), [None], np.array([1]), np.array([0]), np.array([0, 0]),
                            np.array([0, 1]), [], [], np.array([0]), {}, frozenset())


def test_gather_runs_fuses_adjacent_lists_of_one_batch_and_arena():
    # Lists 0, 1: batch 0, positions 0, 1, arena 1: one run. List 2: another arena. List 3: not
    # gathered. List 4: batch 1 alone.
    gathered = np.array([True, True, True, False, True])
    list_batch, list_pos, arena = np.array([0, 0, 0, 0, 1]), np.array([0, 1, 2, 3, 0]), np.array([1, 1, 2, 1, 1])
    list_start, rows = np.array([0, 2, 4, 6, 8, 9]), np.arange(10, 19)
    host = np.full(18, -1, dtype=np.int64)
    used, lengths, runs = plan.gather_runs(gathered, list_batch, list_pos, arena, list_start, rows, host)
    assert (used, lengths, runs) == (11, [2, 2, 2, 1, 4], [(0, 1, 0, 2)])
    assert host[:used].tolist() == [10, 11, 12, 13, 14, 15, 18, 10, 11, 12, 13]
    with pytest.raises(TypeError, match="gathered: expected a 1-d bool array"):
        plan.gather_runs(gathered.astype(np.int64), list_batch, list_pos, arena, list_start, rows, host)
    with pytest.raises(ValueError, match="arrays differ in length"):
        plan.gather_runs(gathered, list_batch, list_pos, arena, list_start, rows, host[:10])
