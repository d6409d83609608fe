"""Ragged operands (frontend/ragged.py, runtime/ragged.py): a stack of a variable number of lazy
values, passed to a cell (stacked or as a list) or reduced over the stacked dim, is ONE op type for
every arity, and matches the per-instance eager loop, outputs and gradients."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

import phalanx
from tests.oracle import assert_matches_eager

H = 6


@phalanx.cell
class MeanNode(nn.Module):
    """A lattice node: (word, predecessors stacked [k, H]) -> h, reading their mean."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, H)
        self.gru = nn.GRUCell(H, H)

    def forward(self, word, hs):
        return self.gru(self.embed(word), hs.mean(-2))


@phalanx.cell
class ChildSumNode(nn.Module):
    """A child-sum node: a forget gate per child, summed; two ragged arguments."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, H)
        self.w_f, self.u_f, self.u = nn.Linear(H, H), nn.Linear(H, H, bias=False), nn.Linear(H, H)

    def forward(self, word, hs, cs):
        x = self.embed(word)
        f = torch.sigmoid(self.w_f(x).unsqueeze(-2) + self.u_f(hs))
        c = torch.tanh(x + self.u(hs.sum(-2))) + (f * cs).sum(-2)
        return torch.tanh(c), c


@phalanx.cell
class ListNode(nn.Module):
    """A cell whose argument is a Python list of any length (0 included)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, H)
        self.mix = nn.Linear(H, H)

    def forward(self, word, children):
        x = self.embed(word)
        total = torch.stack(children).sum(0) if children else torch.zeros_like(x)
        return torch.tanh(self.mix(total) + x)


class Net(nn.Module):
    """One instance: a list of arities; node i reads the states of ``arity`` earlier nodes."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.leaf = phalanx.cell(nn.Embedding(20, H))   # lazy inside a run
        self.mean, self.childsum, self.listed = MeanNode(), ChildSumNode(), ListNode()

    def forward(self, arities):
        hs = [torch.tanh(self.leaf(3))]
        cs = [hs[0]]
        for i, k in enumerate(arities):
            preds = [(i * 7 + 3 * j) % len(hs) for j in range(k)]
            word = (i * 5 + k) % 20
            if self.form == "mean":
                h = self.mean(word, torch.stack([hs[p] for p in preds]))
            elif self.form == "childsum":
                h, c = self.childsum(word, torch.stack([hs[p] for p in preds]), torch.stack([cs[p] for p in preds]))
                cs.append(c)
            elif self.form == "list":
                h = self.listed(word, [hs[p] for p in preds])
            elif self.form == "sum":
                h = torch.tanh(torch.stack([hs[p] for p in preds]).sum(0) + self.leaf(word))
            else:
                h = torch.tanh(torch.stack([hs[p] for p in preds]).mean(dim=0) * 0.5)
            hs.append(h)
        return torch.stack(hs[1:]) if len(hs) > 1 else hs[0]


def _node_types(batcher, instances, word: str) -> set:
    graph = batcher.record(instances)
    return {graph.sigs[s].describe() for s in graph.used_sids if word in graph.sigs[s].name}


def _modes(batcher) -> set:
    return {getattr(k, "mode", None) for s in batcher.table.sigs if "ragged" in s.meta for k in s.kernels.values()}


# Stacked forms need k >= 1 (torch.stack of nothing fails eagerly); a list argument may be empty.
ONE_BATCH = {"mean": [[1, 2, 3, 4, 5, 6, 7, 8], [8, 1], [3, 3, 2]],
             "childsum": [[2, 1, 3, 4, 5, 6, 7, 8], [8, 1], [3, 3, 2]],
             "list": [[2, 0, 1, 3, 4, 5, 6, 7, 8], [0, 1], [3, 0, 2]],
             "sum": [[1, 2, 3, 4, 5, 6, 7, 8], [2, 8]],
             "segment_mean": [[1, 2, 3, 4, 5, 6, 7, 8], [2, 8]]}


@pytest.mark.parametrize("cells", [False, True])
@pytest.mark.parametrize("form", list(ONE_BATCH))
def test_every_arity_is_one_op_type_and_matches_eager(form, cells):
    torch.manual_seed(0)
    model = Net(form)
    instances = ONE_BATCH[form]
    word = {"mean": "MeanNode", "childsum": "ChildSumNode", "list": "ListNode"}.get(form, "ragged")
    batcher = phalanx.Batcher(model, cells=cells, policy="depth", verify=True, profile=True)
    # The first instance's first list is not empty (an empty list alone has no element shape).
    assert len(_node_types(batcher, instances, word)) == 1
    assert_matches_eager(model, instances, batcher=batcher)
    # Nodes of every arity at one depth run as one batch: at most one batch per node position.
    ragged_batches = sum(row["batches"] for name, row in batcher.stats.per_op.items() if "ragged" in name)
    assert 0 < ragged_batches <= max(map(len, instances))
    assert_matches_eager(model, instances, params=model.parameters(), train=True, batcher=batcher)


@pytest.mark.parametrize("form, mode", [("mean", "ragged-reduced"), ("childsum", "ragged-segment"),
                                        ("list", "ragged-grouped"), ("sum", "segment-sum"),
                                        ("segment_mean", "segment-mean")])
def test_kernel_mode(form, mode):
    # The lattice cell runs as its traced reduced form (NOTE: [Reduced ragged programs]), the
    # child-sum cell its own code once per batch on segments; a list body
    # that branches on its length runs once per arity present (still one batch in the schedule).
    torch.manual_seed(0)
    model = Net(form)
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        batcher(ONE_BATCH[form])
    assert _modes(batcher) == {mode}


def test_other_uses_of_a_stack_record_the_ordinary_stack():
    # rs * 2, indexing, shape: the stacked value exactly as without ragged operands.
    def fn(xs):
        vs = [torch.tanh(x) for x in xs]
        rs = torch.stack(vs)
        assert rs.shape == (len(xs), 3) and len(rs) == len(xs)
        return (rs * 2).sum(-1) + rs[0].sum() + torch.stack(vs).max(0).values.sum()

    instances = [[torch.randn(3) for _ in range(k)] for k in (1, 2, 5)]
    batcher = assert_matches_eager(fn, instances)
    graph = batcher.record(instances)
    assert {graph.sigs[s].name for s in graph.used_sids} >= {"op torch.stack", "op Tensor.__mul__"}


def test_arity_zero_in_a_later_call_joins_the_op_type():
    torch.manual_seed(0)
    model = Net("list")
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        batcher([[2, 1]])
        assert len(_node_types(batcher, [[0], [0, 0, 3]], "ListNode")) == 1
    assert_matches_eager(model, [[0], [0, 0, 3]], params=model.parameters(), train=True, batcher=batcher)


@settings(max_examples=12, deadline=None)
@given(form=st.sampled_from(["mean", "childsum", "list", "sum"]), cells=st.booleans(),
       batch=st.lists(st.lists(st.integers(0, 8), min_size=1, max_size=5), min_size=0, max_size=4),
       train=st.booleans())
def test_random_arities_match_eager(form, cells, batch, train):
    low = 0 if form == "list" else 1
    batch = [[max(k, low) for k in inst] for inst in batch]
    torch.manual_seed(0)
    model = Net(form)
    batcher = phalanx.Batcher(model, cells=cells, verify=True)
    if form == "list":
        with torch.no_grad():
            batcher([[2]])        # the element shape of this cell's list argument is known from here on
    if train:
        assert_matches_eager(model, batch, params=model.parameters(), train=True, batcher=batcher)
    else:
        assert_matches_eager(model, batch, batcher=batcher)


@pytest.mark.parametrize("form", ["childsum", "sum"])
def test_memory_planner_reads_only_fixed_operands(form):
    # A ragged node's operand count varies within its op type; the planner plans its fixed
    # operands (the last node of a graph may be a ragged node with fewer members than another).
    torch.manual_seed(0)
    model = Net(form)
    instances = [[8, 2], [3, 1]] if form == "childsum" else [[2, 8], [1, 1, 5, 2]]
    batcher = phalanx.Batcher(model, plan="auto", verify=True)
    assert_matches_eager(model, instances, params=model.parameters(), train=True, batcher=batcher)


def test_an_instance_the_loss_does_not_use_may_hold_inf():
    # NOTE: [Rows the loss does not use]: the batch is re-run on the used rows; a ragged argument's
    # values are member rows, so the re-run selects the members of those rows.
    torch.manual_seed(0)
    node = MeanNode()

    def fn(inst):
        start, arities = inst
        hs = [start * 1.0]
        for i, k in enumerate(arities):
            hs.append(node(i % 20, torch.stack([hs[(i * 3 + j) % len(hs)] for j in range(k)])))
        return hs[-1]

    instances = [(torch.randn(H), [1, 3, 2]), (torch.full((H,), float("inf")), [2, 1, 3]), (torch.randn(H), [3, 1])]
    used = [0, 2]
    expected = [fn(x) for x in instances]
    assert not torch.isfinite(expected[1]).all()
    sum(expected[i].sum() for i in used).backward()
    want = [p.grad.clone() for p in node.parameters()]
    node.zero_grad()
    got = phalanx.Batcher(fn, verify=True)(instances)
    sum(got[i].sum() for i in used).backward()
    for p, w in zip(node.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w)


def test_a_failing_batch_names_the_instance():
    torch.manual_seed(0)
    node, leaf = MeanNode(), phalanx.cell(nn.Embedding(20, H))

    def fn(inst):
        word, k = inst
        return node(word, torch.stack([leaf(j) for j in range(k)]))

    batcher = phalanx.Batcher(fn)
    with torch.no_grad():
        batcher([(3, 2), (5, 3)])                              # the kernel is chosen on good rows
        with pytest.raises(phalanx.errors.BatchExecutionError, match="instance 1: cell MeanNode"):
            batcher([(3, 2), (25, 3), (4, 1)])                 # word 25 is past the embedding table


@phalanx.cell
def _mix(scale, xs, ys):
    """A function cell with a number, a stack and a list argument."""
    return torch.tanh(xs.sum(-2) * scale) + (torch.stack(ys).mean(0) if ys else 0.0)


@phalanx.cell
def _pair(xs, ys):
    return xs.sum(-2) * ys.mean(-2)


def _mixed_calls(inst):
    # Argument patterns change from call to call: number types, arities, element shapes, a list
    # (empty too), stacks of different lengths (materialized), a per-instance tensor argument.
    seed, wide = inst
    hs = [torch.tanh(seed * (j + 1)) for j in range(3)]
    wides = [torch.tanh(wide * (j + 1)) for j in range(2)]
    out = []
    for i in range(6):
        k = 1 + (i % 3)
        out.append(_mix(2, torch.stack(hs[:k]), hs[k - 1:]))
        out.append(_mix(0.5, torch.stack(hs[:k]), []))
        out.append(_mix(3, torch.stack(wides[: 1 + i % 2]), wides[:1]))
        out.append(_mix(seed.sum() * 0.1, torch.stack(hs[:k]), hs[:2]))
        out.append(_pair(torch.stack(hs[:k]), torch.stack(hs[:1 + (i % 2)])))
        hs.append(out[-2])
    return [o.sum() for o in out]


def test_the_ragged_fast_path_records_what_the_general_path_records(monkeypatch):
    # NOTE: [Ragged fast path]: a cell's calls like its last one skip the general path; the graph
    # must be exactly the one the general path records (op types, operand codes, depths, numbers).
    from phalanx.frontend import ragged as ragged_frontend

    instances = [(torch.randn(H), torch.randn(2 * H)) for _ in range(3)]
    batcher = phalanx.Batcher(_mixed_calls)
    with torch.no_grad():
        batcher(instances)
    calls = []
    original = ragged_frontend.record_known_call

    def counted(rec, hit, args):
        out = original(rec, hit, args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(ragged_frontend, "record_known_call", counted)
    fast = batcher.record(instances)
    assert any(calls) and not all(calls)        # both outcomes happened
    monkeypatch.setattr(ragged_frontend, "record_known_call", lambda rec, hit, args: None)
    general = batcher.record(instances)
    for column in ("node_sig", "node_depth", "arg_start", "arg_code"):
        assert getattr(fast, column).tolist() == getattr(general, column).tolist(), column
    assert [type(x) for x in fast.imms] == [type(x) for x in general.imms]
    assert all(a is b or (type(a) is not torch.Tensor and a == b) for a, b in zip(fast.imms, general.imms, strict=True))
    monkeypatch.undo()
    assert_matches_eager(_mixed_calls, instances, batcher=batcher)
    assert_matches_eager(_mixed_calls, instances, params=[], train=True, batcher=batcher)


class Padded(nn.Module):
    """An attention memory: the states of a variable-length sequence, stacked and padded at the end
    to a fixed number of rows (``pad`` is how; ``value`` the fill)."""

    def __init__(self, rows=6, pad="end", value=0.0):
        super().__init__()
        self.rows, self.pad, self.value = rows, pad, value
        self.lin = nn.Linear(H, H)

    def forward(self, xs):
        states = [torch.tanh(self.lin(x)) for x in xs]
        p = self.rows - len(states)
        widths = {"end": (0, 0, 0, p), "front": (0, 0, p, 0), "last dim": (0, 1, 0, 0)}[self.pad]
        memory = F.pad(torch.stack(states), widths, value=self.value)
        return torch.tanh(memory * 2).sum(-1)


def _pad_instances(seed, lengths):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(H, generator=gen) for _ in range(k)] for k in lengths]


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=0, max_size=5), seed=st.integers(0, 2**16),
       value=st.sampled_from([0.0, -1.5]))
def test_end_padded_stack_is_one_op_type_and_matches_eager(lengths, seed, value):
    torch.manual_seed(seed)
    model = Padded(value=value)
    instances = _pad_instances(seed, lengths)
    batcher = assert_matches_eager(model, instances, batcher=phalanx.Batcher(model, verify=True, profile=True))
    assert_matches_eager(model, instances, params=model.parameters(), train=True)
    if instances:
        names = set(batcher.stats.per_op)
        assert "op ragged pad[6]" in names and "op torch.stack" not in names
        with torch.no_grad():
            batcher(instances)
        kernels = {sig.kernel.mode for sig in batcher.table.sigs if sig.name.startswith("op ragged pad")}
        assert kernels == {"padded-stack"}


@pytest.mark.parametrize("pad", ["front", "last dim"])
def test_other_paddings_of_a_stack_record_the_ordinary_stack(pad):
    torch.manual_seed(1)
    model = Padded(pad=pad)
    instances = _pad_instances(2, [1, 4, 2])
    batcher = assert_matches_eager(model, instances, batcher=phalanx.Batcher(model, profile=True))
    assert_matches_eager(model, instances, params=model.parameters(), train=True)
    assert "op torch.stack" in batcher.stats.per_op and not any("ragged" in n for n in batcher.stats.per_op)


# *** NOTE: [Native ragged stacks] (ir/_columns.c): the stack and the cell call that reads it ***

def _lattice(inst):
    """A lattice as the natural model writes it: a plain tensor h0, then a cell per node reading
    the stacked states of its predecessors (one of them, node 0, the tensor), plus two-stack calls."""
    h0, preds_of = inst
    hs, cs = [h0], [h0]
    for i, preds in enumerate(preds_of):
        hs.append(_NODE(i % 20, torch.stack([hs[p] for p in preds])))
        if len(preds) > 1:
            h, c = _CHILDSUM(i % 20, torch.stack([hs[p] for p in preds]), torch.stack([cs[p] for p in preds]))
            hs[-1] = h + hs[-1]
            cs.append(c)
        else:
            cs.append(hs[-1])
    return hs[-1]


_NODE, _CHILDSUM = MeanNode(), ChildSumNode()


def _lattices(seed: int, count: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = int(torch.randint(1, 7, (1,), generator=gen))
        preds = [sorted({i, *torch.randint(0, i + 1, (2,), generator=gen).tolist()}) for i in range(n)]
        out.append((torch.randn(H, generator=gen), preds))
    return out


def _without_native_ragged(monkeypatch):
    from phalanx.frontend import ragged as ragged_frontend, value

    # the Python body of __torch_function__ (natively it is wrapped in a TorchFunction that makes stacks)
    wrapped = value.LazyValue.__dict__["__torch_function__"].__func__
    monkeypatch.setattr(value.LazyValue, "__torch_function__", classmethod(getattr(wrapped, "fallback", wrapped)))
    monkeypatch.setattr(ragged_frontend, "_native_pattern", lambda key, spec, sig: None)


def _graph_columns(graph) -> dict:
    return {"sig": [graph.sigs[s].name for s in graph.node_sig.tolist()], "depth": graph.node_depth.tolist(),
            "arg_start": graph.arg_start.tolist(), "arg_code": graph.arg_code.tolist(),
            "imms": [x.tolist() if isinstance(x, torch.Tensor) else x for x in graph.imms],
            "values": int(graph.num_values)}


def test_native_stacks_record_what_the_python_path_records(monkeypatch):
    from phalanx.frontend import recorder

    instances = _lattices(0, 5)
    native = phalanx.Batcher(_lattice)
    native.record(instances)                    # first call: op types found by the recorder
    calls = []
    original = recorder.Recorder.record_cell
    monkeypatch.setattr(recorder.Recorder, "record_cell",
                        lambda self, cell, args, kwargs: calls.append(cell) or original(self, cell, args, kwargs))
    with_native = _graph_columns(native.record(instances))
    if phalanx.ir.columns.NATIVE:
        # per graph, each (cell, argument pattern) reaches the Python recorder once, then never
        assert len(calls) <= 6, len(calls)
    monkeypatch.undo()
    _without_native_ragged(monkeypatch)
    python = phalanx.Batcher(_lattice)
    python.record(instances)
    assert _graph_columns(python.record(instances)) == with_native
    monkeypatch.undo()
    assert_matches_eager(_lattice, instances, batcher=native)
    assert_matches_eager(_lattice, instances, params=[*_NODE.parameters(), *_CHILDSUM.parameters()], train=True,
                         batcher=native)
    assert_matches_eager(_lattice, [], batcher=native)
    assert_matches_eager(_lattice, instances[:1], batcher=native)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), count=st.integers(0, 4))
def test_native_stacks_match_eager_over_random_lattices(seed, count):
    instances = _lattices(seed, count)
    assert_matches_eager(_lattice, instances, params=[*_NODE.parameters(), *_CHILDSUM.parameters()], train=True)


def test_stack_values_takes_only_lazy_values_of_the_active_graph_with_one_aval():
    from phalanx.frontend.ragged import RaggedStack
    from phalanx.frontend.recorder import _SLOT
    from phalanx.ir.columns import NATIVE, stack_values

    leaf = phalanx.cell(nn.Embedding(20, H))
    wide = phalanx.cell(nn.Embedding(20, 2 * H))
    seen = {}

    def fn(inst):
        a, b, w = leaf(1), torch.tanh(leaf(2)), wide(3)
        seen["stack"] = stack_values([a, b])
        seen["tuple"] = stack_values((b,))
        seen["mixed avals"] = stack_values([a, w])
        seen["tensor"] = stack_values([a, torch.zeros(H)])
        seen["empty"] = stack_values([])
        seen["not a sequence"] = stack_values(a)
        seen["values"] = (a, b)
        return a

    phalanx.Batcher(fn).record([0])
    assert stack_values([seen["values"][0]]) is NotImplemented        # no active recorder
    assert _SLOT.rec is None
    for what in ("mixed avals", "tensor", "empty", "not a sequence"):
        assert seen[what] is NotImplemented, what
    if not NATIVE:                                                     # the twin leaves stacks to try_stack
        assert seen["stack"] is NotImplemented
        return
    rs, a, b = seen["stack"], *seen["values"]
    assert type(rs) is RaggedStack and rs.members == (a, b) and rs.element is a.aval and rs.graph is a.graph
    assert rs.vids == [a.vid, b.vid] and rs.top == max(a.depth, b.depth) + 1 and rs._stacked is None
    assert type(seen["tuple"]) is RaggedStack and seen["tuple"].members == (b,)


def test_a_call_the_native_path_declines_takes_the_python_path(monkeypatch):
    """Stacks of different lengths in one call, a stack of another element shape, a bool: each is
    recorded as the Python recorder records it (materialized or its own op type)."""
    def fn(inst):
        h0, k = inst
        hs = [torch.tanh(h0 * (j + 1)) for j in range(3)]
        out = [_CHILDSUM(1, torch.stack(hs[:2]), torch.stack(hs[:2]))]
        out.append(_CHILDSUM(2, torch.stack(hs[:k]), torch.stack(hs[:2]))[0])     # lengths k and 2
        out.append(_mix(True, torch.stack(hs[:k]), []))
        out.append(_mix(0.5, torch.stack(hs[:k]), []))
        out.append(_NODE(3, torch.stack(hs[:k])))
        return torch.stack([o if type(o) is not tuple else o[0] for o in out]).sum(0)

    instances = [(torch.randn(H), k) for k in (1, 2, 1, 2)]
    batcher = phalanx.Batcher(fn)
    batcher.record(instances)
    native = _graph_columns(batcher.record(instances))
    _without_native_ragged(monkeypatch)
    python = phalanx.Batcher(fn)
    python.record(instances)
    assert _graph_columns(python.record(instances)) == native
    monkeypatch.undo()
    assert_matches_eager(fn, instances, params=[*_CHILDSUM.parameters()], train=True, batcher=batcher)


def test_a_stack_of_the_wrong_shape_names_the_instance_and_the_shapes():
    def fn(inst):
        h, width = inst
        hs = [torch.tanh(h * (j + 1)) for j in range(2)]
        return _NODE(1, torch.stack(hs))

    batcher = phalanx.Batcher(fn)
    good = [(torch.randn(H), H), (torch.randn(H), H)]
    batcher.record(good)                                # the cell's native entry exists
    with pytest.raises(phalanx.errors.PhalanxError, match=r"instance 1: cell MeanNode.*\[k, float32\[7\]\]"):
        batcher.record([good[0], (torch.randn(H + 1), H + 1), good[1]])
    with pytest.raises(phalanx.errors.PhalanxError, match=r"instance 1: op torch\.stack .*float32\[6\], float32\[2\]"):
        phalanx.Batcher(lambda inst: _NODE(1, torch.stack([torch.tanh(inst[0]), torch.tanh(inst[0][:inst[1]])]))).record(
            [(torch.randn(H), H), (torch.randn(H), 2)])


def test_lazy_values_of_a_finished_run_are_refused_in_a_stack():
    kept = []

    def fn(inst):
        h = torch.tanh(inst)
        kept.append(h)
        return _NODE(1, torch.stack([h, *kept[:1]]))

    batcher = phalanx.Batcher(fn)
    batcher.record([torch.randn(H)])
    with pytest.raises(phalanx.errors.PhalanxError, match="instance 0: .*finished phalanx run"):
        batcher.record([torch.randn(H)])


def test_every_form_of_stack_reaches_the_same_ragged_stack_or_the_ordinary_one():
    from phalanx.frontend.ragged import RaggedStack
    from phalanx.frontend.value import LazyValue
    from phalanx.ir.columns import NATIVE

    if NATIVE:       # natively __torch_function__ is a TorchFunction (ir/_columns.c)
        assert type(LazyValue.__dict__["__torch_function__"].__func__).__name__ == "TorchFunction"
    leaf = phalanx.cell(nn.Embedding(20, H))
    seen = {}

    def fn(inst):
        xs = [leaf(1), torch.tanh(leaf(2))]
        forms = {"plain": torch.stack(xs), "tuple": torch.stack(tuple(xs)), "dim kwarg": torch.stack(xs, dim=0),
                 "dim": torch.stack(xs, 0), "negative dim": torch.stack(xs, -2), "dim 1": torch.stack(xs, 1),
                 "cat": torch.cat(xs)}
        seen.update({k: (type(v), tuple(v.shape), getattr(v, "members", None) == tuple(xs)) for k, v in forms.items()})
        seen["values"] = xs
        return forms["dim 1"].sum(-1)

    phalanx.Batcher(fn).record([0])
    for form in ("plain", "tuple", "dim kwarg", "dim", "negative dim"):
        assert seen[form] == (RaggedStack, (2, H), True), form
    assert seen["dim 1"] == (LazyValue, (H, 2), False)
    assert seen["cat"] == (LazyValue, (2 * H,), False)
    with pytest.raises(phalanx.errors.PhalanxError, match="outside the phalanx run"):
        torch.stack(seen["values"])
