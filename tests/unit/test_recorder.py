"""Recording: signatures, depth, the struct-of-arrays graph, cell fast path, op-level recording."""
import numpy as np
import torch
from torch import nn

import phalanx
from phalanx.ir.signature import ArgKind


@phalanx.cell
class Add(nn.Module):
    def forward(self, a, b):
        return a + b


@phalanx.cell
def embed(word):
    return torch.ones(3) * word


def test_depth_is_inline_and_graph_columns_are_filled():
    add = Add()

    def fn(n):
        x = embed(n)          # depth 0: no lazy operands
        y = add(x, x)         # depth 1
        z = add(y, x)         # depth 2
        return torch.tanh(z)  # op-level, depth 3

    batcher = phalanx.Batcher(fn)
    graph = batcher.record([1, 2])
    assert graph.num_nodes == 8
    assert graph.node_depth.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert graph.node_inst.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    names = [graph.sigs[s].name for s in graph.node_sig[:4]]
    assert names == ["cell embed", "cell Add", "cell Add", "op torch.tanh"]
    # The number operand is an immediate; lazy operands are value ids.
    assert graph.arg_code[graph.arg_start[0]] < 0 and graph.imms[-1 - graph.arg_code[0]] == 1
    producer, consumer = graph.edges
    assert (producer < consumer).all()      # recording order is topological


def test_signatures_are_interned_and_cell_fast_path_is_registered():
    add = Add()
    batcher = phalanx.Batcher(lambda n: add(embed(n), embed(n + 1)))
    batcher.record([1, 2, 3])
    sigs = {s.name: s for s in batcher.table.sigs}
    assert set(sigs) == {"cell embed", "cell Add"}
    assert sigs["cell embed"].in_kinds == (ArgKind.NUMBER,)
    assert sigs["cell Add"].in_kinds == (ArgKind.LAZY, ArgKind.LAZY)
    keys_before = len(batcher.table.by_key)
    batcher.record([4, 5])
    assert len(batcher.table.by_key) == keys_before   # no new signatures on the second call


def test_different_parameters_are_different_op_types():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    batcher = phalanx.Batcher(lambda x: a(x) + b(x))
    graph = batcher.record([torch.ones(3), torch.zeros(3)])
    linear_sids = {int(s) for s in graph.node_sig if "linear" in graph.sigs[s].name}
    assert len(linear_sids) == 2
    captured = [{id(t) for t in graph.sigs[s].captured} for s in sorted(linear_sids)]
    assert {id(a.weight), id(a.bias)} in captured and {id(b.weight), id(b.bias)} in captured


def test_lazy_value_metadata_is_static():
    seen = {}

    def fn(x):
        y = x.unsqueeze(0)
        seen.update(shape=y.shape, dtype=y.dtype, ndim=y.ndim, size1=y.size(1), numel=y.numel(), len=len(y))
        return y

    phalanx.Batcher(fn)([torch.ones(5)])
    assert seen == dict(shape=torch.Size([1, 5]), dtype=torch.float32, ndim=2, size1=5, numel=5, len=1)


def test_cell_kinds_class_instance_function():
    @phalanx.cell(name="Double")
    def double(x):
        return 2 * x

    lin = phalanx.cell(nn.Linear(2, 2))
    assert phalanx.is_cell(lin) and phalanx.is_cell(double) and phalanx.is_cell(Add())
    assert dict(lin.named_parameters()).keys() == {"inner.weight", "inner.bias"}
    x = torch.randn(2)
    # Eager outside a run, numbers arrive as 0-d tensors.
    assert torch.equal(embed(2), torch.full((3,), 2.0))
    out = phalanx.Batcher(lambda v: double(lin(v)))([x, x + 1])
    torch.testing.assert_close(out[1], 2 * lin(x + 1))


def test_cells_with_structured_outputs_and_kwargs():
    @phalanx.cell
    def split(x, scale=1.0):
        return {"a": x[:2] * scale, "b": (x[2:], x.sum())}

    def fn(x):
        out = split(x, scale=3.0)
        return out["a"], out["b"][1]

    xs = [torch.randn(4) for _ in range(3)]
    got = phalanx.Batcher(fn)(xs)
    for x, (a, s) in zip(xs, got, strict=True):
        torch.testing.assert_close(a, x[:2] * 3)
        torch.testing.assert_close(s, x.sum())


def test_graph_printer_and_consumers():
    add = Add()
    def fn(n):
        e = embed(n)
        return add(e, e)

    graph = phalanx.Batcher(fn).record([1])
    start, cons = graph.consumers
    assert cons[start[0]:start[1]].tolist() == [1, 1]   # both operands of node 1 come from node 0
    assert graph.num_producers.tolist() == [0, 2]
    assert np.array_equal(graph.operand_codes(np.array([1])), [[0, 0]])


def test_two_instances_of_one_cell_class_have_distinct_stable_descriptions():
    from phalanx.models import BiLSTMTagger

    model = BiLSTMTagger(20, 4)
    batcher = phalanx.Batcher(model)
    batcher.record([[1, 2, 3]])
    described = {s.describe() for s in batcher.table.sigs if s.name == "cell LSTMStep"}
    assert {d.split("(")[0] for d in described} == {"cell LSTMStep@fwd", "cell LSTMStep@bwd"}
    # A copy of the model (another process, a fresh Batcher) describes its op types identically.
    import copy
    again = phalanx.Batcher(copy.deepcopy(model))
    again.record([[4, 5]])
    assert {s.describe() for s in again.table.sigs} == {s.describe() for s in batcher.table.sigs}


def test_fast_path_covers_lazy_number_and_tensor_arguments(monkeypatch):
    from phalanx.frontend import recorder

    @phalanx.cell
    def step(x, h, scale):
        return torch.tanh(x + h) * scale

    def fn(n):
        h = torch.zeros(3)               # a concrete per-instance tensor
        for _ in range(n):
            h = step(embed(n), h, 2.0)
        return h

    batcher = phalanx.Batcher(fn)
    batcher.record([1, 2, 3])            # first call: new signatures via the general path

    def general_path(*args, **kwargs):
        raise AssertionError("the cell fast path fell back to the general path")

    monkeypatch.setattr(recorder.Recorder, "_record_general", general_path)
    graph = batcher.record([2, 3, 4])
    assert graph.num_nodes == 2 * (2 + 3 + 4)


def test_the_model_of_a_lambda_is_found_in_its_closure_or_globals():
    from phalanx.frontend.recording import model_of

    model = nn.Linear(2, 2)
    assert model_of(model) is model
    assert model_of(model.forward) is model
    assert model_of(lambda x: model(x)) is model
    assert model_of(lambda x: x * 2) is None


def test_static_numbers_of_other_types_are_other_op_types():
    # 1, 1.0 and True are equal as dict keys, but x + 1.0 on an integer tensor is a float.
    def fn(x):
        return x + 1, x + 1.0, x + True, x * 0.0, x * -0.0, torch.add(x, 2, alpha=3), x.sum(dim=0, keepdim=True)

    batcher = phalanx.Batcher(fn)
    for x in ([torch.arange(3)], [torch.arange(3.0) + 1]):
        got = batcher(x)[0]
        expected = fn(x[0])
        for g, e in zip(got, expected, strict=True):
            assert g.dtype == e.dtype
            torch.testing.assert_close(g, e)
            assert torch.equal(torch.signbit(g), torch.signbit(e))


def test_op_fast_key_skips_the_general_path_after_the_first_call(monkeypatch):
    from phalanx.frontend import recorder

    def fn(x):
        h = torch.tanh(x) + x * 0.5
        h = torch.cat([h, x], dim=-1)[:4]
        h = torch.stack([h, x]).sum(0)
        return torch.softmax(h, dim=-1), h[0], h.sum(-1, keepdim=True)

    xs = [torch.randn(4) for _ in range(3)]
    batcher = phalanx.Batcher(fn)
    batcher(xs)

    def general_path(*args, **kwargs):
        raise AssertionError("an op with a fast key went through the general path")

    monkeypatch.setattr(recorder.Recorder, "_record_general", general_path)
    got = batcher(xs)
    for g, e in zip(got, [fn(x) for x in xs], strict=True):
        for a, b in zip(g, e, strict=True):
            torch.testing.assert_close(a, b)


def test_lazify_replaces_tensors_and_keeps_everything_else_as_it_is():
    from phalanx.frontend.recorder import Recorder
    from phalanx.frontend.value import LazyValue
    from phalanx.ir.signature import SignatureTable

    rec = Recorder(SignatureTable())
    words = [3, 1, 4]
    plain = (words, ["a", None, 2.5], {"k": (1, True)}, 7)
    assert rec.lazify(plain) is plain and rec.lazify(words) is words and rec.lazify(5) == 5

    class Tokens(list):             # a subclass is looked into like any other object: kept as it is
        pass

    t1, t2 = torch.ones(2), torch.zeros(3)
    tokens = Tokens([1])
    nested = (words, [t1, (1, t2)], {"x": t1, "n": 2}, tokens, [])
    out = rec.lazify(nested)
    assert type(out) is tuple and out[0] is words and out[3] is tokens and out[4] is nested[4]
    assert type(out[1][0]) is LazyValue and out[1][0].shape == (2,) and out[1][1][0] == 1
    assert type(out[1][1][1]) is LazyValue and out[1][1][1].shape == (3,)
    assert type(out[2]) is dict and type(out[2]["x"]) is LazyValue and out[2]["n"] == 2
    assert nested[1][0] is t1       # the user's containers are not modified
    assert type(rec.lazify(t2)) is LazyValue
    assert len(rec.graph.node_sig) == 4          # one input node per tensor found


def test_the_recorder_slot_belongs_to_one_thread():
    import threading

    from phalanx.frontend import recorder as R
    from phalanx.frontend.recorder import Recorder
    from phalanx.ir.signature import SignatureTable

    rec = Recorder(SignatureTable())
    seen = []
    R._SLOT.rec, R._SLOT.hub = rec, "hub"
    try:
        out = embed(2)              # recorded through the slot's cached graph
        assert type(out).__name__ == "LazyValue" and out.graph is rec.graph
        worker = threading.Thread(target=lambda: seen.append((R._SLOT.rec, R._SLOT.hub, type(embed(2)))))
        worker.start()
        worker.join()
        assert seen == [(None, None, torch.Tensor)]      # eager on the other thread
        assert R._SLOT.rec is rec and R._SLOT.hub == "hub"
    finally:
        R._SLOT.rec, R._SLOT.hub = None, None
    assert type(embed(2)) is torch.Tensor
