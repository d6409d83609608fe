"""Op-type groups (cells/group.py, schedule/groups.py, the layout's block order and the executor's
``_run_group``): twin cells with different weights run as one batch in inference, and every
result still equals the per-instance eager loop."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import phalanx
import phalanx.runtime.executor as executor
from phalanx.cells.group import Scratch, group_key, grouped_program
from phalanx.cells.options import CellOptions
from phalanx.memory.layout import concatenated, plan_layout, verify_layout
from phalanx.schedule.groups import group_runs
from phalanx.models.tagger import BiLSTMTagger
from tests.oracle import assert_matches_eager

DIM, HIDDEN, VOCAB = 6, 5, 20


@phalanx.cell
class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(VOCAB, DIM)

    def forward(self, word):
        return self.table(word)


@phalanx.cell
class Step(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTMCell(DIM, HIDDEN)

    def forward(self, x, h, c):
        return self.lstm(x, (h, c))


@phalanx.cell
class GruStep(nn.Module):
    """A GRU step: its program interleaves per-member GEMMs with parameter-free gate math."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRUCell(DIM, HIDDEN)

    def forward(self, x, h, c):
        h = self.gru(x, h)
        return h, torch.tanh(c + h)


class Chains(nn.Module):
    """An instance is a list of chains; a chain is a list of (cell index, word): position t of the
    chain runs cell ``c<index>`` (a ``step``) on the word, so cells mix along a chain and across chains.
    ``tie``: ``"module"`` makes ``c1`` a second name for ``c0``; ``"weight"`` gives ``c1`` ``c0``'s
    recurrent weight (one Parameter, two modules)."""

    def __init__(self, cells: int, tie: "str | None" = None, step=Step):
        super().__init__()
        self.embed = Embed()
        for i in range(cells):
            setattr(self, f"c{i}", step())
        if tie == "module" and cells > 1:
            self.c1 = self.c0
        elif tie == "weight" and cells > 1:
            first, second = (next(c.children()) for c in (self.c0, self.c1))     # the LSTMCell / GRUCell
            second.weight_hh = first.weight_hh
        self.register_buffer("h0", torch.zeros(HIDDEN), persistent=False)

    def forward(self, chains):
        finals = []
        for chain in chains:
            h = c = self.h0
            for which, word in chain:
                h, c = getattr(self, f"c{which}")(self.embed(word), h, c)
            finals.append(h)
        return finals


class Counting:
    """Counts the groups the executor ran as one batch."""

    def __init__(self, monkeypatch):
        self.ran = 0
        real = executor._run_group

        def counted(*args):
            done = real(*args)
            self.ran += done
            return done

        monkeypatch.setattr(executor, "_run_group", counted)


def _instances(rng: torch.Generator, cells: int, num: int, max_len: int = 5) -> list:
    out = []
    for _ in range(num):
        chains = []
        for _ in range(int(torch.randint(1, 3, (), generator=rng))):
            length = int(torch.randint(1, max_len + 1, (), generator=rng))
            chains.append([(int(torch.randint(0, cells, (), generator=rng)), int(torch.randint(0, VOCAB, (), generator=rng)))
                           for _ in range(length)])
        out.append(chains)
    return out


def test_tagger_groups_directions_and_matches_eager(monkeypatch):
    torch.manual_seed(0)
    model = BiLSTMTagger(vocab_size=30, hidden=8).eval()
    sentences = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [10], [11, 12, 13, 14, 15]]
    counting = Counting(monkeypatch)
    batcher = assert_matches_eager(model, sentences)
    # each op type's first batch binds its program; from then on both directions of a depth are one batch
    assert counting.ran >= 2
    first = counting.ran
    assert_matches_eager(model, sentences, batcher=batcher)
    assert counting.ran - first == first


def test_group_off_runs_every_batch_alone(monkeypatch):
    torch.manual_seed(0)
    model = BiLSTMTagger(vocab_size=30, hidden=8).eval()
    sentences = [[1, 2, 3], [4, 5, 6, 7]]
    counting = Counting(monkeypatch)
    batcher = phalanx.Batcher(model, cells=CellOptions(group=False), verify=True)
    for _ in range(2):
        assert_matches_eager(model, sentences, batcher=batcher)
    assert counting.ran == 0


def test_training_never_groups_and_matches_eager(monkeypatch):
    torch.manual_seed(0)
    model = Chains(2)
    instances = _instances(torch.Generator().manual_seed(1), 2, 4)
    counting = Counting(monkeypatch)
    batcher = phalanx.Batcher(model, verify=True)
    for _ in range(2):
        assert_matches_eager(model, instances, params=list(model.parameters()), train=True, batcher=batcher)
    assert counting.ran == 0


@pytest.mark.parametrize("num", [0, 1])
def test_zero_and_one_instance(num):
    torch.manual_seed(0)
    model = Chains(3)
    instances = _instances(torch.Generator().manual_seed(2), 3, num)
    batcher = phalanx.Batcher(model, verify=True)
    for _ in range(2):
        assert_matches_eager(model, instances, batcher=batcher)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=st.integers(1, 3), tie=st.sampled_from([None, "module", "weight"]), num=st.integers(0, 5),
       seed=st.integers(0, 2 ** 16), policy=st.sampled_from(["depth", "agenda"]),
       step=st.sampled_from([Step, GruStep]))
def test_random_chains_match_eager(cells, tie, num, seed, policy, step):
    torch.manual_seed(seed)
    model = Chains(cells, tie, step)
    instances = _instances(torch.Generator().manual_seed(seed), cells, num)
    batcher = phalanx.Batcher(model, policy=policy, verify=True)
    for _ in range(2):      # the second call groups (the first binds the programs)
        assert_matches_eager(model, instances, batcher=batcher)
    assert_matches_eager(model, instances, params=list(model.parameters()), train=True, batcher=batcher)


def _programs(batcher) -> dict:
    """op type name -> the traced programs of its signatures (the cells' own and their split parts)."""
    found: dict = {}
    for sig in batcher.table.sigs:
        meta = sig.meta
        if "kernel" in meta:
            program = meta["kernel"].program
        elif "aot" in meta:
            program = meta["aot"].programs.get(tuple(m.training for m in sig.modules))
        else:
            continue
        found.setdefault(sig.name, []).append(program)
    return found


def test_group_key_twins_and_others():
    torch.manual_seed(0)
    chains = [[[(0, 1), (0, 2), (0, 3), (0, 4)], [(1, 3), (1, 4), (1, 5), (1, 6)]]]
    batcher = phalanx.Batcher(Chains(2).eval())
    with torch.no_grad():
        batcher(chains)
    programs = _programs(batcher)
    assert {"cell Step", "cell Step[input part]", "cell Step[rest]"} <= set(programs)
    keys = {name: {group_key(p) for p in ps} for name, ps in programs.items()}
    # the two cells' programs of each kind share one key; different kinds never do
    for name in ("cell Step", "cell Step[input part]", "cell Step[rest]"):
        assert len(programs[name]) >= 2 and len(keys[name]) == 1 and None not in keys[name]
    assert len({next(iter(k)) for k in keys.values()}) == len(keys)
    off = phalanx.Batcher(Chains(2).eval(), cells=CellOptions(group=False))
    with torch.no_grad():
        off(chains)
    assert all(group_key(p) is None for ps in _programs(off).values() for p in ps)


def _runs(batcher, instances):
    with torch.no_grad():
        batcher(instances)
        graph = batcher.record(instances)
        schedule = batcher.policy.schedule(graph)
        return graph, schedule, group_runs(graph, schedule, *concatenated(schedule.batches)[1:])


def test_group_runs_need_one_depth_and_no_grad():
    torch.manual_seed(0)
    batcher = phalanx.Batcher(Chains(2).eval())
    # One chain alternating the cells: their steps' batches are adjacent in the schedule but each reads
    # the one before (another depth): never a group. Only their input parts (NOTE: [Input split]),
    # all at the inputs' depth, may be.
    graph, schedule, runs = _runs(batcher, [[[(0, 1), (1, 2), (0, 3)]]])
    for b, members in runs:
        assert {graph.sigs[schedule.sids[i]].name for i in range(b, b + members)} == {"cell Step[input part]"}
    twins = [b for b in range(len(schedule) - 1)
             if graph.sigs[schedule.sids[b]].name == graph.sigs[schedule.sids[b + 1]].name]
    assert twins        # the case this test is about does occur
    # Chains that use both cells at one depth: grouped, each run at one depth, one program.
    graph, schedule, runs = _runs(batcher, [[[(0, 1), (1, 2), (0, 3)]], [[(1, 4), (0, 5), (1, 6)]]])
    assert runs
    for b, members in runs:
        nodes = [n for batch in schedule.batches[b:b + members] for n in batch.tolist()]
        assert len({int(graph.node_depth[n]) for n in nodes}) == 1
        assert len({graph.sigs[schedule.sids[i]].name for i in range(b, b + members)}) == 1
    with torch.enable_grad():
        assert group_runs(graph, schedule, *concatenated(schedule.batches)[1:]) == ()     # training: every batch alone


def test_layout_puts_group_blocks_output_by_output():
    torch.manual_seed(0)
    model = Chains(2).eval()
    batcher = phalanx.Batcher(model)
    instances = [[[(0, 1), (0, 2), (0, 3)], [(1, 4), (1, 5), (1, 6)]]]
    with torch.no_grad():
        batcher(instances)
        graph = batcher.record(instances)
        schedule = batcher.policy.schedule(graph)
        layout = plan_layout(graph, schedule)
    verify_layout(graph, layout, outputs_consecutive=True)
    assert layout.groups
    for b, members in layout.groups:
        batches = layout.batches[b:b + members]
        outputs = graph.sigs[schedule.sids[b]].num_outputs
        for k in range(outputs):
            rows = [layout.value_row[graph.node_first_value[nodes] + k] for nodes in batches]
            joined = torch.from_numpy(__import__("numpy").concatenate(rows))
            assert (joined[1:] - joined[:-1] == 1).all()        # one slice over every member, in order


def test_grouped_program_matches_members_one_by_one():
    """The generated program on joined and split operands equals each member's own program."""
    torch.manual_seed(0)
    model = Chains(2).eval()
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        batcher([[[(0, 1), (0, 2), (0, 3), (0, 4)], [(1, 3), (1, 4), (1, 5), (1, 6)]]])
    rests = [s for s in batcher.table.sigs if s.name.endswith("[rest]")]
    assert len(rests) == 2
    programs = [s.meta["kernel"].program for s in rests]
    sizes = [3, 2]
    with torch.no_grad():
        calls = [p.direct_call(False) for p in programs]
        operands = [[torch.randn(n, *a.shape) for a in programs[0].in_avals] for n in sizes]
        expected = [torch.cat(o) for o in zip(*[p(ops, n) for p, ops, n in zip(programs, operands, sizes, strict=True)],
                                              strict=True)]
        for joined in [(False, False, False), (False, True, True), (True, True, False)]:
            run = grouped_program(programs[0], False, joined, 2)
            assert run is not None, run
            ops = [torch.cat([o[p] for o in operands]) if j else [o[p] for o in operands]
                   for p, j in enumerate(joined)]
            out = [torch.empty(sum(sizes), *a.shape) for a in programs[0].out_avals]
            run(sum(sizes), sizes, [c[1] for c in calls], ops, out, Scratch())
            for got, want in zip(out, expected, strict=True):
                torch.testing.assert_close(got, want)


@phalanx.cell
class Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(DIM, DIM)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Interleaved(nn.Module):
    """Two chains per instance, cell ``a`` and cell ``b``; between their first calls another cell
    type is recorded, so by recording order the twins are not neighbours at a depth."""

    def __init__(self):
        super().__init__()
        self.embed, self.a, self.mix, self.b = Embed(), Step(), Mix(), Step()
        self.register_buffer("h0", torch.zeros(HIDDEN), persistent=False)

    def forward(self, words):
        xs = [self.embed(w) for w in words]
        h = c = self.h0
        mixed = []
        for x in xs:
            h, c = self.a(x, h, c)
            mixed.append(self.mix(x))
        g = d = self.h0
        for x in mixed:
            g, d = self.b(x, g, d)
        return h, g


def test_depth_policy_puts_twins_side_by_side(monkeypatch):
    torch.manual_seed(0)
    model = Interleaved().eval()
    sentences = [[1, 2, 3], [4, 5, 6, 7], [8]]
    counting = Counting(monkeypatch)
    batcher = phalanx.Batcher(model, verify=True)
    for _ in range(2):
        assert_matches_eager(model, sentences, batcher=batcher)
    graph, schedule, runs = _runs(batcher, sentences)
    names = [graph.sigs[s].name for s in schedule.sids]
    assert runs and all(len({names[i] for i in range(b, b + m)}) == 1 for b, m in runs)
    assert counting.ran > 0


def test_gru_twins_group_and_match_eager(monkeypatch):
    torch.manual_seed(0)
    model = Chains(2, step=GruStep).eval()
    instances = [[[(0, w), (0, w + 1), (0, w + 2), (0, w + 3)], [(1, w), (1, w + 2), (1, w + 4)]] for w in range(5)]
    counting = Counting(monkeypatch)
    batcher = phalanx.Batcher(model, verify=True)
    for _ in range(2):
        assert_matches_eager(model, instances, batcher=batcher)
    assert counting.ran > 0
