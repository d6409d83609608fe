"""The plan's steps (runtime/steps.py) against a plain per-batch reference: the vectorized
``build_steps`` (NOTE: [Vectorized plan]) must decide every read, write, fused run, whole read,
joint write and count exactly as a Python loop over batches and operands does, for default and
planned layouts, on random structures (0 and 1 instances included)."""
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.data import synthetic
from phalanx.ir.signature import ArgKind
from phalanx.memory.layout import output_values, plan_layout
from phalanx.memory.planner import plan_memory
from phalanx.models import BiLSTMTagger, TreeLSTM
from phalanx.runtime.steps import (BROADCAST, EXTERNAL, GATHER, NUMBERS, SCATTER, SLICE, TENSORS, _number_tensor,
                                   build_steps)
from phalanx.schedule import schedule_graph
from tests.unit.test_layout import _run_program, random_program_instances


def _consecutive(rows):
    return all(b == a + 1 for a, b in zip(rows, rows[1:]))


def _reference(graph, schedule, layout):
    """Per batch, per operand and output, what the plan must say, in plain Python."""
    value_row, aval = layout.value_row.tolist(), graph.value_aval_id.tolist()
    codes_of = lambda n: graph.arg_code[graph.arg_start[n]:graph.arg_start[n + 1]].tolist()  # noqa: E731
    vids = output_values(graph, layout.batches, schedule.sids).tolist()
    counts = dict(operand_lists=0, in_place=0, gathers=0, gather_bytes=0, output_blocks=0, scattered_outputs=0)
    steps, v = [], 0
    for nodes, sid in zip(layout.batches, schedule.sids, strict=True):
        sig, nodes = graph.sigs[sid], nodes.tolist()
        operands = []
        for p, kind in enumerate(sig.in_kinds):
            codes = [codes_of(n)[p] for n in nodes]
            if kind is ArgKind.LAZY:
                rows = [value_row[c] for c in codes]
                read = (SLICE, aval[codes[0]], (rows[0], rows[-1] + 1)) if _consecutive(rows) else \
                    (GATHER, aval[codes[0]], rows)
                counts["operand_lists"] += 1
                counts["in_place" if read[0] == SLICE else "gathers"] += 1
                counts["gather_bytes"] += len(rows) * sig.in_avals[p].nbytes if read[0] == GATHER else 0
                operands.append(read)
            elif kind is ArgKind.NUMBER:
                operands.append((NUMBERS, sig.in_avals[p].dtype, [graph.imms[-1 - c] for c in codes]))
            else:
                operands.append(("tensors", [graph.imms[-1 - c] for c in codes]))
        # Maximal runs of 2+ gathered operands at adjacent positions reading one arena.
        runs, p = [], 0
        while p < len(operands):
            q = p + 1
            if operands[p][0] == GATHER:
                while q < len(operands) and operands[q][0] == GATHER and operands[q][1] == operands[p][1]:
                    q += 1
                if q - p > 1:
                    runs.append((operands[p][1], sum((operands[i][2] for i in range(p, q)), []), tuple(range(p, q))))
            p = q
        outputs = []
        for _ in range(sig.num_outputs):
            rows = [value_row[x] for x in vids[v:v + len(nodes)]]
            outputs.append((SLICE, aval[vids[v]], (rows[0], rows[-1] + 1)) if _consecutive(rows) else
                           (SCATTER, aval[vids[v]], rows))
            counts["output_blocks"] += 1
            counts["scattered_outputs"] += outputs[-1][0] == SCATTER
            v += len(nodes)
        joint = None
        if len(outputs) > 1 and all(o[0] == SLICE and o[1] == outputs[0][1] for o in outputs) and \
                all(b[2][0] == a[2][1] for a, b in zip(outputs, outputs[1:])):
            joint = (outputs[0][1], outputs[0][2][0], outputs[-1][2][1])
        whole = len(runs) == 1 and len(runs[0][2]) == len(operands) and "stack_dim" not in sig.meta
        steps.append((nodes, operands, runs, whole, outputs, joint, graph.node_inst[nodes].tolist()))
    return steps, counts


def _as_plain(x):
    return x.tolist() if isinstance(x, torch.Tensor) else x


def _check(graph, schedule, layout):
    steps, counts = build_steps(graph, schedule, layout)
    expected, expected_counts = _reference(graph, schedule, layout)
    assert {k: getattr(counts, k) for k in expected_counts} == expected_counts
    assert len(steps) == len(expected)
    for step, (nodes, operands, runs, whole, outputs, joint, insts) in zip(steps, expected, strict=True):
        assert step.nodes.tolist() == nodes and step.size == len(nodes) and step.insts.tolist() == insts
        assert len(step.operands) == len(operands)
        for (kind, where, payload), want in zip(step.operands, operands, strict=True):
            if want[0] == "tensors":
                assert kind in (TENSORS, BROADCAST, EXTERNAL)
                if kind == TENSORS:
                    assert all(a is b for a, b in zip(payload, want[1], strict=True))
                elif kind == BROADCAST:
                    assert where == len(nodes) and all(t is payload for t in want[1])
                continue
            assert (kind, where) == want[:2]
            if kind == NUMBERS:
                assert payload.dtype == where and payload.tolist() == torch.tensor(want[2], dtype=where).tolist()
            else:
                assert _as_plain(payload) == (want[2] if kind == GATHER else tuple(want[2]))
        assert [(a, _as_plain(i), ps) for a, i, ps in step.fused] == runs
        if whole:
            assert step.whole is not None and step.whole[0] == runs[0][0]
            assert step.whole[1].tolist() == runs[0][1] and list(step.whole[2]) == [len(nodes)] * len(operands)
        else:
            assert step.whole is None
        assert [(k, a, _as_plain(r)) for k, a, r in step.outputs] == [(k, a, r if k == SCATTER else tuple(r))
                                                                       for k, a, r in outputs]
        assert step.joint == joint
    return steps, counts


def _layouts(graph, schedule):
    yield plan_layout(graph, schedule)
    yield plan_layout(graph, schedule, reorder=False)
    # A planned layout: outputs need not be consecutive (``output_vids`` None: scatters possible).
    yield plan_memory(graph, schedule, "instance", "bytes")[0]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 6), policy=st.sampled_from(["depth", "agenda"]))
def test_random_programs_plan_as_the_reference(seed, count, policy):
    graph = phalanx.Batcher(_run_program, policy=policy).record(random_program_instances(seed, count))
    schedule = schedule_graph(graph, policy)
    for layout in _layouts(graph, schedule):
        _check(graph, schedule, layout)


def _models():
    torch.manual_seed(0)
    return TreeLSTM(40, 6, embed_dim=4), BiLSTMTagger(40, 6, embed_dim=4)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 7), cells=st.booleans(),
       policy=st.sampled_from(["depth", "agenda"]))
def test_models_plan_as_the_reference(seed, count, cells, policy):
    # TreeLSTM: whole reads of four operands, joint h/c writes, word-id numbers; the tagger: chains
    # read in place, per-sentence initial state tensors, split cells (cells=True).
    tree_model, tagger = _MODELS
    rng = random.Random(seed)
    trees = synthetic.random_trees(count, seed, 40)
    chains = [[rng.randrange(40) for _ in range(rng.randint(1, 8))] for _ in range(count)]
    for model, instances in ((tree_model, trees), (tagger, chains)):
        graph = phalanx.Batcher(model, policy=policy, cells=cells).record(instances)
        schedule = schedule_graph(graph, policy)
        for layout in _layouts(graph, schedule):
            _check(graph, schedule, layout)


_MODELS = _models()


def test_treelstm_batches_read_whole_and_write_jointly():
    # Guards that the reference comparison above exercises fused runs, whole reads and joint writes.
    tree_model, _ = _MODELS
    graph = phalanx.Batcher(tree_model).record(synthetic.random_trees(16, 3, 40))
    schedule = schedule_graph(graph, "depth")
    steps, counts = _check(graph, schedule, plan_layout(graph, schedule))
    assert any(s.whole is not None for s in steps) and any(s.joint is not None for s in steps)
    assert any(len(s.fused) for s in steps) and counts.gathers and counts.in_place


@pytest.mark.parametrize("values, dtype", [([3, 1, 2], torch.int64), ([0.5, 2.0], torch.float32),
                                           ([True, False], torch.bool), ([2 ** 70], torch.float64)])
def test_numbers_convert_as_torch_tensor_does(values, dtype):
    # Picked in order, permuted, and as a sub-range of a longer list holding a tensor.
    imms = [torch.ones(2), *values, "x"]
    for picked in (np.arange(1, 1 + len(values)), np.arange(len(values), 0, -1), np.array([len(values), 1, 1])):
        want = torch.tensor([imms[i] for i in picked.tolist()], dtype=dtype)
        got = _number_tensor(imms, picked, dtype)
        assert got.dtype == want.dtype and got.tolist() == want.tolist()
