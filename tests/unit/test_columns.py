"""The recording fast path (ir/columns.py, ir/_columns.c): native and Python twin record exactly what
the recorder's own path records, decline anything else without a trace, and stay correct when op
types are renumbered."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import phalanx
from phalanx.frontend import recorder
from phalanx.frontend.recording import record_instances
from phalanx.frontend.value import LazyValue
from phalanx.ir import columns
from tests.oracle import assert_matches_eager


@phalanx.cell
class Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, a, b):
        return torch.tanh(self.lin(torch.cat([a, b], -1)))


@phalanx.cell
class Pair(nn.Module):
    def forward(self, x):
        return x * 2, x + 1


@phalanx.cell
def scaled(word, scale):
    return torch.ones(3) * word * scale


@phalanx.cell
class Step(nn.Module):
    """An RNN step whose input projection the ahead-of-time cells split off (NOTE: [Input split])."""

    def __init__(self):
        super().__init__()
        self.wx = nn.Linear(3, 3)
        self.wh = nn.Linear(3, 3)

    def forward(self, x, h, scale):
        return torch.tanh(self.wx(x) * scale + self.wh(h))


MIX, PAIR, STEP = Mix(), Pair(), Step()


def rnn(n):
    h = scaled(1, 1.0)
    for k in range(n):
        h = STEP(scaled(k, 0.5), h, 2)
    return h


def chain(n):
    """Number, float, lazy and tuple-returning cells in one instance."""
    x = scaled(n, 0.5)
    h = scaled(1, 2.0)
    for k in range(n):
        a, b = PAIR(x)
        h = MIX(h, a + b) if k % 2 else MIX(a, h)
    return h


def decode(n):
    """Fiber rounds (NOTE: [Values across rounds]): a memory of round 0 read by every later round,
    a state of the previous round, a plain per-instance tensor, numbers, a split cell (``STEP``) with
    a stale operand, ops on stale values (``+``, ``F.pad`` with static widths) and a stack of values
    from every round."""
    memory = scaled(n, 0.5)
    h = MIX(memory, scaled(1, 2.0))
    outs = []
    for k in range(n + 1):
        h = MIX(h, memory)                              # both stale after round 0
        h = MIX(h, torch.full((3,), 0.1 * k))           # a plain tensor operand
        h = torch.tanh(h) * 0.9
        h = STEP(memory, h, k)                          # split: the input part reads the stale memory
        outs.append(h + memory)
        # A decision (the fiber suspends here) that does not depend on the cells' random weights, so
        # the twin's process takes the same rounds: stop after n % 3 + 1 steps.
        if scaled(k, 1.0).sum() >= 3 * (n % 3):
            break
    return torch.stack(outs), torch.nn.functional.pad(memory, (1, 2))


DECODE_INSTANCES = [3, 0, 5, 1, 4]


def _round_columns(batcher, instances) -> list:
    """Each round's columns as recorded, stale immediates named by (vid, aval), not yet resolved."""
    from phalanx.runtime import fibers

    rounds = []
    original = fibers.Hub._flush

    def capture(self):
        g = self.rec.graph
        imms = g.imms
        rounds.append({"names": [g.table.sigs[s].name for s in g.node_sig], "depth": list(g.node_depth),
                       "arg_start": list(g.arg_start), "arg_code": list(g.arg_code), "values": g.num_values,
                       "imms": [("stale", x.vid, repr(x.aval)) if type(x) is LazyValue
                                else x.tolist() if isinstance(x, torch.Tensor) else x for x in imms]})
        return original(self)

    fibers.Hub._flush = capture
    try:
        with torch.no_grad():
            batcher(instances)
    finally:
        fibers.Hub._flush = original
    return rounds


def _columns_of(graph) -> dict:
    return {"names": [graph.sigs[s].name for s in graph.node_sig.tolist()], "depth": graph.node_depth.tolist(),
            "arg_start": graph.arg_start.tolist(), "arg_code": graph.arg_code.tolist(),
            "imms": [x if not isinstance(x, torch.Tensor) else x.tolist() for x in graph.imms],
            "values": int(graph.num_values)}


def python_cell_calls(monkeypatch) -> list:
    """The cells whose calls reach the recorder's Python path (``Recorder.record_cell``) from now on."""
    calls = []
    original = recorder.Recorder.record_cell

    def counted(self, cell, args, kwargs):
        calls.append(cell)
        return original(self, cell, args, kwargs)

    monkeypatch.setattr(recorder.Recorder, "record_cell", counted)
    return calls


@pytest.mark.parametrize("fn, cells", [(chain, False), (chain, True), (rnn, True)])
def test_fast_path_records_what_the_recorders_own_path_records(monkeypatch, fn, cells):
    instances = [0, 1, 6, 3]
    fast = phalanx.Batcher(fn, cells=cells)
    fast.record(instances)                       # first call: op types found by the recorder
    with_fast = _columns_of(fast.record(instances))
    if fn is rnn:
        assert any("[input part]" in name for name in with_fast["names"])     # it did split

    def no_fast_entry(self, *args, **kwargs):
        sig = original(self, *args, **kwargs)
        sig.fast_pattern = None
        return sig

    original = recorder.Recorder._new_signature
    monkeypatch.setattr(recorder.Recorder, "_new_signature", no_fast_entry)
    slow = phalanx.Batcher(fn, cells=cells)
    slow.record(instances)
    assert all(s.fast_entry is None for s in slow.table.sigs)
    assert _columns_of(slow.record(instances)) == with_fast
    params = [*MIX.parameters(), *STEP.parameters()]
    assert_matches_eager(fn, instances, params=params, train=True, batcher=fast)
    assert_matches_eager(fn, instances + [5], batcher=fast)


def _recording():
    batcher = phalanx.Batcher(chain, cells=False)     # unsplit cells: the Python twin takes them too
    batcher.table.begin_call()
    rec, _ = record_instances(chain, [2], batcher.table)
    return rec


def test_append_call_declines_anything_else_and_changes_nothing():
    rec = _recording()
    other = _recording().graph
    g = rec.graph
    recorder._SLOT.rec = rec
    try:
        x = scaled(3, 1.0)
        h = MIX(x, x)
        assert MIX in g.fast_calls and scaled in g.fast_calls
        foreign = LazyValue(0, x.aval, 0, other)
        wide = LazyValue(0, phalanx.ir.aval.aval((4,), torch.float32), 0, g)
        before = (list(g.node_sig), list(g.node_depth), list(g.arg_start), list(g.arg_code), len(g.imms), g.num_values)
        for cell, args in [(nn.Linear(1, 1), (x,)),      # a cell this graph has not seen
                           (MIX, (x,)), (MIX, (x, x, x)), (MIX, (x, wide)), (MIX, (x, foreign)),
                           (MIX, (x, torch.ones(3))), (scaled, (True, 1.0)), (scaled, (3, 1)), (scaled, (2.5, 1.0)),
                           (scaled, (x, 1.0)), (MIX, (x, None))]:
            assert g.append_call(cell, args) is NotImplemented, (cell, args)
        assert (list(g.node_sig), list(g.node_depth), list(g.arg_start), list(g.arg_code), len(g.imms),
                g.num_values) == before
        # And what it takes: one node, depth one past the deepest lazy argument, a fresh value.
        out = g.append_call(MIX, (h, x))
        assert type(out) is LazyValue and out.vid == before[5] and out.depth == h.depth + 1 and out.graph is g
        assert list(g.arg_code[-2:]) == [h.vid, x.vid] and g.arg_start[-1] == len(g.arg_code)
        y = g.append_call(scaled, (7, 0.25))
        assert g.imms[-2:] == [7, 0.25] and list(g.arg_code[-2:]) == [-1 - (len(g.imms) - 2), -len(g.imms)]
        assert y.depth == 0
    finally:
        recorder._SLOT.rec = None


def test_phase_base_is_the_least_depth():
    def fn(n):
        x = scaled(n, 1.0)
        with phalanx.phase("two"):
            y = scaled(n, 2.0)           # no lazy operand: depth restarts at the phase's base
            z = MIX(x, y)
        return z

    g = phalanx.Batcher(fn).record([1, 2])
    assert g.node_depth.tolist() == [0, 1, 2, 0, 1, 2]
    assert_matches_eager(fn, [1, 2, 3])


def test_renumbered_op_types_keep_their_fast_entries():
    @phalanx.cell
    def grow(x):
        return torch.cat([x, x[:1]]) * 2

    def fn(n):
        x = torch.ones(n)
        for _ in range(3):
            x = grow(x)
        return x

    batcher = phalanx.Batcher(fn, max_signatures=4)
    for sizes in ([1, 2], [5, 6], [9], [1, 2, 3]):          # new shapes force evictions (sids change)
        assert_matches_eager(fn, sizes, batcher=batcher)
    entries = [s.fast_entry for s in batcher.table.sigs if s.fast_entry is not None]
    assert entries and all(e[0] == batcher.table.sigs.index(s)
                           for s in batcher.table.sigs if (e := s.fast_entry) is not None)


def test_cell_call_descriptor_behaves_like_a_method():
    import inspect

    cls_call = type(MIX).__call__
    assert cls_call.__get__(None, type(MIX)) is cls_call
    assert list(inspect.signature(MIX).parameters) == ["args", "kwargs"]
    x, y = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(MIX.__call__(x, y), MIX(x, y))
    torch.testing.assert_close(scaled(word=2, scale=0.5), torch.ones(3))      # eager, keywords
    out = phalanx.Batcher(lambda n: MIX(a=scaled(n, 1.0), b=scaled(n, 2.0)))([1, 2])   # keywords, recorded
    for n, o in zip([1, 2], out, strict=True):
        torch.testing.assert_close(o, MIX(scaled(n, 1.0), scaled(n, 2.0)))


def test_the_native_extension_is_built_where_a_compiler_is():
    if os.environ.get("PHALANX_NATIVE") == "0":
        pytest.skip("PHALANX_NATIVE=0 asks for the Python twin")
    import sysconfig

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the Python twin is expected")
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        pytest.skip("no Python headers: the Python twin is expected")
    assert columns.NATIVE, "phalanx/ir/_columns.c was not built (pip install -e . builds it)"
    assert columns.CellCall is not None and type(type(MIX).__call__) is columns.CellCall


def test_stale_operands_take_the_fast_path_and_match_eager(monkeypatch):
    batcher = phalanx.Batcher(decode, cells=True)
    _round_columns(batcher, DECODE_INSTANCES)          # first call: op types found by the recorder
    fast = _round_columns(batcher, DECODE_INSTANCES)
    assert len(fast) >= 4 and any(x[0] == "stale" for r in fast for x in r["imms"] if type(x) is tuple)
    assert any("[input part]" in name for r in fast[1:] for name in r["names"])     # split with a stale operand
    # The recorder's own path records the same rounds.
    original = recorder.Recorder._new_signature

    def no_fast_entry(self, *args, **kwargs):
        sig = original(self, *args, **kwargs)
        sig.fast_pattern = None
        return sig

    with monkeypatch.context() as patch:
        patch.setattr(recorder.Recorder, "_new_signature", no_fast_entry)
        slow = phalanx.Batcher(decode, cells=True)
        _round_columns(slow, DECODE_INSTANCES)
        assert _round_columns(slow, DECODE_INSTANCES) == fast
    params = [*MIX.parameters(), *STEP.parameters()]
    assert_matches_eager(decode, DECODE_INSTANCES, params=params, train=True, batcher=batcher)
    assert_matches_eager(decode, DECODE_INSTANCES + [2, 6], batcher=batcher)
    assert_matches_eager(decode, [], batcher=batcher)


@pytest.mark.skipif(not columns.NATIVE, reason="the Python twin calls the recorder's Python path by design")
def test_stale_operands_never_reach_the_python_recorder_after_the_first(monkeypatch):
    batcher = phalanx.Batcher(decode, cells=False)       # the probed path: its own op names
    _round_columns(batcher, DECODE_INSTANCES)
    calls = python_cell_calls(monkeypatch)
    rounds = _round_columns(batcher, DECODE_INSTANCES)
    # MIX alternates two patterns (stale, stale) / (lazy, tensor), so each of its calls after a
    # switch is Python; every STEP and scaled call after its first in a round is native.
    step_calls = sum(name == "cell Step" for r in rounds for name in r["names"])
    assert calls.count(STEP) <= len(rounds) < step_calls


def test_append_call_takes_stale_values_of_its_run_only():
    rec = _recording()
    g = rec.graph
    g.run = run = object()
    earlier = _recording().graph
    earlier.run = run
    finished = _recording().graph
    finished.run = object()
    recorder._SLOT.rec = rec
    try:
        x = scaled(3, 1.0)
        tensor_key = (columns.TENSOR_KEY, x.aval)
        g.fast_calls[MIX] = (g.node_sig[-1], (x.aval, tensor_key), (x.aval,), True)
        stale = LazyValue(0, x.aval, 7, earlier)
        before = (list(g.arg_code), len(g.imms), g.num_values)
        for args in [(x, LazyValue(0, x.aval, 0, finished)),            # another run's value
                     (x, LazyValue(0, phalanx.ir.aval.aval((4,), torch.float32), 0, earlier)),   # another aval
                     (stale, x),                                        # a stale value where a lazy one goes
                     (x, torch.ones(4)), (x, torch.ones(3, dtype=torch.float64)),   # a tensor of another aval
                     (x, torch.nn.Parameter(torch.ones(3)))]:           # a shared parameter
            assert g.append_call(MIX, args) is NotImplemented, args
        assert (list(g.arg_code), len(g.imms), g.num_values) == before
        out = g.append_call(MIX, (x, stale))
        assert out.depth == x.depth + 1         # a stale value adds no depth: it is data of this round
        assert g.imms[-1] is stale and g.arg_code[-1] == -len(g.imms) and g.arg_code[-2] == x.vid
        plain = torch.ones(3)
        g.append_call(MIX, (x, plain))
        assert g.imms[-1] is plain
        g.run = None                            # no run (Batcher.record): nothing is stale
        assert g.append_call(MIX, (x, stale)) is NotImplemented
    finally:
        recorder._SLOT.rec = None


def test_a_value_of_a_finished_fibers_run_is_refused():
    """Stale means of an earlier round of the same call: a value kept from an earlier call is
    refused with a clear error, also where the cell's fast entry takes stale values."""
    kept, leaked = [], []

    def grab(n):
        memory = scaled(n, 0.5)
        kept.append(memory)
        h = MIX(memory, memory)
        if h.sum() > -100:              # a decision: the next MIX call reads stale values
            h = MIX(h, leaked[0] if leaked and n == 3 else memory)
        return h

    batcher = phalanx.Batcher(grab)
    with torch.no_grad():
        batcher([1, 2])
        leaked.append(kept[0])
        with pytest.raises(phalanx.PhalanxError, match="finished phalanx run"):
            batcher([1, 3])             # instance 0 registers the stale pattern; instance 1 is refused
    leaked.clear()
    assert_matches_eager(grab, [1, 2, 3], batcher=batcher)       # and the next run works


_TWIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from phalanx.ir import columns
    assert not columns.NATIVE
    from tests.unit.test_columns import chain, decode, DECODE_INSTANCES, _columns_of, _round_columns, MIX, STEP
    from tests.oracle import assert_matches_eager
    import phalanx
    b = phalanx.Batcher(chain)
    b.record([0, 1, 4, 3])
    rounds = phalanx.Batcher(decode, cells=True)
    _round_columns(rounds, DECODE_INSTANCES)
    print(json.dumps([_columns_of(b.record([0, 1, 4, 3])), _round_columns(rounds, DECODE_INSTANCES)]))
    assert_matches_eager(chain, [0, 1, 4, 3, 2], params=MIX.parameters(), train=True, batcher=b)
    assert_matches_eager(chain, [], batcher=b)
    assert_matches_eager(decode, DECODE_INSTANCES, params=[*MIX.parameters(), *STEP.parameters()], train=True,
                         batcher=rounds)
""")


def test_python_twin_records_the_same_graphs_and_matches_eager():
    """Also the rounds of a fibers run, with stale operands (NOTE: [Values across rounds])."""
    env = {**os.environ, "PHALANX_NATIVE": "0"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", _TWIN_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    twin_chain, twin_rounds = json.loads(done.stdout.strip().splitlines()[-1])
    b = phalanx.Batcher(chain)
    b.record([0, 1, 4, 3])
    assert twin_chain == _columns_of(b.record([0, 1, 4, 3]))
    rounds = phalanx.Batcher(decode, cells=True)
    _round_columns(rounds, DECODE_INSTANCES)
    assert twin_rounds == json.loads(json.dumps(_round_columns(rounds, DECODE_INSTANCES)))    # stale operands too


def _int_columns():
    from array import array

    kinds = [lambda items=(): array("q", items)]
    if columns.NATIVE:
        from phalanx.ir._columns import IntColumn
        kinds.append(lambda items=(): IntColumn(items))
    return kinds


@pytest.mark.parametrize("make", _int_columns())
def test_int_columns_behave_like_int64_lists(make):
    import numpy as np

    col = make([3, -1])
    col.append(7)
    col.extend(range(4))
    col.extend([2 ** 40, -(2 ** 40)])
    expected = [3, -1, 7, 0, 1, 2, 3, 2 ** 40, -(2 ** 40)]
    assert len(col) == len(expected) and list(col) == expected and bool(col)
    assert col[-1] == expected[-1] and col[2] == 7 and list(col[2:5]) == expected[2:5]
    del col[5:]
    assert list(col) == expected[:5]
    np.testing.assert_array_equal(columns.as_array(col), np.array(expected[:5]))
    view = memoryview(col)
    with pytest.raises(BufferError):        # no resizing under an exported buffer
        col.append(1)
    view.release()
    col.append(1)
    with pytest.raises(TypeError):
        col.append("x")
    with pytest.raises(IndexError):
        col[len(col)]
    assert columns.as_array(make()).shape == (0,) and not make()


@pytest.mark.skipif(not columns.NATIVE, reason="the Python twin calls the recorder's Python path by design")
@pytest.mark.parametrize("fn, cells", [(chain, False), (rnn, True)])
def test_native_calls_never_reach_the_python_recorder_after_the_first(monkeypatch, fn, cells):
    batcher = phalanx.Batcher(fn, cells=cells)
    batcher.record([3, 4])
    calls = python_cell_calls(monkeypatch)
    graph = batcher.record([5, 2, 6])
    # one Python call per cell (and per split mask) and graph: its first; every other call is native
    assert len(calls) <= 6 and graph.num_nodes > 3 * len(calls)


@pytest.mark.skipif(not columns.NATIVE, reason="the Python twin calls the recorder's Python path by design")
def test_split_chains_from_a_tensor_state_stay_native(monkeypatch):
    # Each chain's first step reads a plain tensor h0 (its own op type, with a fast pattern of its
    # own); the all-lazy steps after it must take the native path again, not every one through Python.
    from phalanx.models.tagger import BiLSTMTagger

    torch.manual_seed(0)
    model = BiLSTMTagger(20, hidden=8).eval()
    sentences = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [3, 4, 5, 6, 7, 8, 9]]
    batcher = phalanx.Batcher(model, cells=True)
    batcher.record(sentences)
    calls = python_cell_calls(monkeypatch)
    batcher.record(sentences)
    steps = sum(len(s) for s in sentences) * 2
    # through Python: at most the first two steps of each chain (h0, then back to the lazy pattern),
    # plus each cell's first call per graph and split mask
    python_steps = len([c for c in calls if type(c).__name__ == "LSTMStep"])
    assert python_steps <= 2 * 2 * len(sentences) + 4 and python_steps < steps / 2


@pytest.mark.skipif(not columns.NATIVE, reason="the Python twin calls the recorder's Python path by design")
@pytest.mark.parametrize("cells", [False, True])
def test_chains_from_a_tensor_state_take_no_python_call_per_sentence(monkeypatch, cells):
    # NOTE: [Fast entry chains]: each LSTM direction's op types (h0 tensor first step, lazy steps,
    # split parts) keep their fast entries side by side, so the Python path runs a fixed number of
    # times per graph, whatever the number of sentences.
    from phalanx.models.tagger import BiLSTMTagger

    torch.manual_seed(0)
    model = BiLSTMTagger(20, hidden=8).eval()
    sentences = [[1 + (k * 7 + j) % 19 for j in range(4 + k % 5)] for k in range(12)]
    batcher = phalanx.Batcher(model, cells=cells)
    batcher.record(sentences)
    counts = []
    for n in (3, 12):
        calls = python_cell_calls(monkeypatch)
        graph = batcher.record(sentences[:n])
        counts.append(len(calls))
        monkeypatch.undo()
    assert counts[0] == counts[1] and counts[1] <= 10 and graph.num_nodes > 10 * counts[1]


def test_a_fast_entry_chain_keeps_each_op_type_once_and_at_most_four():
    rec = _recording()
    g = rec.graph
    recorder._SLOT.rec = rec
    try:
        x = scaled(3, 1.0)
        MIX(x, x)
        sigs = [s for s in rec.table.sigs if s.callee is MIX]

        def chain_sids():
            sids, entry = [], g.fast_calls[MIX]
            while entry is not None:
                sids.append(entry[0])
                entry = entry[5]
            return sids

        first = sigs[0]
        rec._register_fast(g, MIX, first)
        assert chain_sids() == [first.sid]
        fakes = []
        for k in range(5):          # other op types of the cell (stand-ins with their own sids)
            fake = dataclasses.replace(first, sid=100 + k)
            fakes.append(fake)
            rec._register_fast(g, MIX, fake)
        assert chain_sids() == [104, 103, 102, 101]            # newest first, bounded
        rec._register_fast(g, MIX, fakes[2])
        assert chain_sids() == [102, 104, 103, 101]            # re-registered: moved to the front, once
    finally:
        recorder._SLOT.rec = None


def test_append_call_tries_every_entry_of_the_chain():
    rec = _recording()
    g = rec.graph
    g.run = object()
    recorder._SLOT.rec = rec
    try:
        x = scaled(3, 1.0)
        h = MIX(x, x)
        sid = g.node_sig[-1]
        tensor_key = (columns.TENSOR_KEY, x.aval)
        lazy = (sid, (x.aval, x.aval), (x.aval,), True, None, None)
        g.fast_calls[MIX] = (sid, (x.aval, tensor_key), (x.aval,), True, None, lazy)
        nodes = len(g.node_sig)
        plain = torch.ones(3)
        assert type(g.append_call(MIX, (h, plain))) is LazyValue          # the first entry
        out = g.append_call(MIX, (h, x))                                   # the second one
        assert type(out) is LazyValue and out.depth == h.depth + 1
        assert g.append_call(MIX, (plain, h)) is NotImplemented           # neither
        assert len(g.node_sig) == nodes + 2
    finally:
        recorder._SLOT.rec = None


@pytest.mark.parametrize("items, plain", [
    ([], True), ((), True), ([1, 2.5, True, "w", b"b", 1j, None], True), ({"a": 1, "b": "x"}.values(), True),
    ([1, torch.tensor(3)], False), ((1, [2]), False), ([1, (2,)], False), ({"a": torch.ones(1)}.values(), False),
    (iter([1, 2]), True), (iter([1, object()]), False)])
def test_plain_items_finds_anything_but_plain_numbers_and_strings(items, plain):
    assert columns.plain_items(items) is plain


def test_plain_items_wants_the_exact_types():
    class MyInt(int):
        pass

    assert not columns.plain_items([MyInt(3)])       # a subclass may carry anything: lazify looks into it


def test_lazy_values_reused_from_the_freelist_are_whole_and_tracked():
    import gc

    batcher = phalanx.Batcher(chain)
    batcher.record([2, 3])
    seen = []
    for _ in range(3):              # values freed by one recording are reused by the next
        batcher.table.begin_call()
        rec, outputs = record_instances(chain, [4, 1, 3], batcher.table)
        g = rec.graph
        values = [leaf for leaves, _ in outputs for leaf in leaves]
        assert all(type(v) is LazyValue and v.graph is g and gc.is_tracked(v) for v in values)
        seen.append([(v.vid, repr(v.aval), v.depth) for v in values])
        assert len({v.vid for v in values}) == len(values) and max(v.vid for v in values) < g.num_values
        del rec, outputs, values, g
    assert seen[0] == seen[1] == seen[2] and len(seen[0]) == 3
