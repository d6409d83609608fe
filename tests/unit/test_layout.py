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
from phalanx.data import synthetic
from phalanx.memory.layout import _first_reads, output_values, plan_layout, reader_order, verify_layout
from phalanx.models import BiLSTMTagger, TreeLSTM
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


def random_program_instances(seed: int, count: int) -> list:
    """``count`` instances of random programs (1-4 inputs each), reproducible from ``seed``."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    return [([torch.randn(3, generator=gen) for _ in range(size)], _random_program(rng, size))
            for size in (rng.randint(1, 4) for _ in range(count))]


def _run_program(instance):
    inputs, picks = instance
    values = [lift(x) for x in inputs]
    for i in range(0, len(picks), 2):
        values.append(mix(values[picks[i] % len(values)], values[picks[i + 1] % len(values)]))
    return values[len(inputs):] or values


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 6), policy=st.sampled_from(["depth", "agenda"]))
def test_random_structures_match_eager_and_layouts_are_permutations(seed, count, policy):
    instances = random_program_instances(seed, count)
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


# *** the vectorized layout against plain per-batch references ***

def _reference_reader_order(graph, batches):
    """NOTE: [Reader order] in plain Python: a node's first read is its smallest (reader batch,
    operand position), of equal ones the later reader; walking batches backwards, each batch sorts
    (stably) by (first read, the reader's row), nodes nobody reads last."""
    batch_of = {n: b for b, nodes in enumerate(batches) for n in nodes.tolist()}
    first = {}
    for reader in range(graph.num_nodes):
        for p, code in enumerate(graph.arg_code[graph.arg_start[reader]:graph.arg_start[reader + 1]].tolist()):
            if code >= 0:
                producer, key = int(graph.value_node[code]), (batch_of[reader], p)
                if producer not in first or key < first[producer][0] or \
                        (key == first[producer][0] and reader > first[producer][1]):
                    first[producer] = (key, reader)
    out = [nodes.tolist() for nodes in batches]
    row = {n: i for nodes in out for i, n in enumerate(nodes)}
    for b in range(len(out) - 1, -1, -1):
        out[b] = sorted(out[b], key=lambda n: (0, *first[n][0], row[first[n][1]]) if n in first else (1, 0, 0, row[n]))
        row.update((n, i) for i, n in enumerate(out[b]))
    return out


def _reference_rows(graph, batches, sids):
    """Rows in schedule order: each (batch, output) block after the earlier ones of its arena."""
    value_row = np.full(graph.num_values, -1, dtype=np.int64)
    used = [0] * len(graph.avals)
    for nodes, sid in zip(batches, sids, strict=True):
        for k in range(graph.sigs[sid].num_outputs):
            for n in nodes.tolist():
                v = int(graph.node_first_value[n]) + k
                value_row[v] = used[graph.value_aval_id[v]]
                used[graph.value_aval_id[v]] += 1
    return value_row, used


def _check_against_references(graph, schedule):
    ordered = reader_order(graph, schedule.batches)
    assert [b.tolist() for b in ordered] == _reference_reader_order(graph, schedule.batches)
    for reorder in (True, False):
        layout = plan_layout(graph, schedule, reorder=reorder)
        rows, used = _reference_rows(graph, layout.batches, schedule.sids)
        assert np.array_equal(layout.value_row, rows) and layout.arena_rows.tolist() == used
        assert np.array_equal(layout.output_vids, output_values(graph, layout.batches, schedule.sids))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 6), policy=st.sampled_from(["depth", "agenda"]))
def test_reader_order_and_rows_equal_the_reference_on_random_programs(seed, count, policy):
    graph = phalanx.Batcher(_run_program, policy=policy).record(random_program_instances(seed, count))
    _check_against_references(graph, schedule_graph(graph, policy))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 8), cells=st.booleans())
def test_reader_order_and_rows_equal_the_reference_on_models(seed, count, cells):
    # Trees (two children read at two positions of one batch), chains (a prefix read in place),
    # several arenas (embeddings, states, logits).
    torch.manual_seed(0)
    rng = random.Random(seed)
    for model, instances in ((TreeLSTM(30, 5, embed_dim=3), synthetic.random_trees(count, seed, 30)),
                             (BiLSTMTagger(30, 5, embed_dim=3), _sentences(rng, count))):
        graph = phalanx.Batcher(model, cells=cells).record(instances)
        for policy in ("depth", "agenda"):
            _check_against_references(graph, schedule_graph(graph, policy))


def test_first_reads_without_room_for_one_int64_key_agree():
    # Huge graphs take the two-pass path of ``_first_reads``; it must pick the same first reads.
    rng = np.random.default_rng(0)
    n, reads = 40, 160
    # Reads in operand-slot order, as a graph lists them: by reader.
    reader, producer, static = np.sort(rng.integers(0, n, reads)), rng.integers(0, n, reads), rng.integers(0, 6, reads)
    one_pass = _first_reads(n, reader, producer, static, 6)
    two_pass = _first_reads(n, reader, producer, static, 2 ** 62)
    read = np.isin(np.arange(n), producer)
    assert np.array_equal(one_pass[1], two_pass[1]) and (two_pass[0][~read] == 2 ** 62).all()
    assert np.array_equal(one_pass[0][read], two_pass[0][read]) and (one_pass[0][~read] == 6).all()
    assert np.array_equal(one_pass[1][~read], np.arange(n)[~read])
