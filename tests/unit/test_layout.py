"""The default layout (memory/layout.py): rows in schedule order, each batch in reader order (NOTE:
[Reader order]). Chains read their previous step in place, layouts are valid permutations of the
schedule, and results equal per-instance eager on random structures."""
import random

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.ir.signature import ArgKind
from phalanx.memory.layout import plan_layout, reader_order, verify_layout
from phalanx.models import BiLSTMTagger
from phalanx.runtime.executor import GATHER, SLICE, build_steps
from phalanx.schedule import schedule_graph
from tests.oracle import assert_matches_eager


def _sentences(rng, n, longest=9):
    return [[rng.randrange(30) for _ in range(rng.randint(1, longest))] for _ in range(n)]


def _steps(batcher, instances, reorder=True, policy="depth"):
    graph = batcher.record(instances)
    schedule = schedule_graph(graph, policy)
    layout = plan_layout(graph, schedule, reorder=reorder)
    verify_layout(graph, layout, outputs_consecutive=True)
    return build_steps(graph, schedule, layout)


def test_every_recurrent_read_of_the_tagger_is_in_place():
    torch.manual_seed(0)
    model = BiLSTMTagger(30, 8, embed_dim=4)
    sentences = _sentences(random.Random(1), 12)
    for cells in (False, True):
        batcher = phalanx.Batcher(model, cells=cells)
        steps, counts = _steps(batcher, sentences)
        recurrent = 0
        for step in steps:
            name = step.sig.name
            # h and c of every step; the input projection a split step reads (its operand 0)
            positions = (0, 1, 2) if name.endswith("[rest]") else (1, 2) if name.endswith("LSTMStep") else ()
            for p in positions:
                kind = step.operands[p][0]
                if step.sig.in_kinds[p] is ArgKind.LAZY:
                    assert kind == SLICE, f"{name} operand {p} is gathered"
                    recurrent += 1
        assert recurrent > 20
        _, plain = _steps(batcher, sentences, reorder=False)
        assert counts.in_place > plain.in_place and counts.gathers < plain.gathers


def test_a_value_read_in_two_orders_is_gathered_once_and_results_match():
    # q, p read in both orders by one batch: reader order serves the first list, the other gathers
    @phalanx.cell
    def pair(a, b):
        return a * 2 + b

    @phalanx.cell
    def leaf(x):
        return x + 1

    def fn(xs):
        p, q = leaf(xs[0]), leaf(xs[1])
        return pair(p, q), pair(q, p)

    instances = [[torch.randn(3), torch.randn(3)] for _ in range(5)]
    batcher = assert_matches_eager(fn, instances)
    steps, _ = _steps(batcher, instances)
    kinds = [op[0] for step in steps if step.sig.name == "cell pair" for op in step.operands]
    assert kinds.count(SLICE) >= 1 and kinds.count(GATHER) >= 1


@phalanx.cell
def mix(a, b):
    return torch.tanh(a * 0.5 + b)


@phalanx.cell
def lift(x):
    return x * 2 - 1


def _random_program(rng, size):
    """An instance: a leaf per input, then nodes mixing two earlier values chosen at random."""
    return [rng.randrange(size) for _ in range(2 * size)]


def _run_program(instance):
    inputs, picks = instance
    values = [lift(x) for x in inputs]
    for i in range(0, len(picks), 2):
        values.append(mix(values[picks[i] % len(values)], values[picks[i + 1] % len(values)]))
    return values[len(inputs):] or values


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 6), policy=st.sampled_from(["depth", "agenda"]))
def test_random_structures_match_eager_and_layouts_are_permutations(seed, count, policy):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    instances = []
    for _ in range(count):
        size = rng.randint(1, 4)
        instances.append(([torch.randn(3, generator=gen) for _ in range(size)], _random_program(rng, size)))
    batcher = phalanx.Batcher(_run_program, policy=policy, verify=True)
    assert_matches_eager(_run_program, instances, batcher=batcher, policy=policy)
    if not count:
        return
    graph = batcher.record(instances)
    schedule = schedule_graph(graph, policy)
    ordered = reader_order(graph, schedule.batches)
    assert len(ordered) == len(schedule.batches)
    for before, after in zip(schedule.batches, ordered, strict=True):
        assert np.array_equal(np.sort(before), np.sort(after))
    verify_layout(graph, plan_layout(graph, schedule), outputs_consecutive=True)


def test_training_through_reader_order_matches_eager():
    torch.manual_seed(3)
    model = BiLSTMTagger(30, 6, embed_dim=4)
    rng = random.Random(4)
    examples = [(s, [rng.randrange(5) for _ in s]) for s in _sentences(rng, 6, 7)]
    for cells in (False, True):
        batcher = phalanx.Batcher(model.loss, cells=cells, verify=True)
        assert_matches_eager(model.loss, examples, params=model.parameters(), train=True, batcher=batcher)
