"""The memory planner: accepted operand lists are in place, layouts are valid, and the link
planner agrees with a brute-force search on small cases."""
import itertools
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.data import synthetic
from phalanx.memory.layout import plan_layout
from phalanx.memory.planner import _LinkPlanner, plan_memory, verify_plan
from phalanx.models import BiLSTMTagger, TreeLSTM
from phalanx.runtime.executor import build_steps
from phalanx.schedule import schedule_graph
from tests.oracle import assert_matches_eager


def _orders_feasible(n, seqs):
    """Brute force: is there an order of range(n) in which every seq is consecutive, in order?"""
    for perm in itertools.permutations(range(n)):
        pos = {v: i for i, v in enumerate(perm)}
        if all(all(pos[b] == pos[a] + 1 for a, b in zip(s, s[1:])) for s in seqs):
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_link_planner_accepts_exactly_the_feasible_lists(data):
    n = data.draw(st.integers(1, 6))
    seqs = data.draw(st.lists(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True), max_size=6))
    planner = _LinkPlanner(n)
    accepted = []
    for seq in seqs:
        ok = planner.try_accept(seq)
        assert ok == _orders_feasible(n, accepted + [seq])
        if ok:
            accepted.append(seq)
    order = planner.order(list(range(n)))
    assert sorted(order) == list(range(n))
    pos = {v: i for i, v in enumerate(order)}
    for seq in accepted:
        assert all(pos[b] == pos[a] + 1 for a, b in zip(seq, seq[1:]))


def _graphs():
    torch.manual_seed(0)
    tree_model = TreeLSTM(40, 8, embed_dim=4)
    tagger = BiLSTMTagger(40, 8, embed_dim=4)
    rng = random.Random(0)
    trees = synthetic.random_trees(12, 1, 40)
    chains = [[rng.randrange(40) for _ in range(rng.randint(1, 9))] for _ in range(12)]
    return [("treelstm", tree_model, trees), ("tagger", tagger, chains)]


@pytest.mark.parametrize("objective", ["bytes", "lists"])
@pytest.mark.parametrize("strategy", ["reader", "instance", "producer", "pqtree", "auto"])
@pytest.mark.parametrize("policy", ["depth", "agenda"])
def test_plans_verify_and_treelstm_is_fully_in_place(strategy, policy, objective):
    for name, model, instances in _graphs():
        graph = phalanx.Batcher(model).record(instances)
        schedule = schedule_graph(graph, policy)
        layout, report = plan_memory(graph, schedule, strategy, objective)
        verify_plan(graph, schedule, layout, report)
        if name == "treelstm":
            # Every value of a tree model has one consumer, so every operand list can be a view.
            lazy_lists = sum(sum(k == 0 for k in graph.sigs[s].in_kinds) for s in schedule.sids)
            assert report.in_place == lazy_lists


def test_planning_reads_more_in_place_than_schedule_order():
    for _, model, instances in _graphs():
        graph = phalanx.Batcher(model).record(instances)
        schedule = schedule_graph(graph)
        _, plain = build_steps(graph, schedule, plan_layout(graph, schedule, reorder=False))
        _, reader = build_steps(graph, schedule, plan_layout(graph, schedule))
        layout, _ = plan_memory(graph, schedule, "auto")
        _, planned = build_steps(graph, schedule, layout)
        assert planned.in_place > plain.in_place
        assert planned.gather_bytes < plain.gather_bytes
        # the planner tries the default's reader order too, and keeps the most bytes in place
        assert planned.gather_bytes <= reader.gather_bytes


@pytest.mark.parametrize("strategy", ["instance", "producer", "pqtree"])
def test_objectives_trade_lists_against_bytes(strategy):
    # On the tagger hidden states are read in conflicting orders, so the objectives really differ:
    # each must win strictly on its own measure, with the same strategy (no escape through another).
    _, model, instances = _graphs()[1]
    graph = phalanx.Batcher(model).record(instances)
    schedule = schedule_graph(graph, "agenda")
    _, by_bytes = plan_memory(graph, schedule, strategy, "bytes")
    _, by_lists = plan_memory(graph, schedule, strategy, "lists")
    assert by_bytes.strategy == by_lists.strategy == strategy
    assert by_lists.in_place > by_bytes.in_place
    assert by_bytes.in_place_bytes > by_lists.in_place_bytes


@pytest.mark.parametrize("objective", ["bytes", "lists"])
@pytest.mark.parametrize("strategy", ["instance", "producer", "pqtree"])
def test_every_strategy_matches_eager_in_training(strategy, objective):
    for _, model, instances in _graphs():
        fn = model.loss
        examples = [(x, [0] * len(x)) for x in instances] if isinstance(instances[0], list) \
            else [(t, 2) for t in instances]
        batcher = phalanx.Batcher(fn, plan=strategy, plan_objective=objective, verify=True)
        assert_matches_eager(fn, examples, params=model.parameters(), train=True, batcher=batcher)


def test_unknown_strategy_and_objective():
    graph = phalanx.Batcher(lambda x: x * 2).record([torch.ones(2)])
    with pytest.raises(ValueError, match="unknown planning strategy 'fast'"):
        plan_memory(graph, schedule_graph(graph), "fast")
    with pytest.raises(ValueError, match="unknown planning objective 'speed'"):
        plan_memory(graph, schedule_graph(graph), "auto", "speed")


def test_no_two_values_share_a_row_after_planning():
    _, model, instances = _graphs()[1]
    graph = phalanx.Batcher(model).record(instances)
    layout, _ = plan_memory(graph, schedule_graph(graph), "auto")
    key = graph.value_aval_id * (layout.arena_rows.max() + 1) + layout.value_row
    assert len(np.unique(key)) == graph.num_values
