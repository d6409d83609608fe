"""Executor edge cases: mixed dtypes, non-differentiable outputs, reuse across calls."""
import pytest
import torch
from torch import nn

import phalanx
from tests.oracle import assert_matches_eager, weighted_total


@phalanx.cell
class Classify(nn.Module):
    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.out = nn.Linear(dim, classes)

    def forward(self, x):
        logits = self.out(x)
        return logits, logits.argmax(-1)          # a float and an int64 output


def test_training_with_integer_outputs_alongside_float_ones():
    torch.manual_seed(0)
    model = Classify()
    xs = [torch.randn(4) for _ in range(5)]
    got = phalanx.Batcher(model)(xs)
    for x, (logits, label) in zip(xs, got, strict=True):
        exp_logits, exp_label = model(x)
        torch.testing.assert_close(logits, exp_logits)
        assert label.dtype == torch.int64 and label == exp_label and not label.requires_grad
    torch.stack([g[0] for g in got]).sum().backward()
    expected = torch.autograd.grad(torch.stack([model(x)[0] for x in xs]).sum(), model.out.weight)[0]
    torch.testing.assert_close(model.out.weight.grad, expected)


def test_float64_model():
    torch.manual_seed(1)
    model = nn.Linear(3, 3).double()

    def fn(x):
        return torch.tanh(model(x)) * model(x).sum()

    xs = [torch.randn(3, dtype=torch.float64) for _ in range(4)]
    assert_matches_eager(fn, xs, params=model.parameters(), train=True, rtol=1e-10, atol=1e-12)


def test_one_batcher_serves_calls_of_different_sizes_and_shapes():
    torch.manual_seed(2)
    lin = nn.Linear(5, 5)
    batcher = phalanx.Batcher(lambda x: lin(x).relu())
    for n, shape in ((3, (5,)), (1, (5,)), (7, (2, 5)), (0, (5,)), (4, (5,))):
        xs = [torch.randn(shape) for _ in range(n)]
        got = batcher(xs)
        assert len(got) == n
        for x, g in zip(xs, got, strict=True):
            torch.testing.assert_close(g, lin(x).relu())


def test_results_keep_their_structure_and_concrete_parts():
    lin = nn.Linear(2, 2)

    def fn(x):
        return {"h": lin(x), "pair": (x * 2, None), "constant": torch.ones(1)}

    xs = [torch.randn(2) for _ in range(3)]
    for x, g in zip(xs, phalanx.Batcher(fn)(xs), strict=True):
        assert set(g) == {"h", "pair", "constant"} and g["pair"][1] is None
        torch.testing.assert_close(g["h"], lin(x))
        torch.testing.assert_close(g["pair"][0], x * 2)
        assert torch.equal(g["constant"], torch.ones(1))


def test_cell_closing_over_a_derived_tensor_trains_across_several_batches():
    # W2 is not a leaf: its graph (W2 = W * 2) is shared by every batch's backward.
    torch.manual_seed(3)
    W = nn.Parameter(torch.randn(3, 3))
    W2 = W * 2

    @phalanx.cell
    def step(x):
        return torch.tanh(W2 @ x)

    def fn(n):
        x = torch.ones(3)
        for _ in range(n):
            x = step(x)
        return x

    got = phalanx.Batcher(fn)([1, 2, 3])
    torch.stack(got).sum().backward(retain_graph=True)
    expected = torch.autograd.grad(torch.stack([fn(n) for n in (1, 2, 3)]).sum(), W)[0]
    torch.testing.assert_close(W.grad, expected)


def test_training_with_float_number_operands():
    torch.manual_seed(4)
    lin = nn.Linear(2, 2)

    @phalanx.cell
    def scaled(x, factor):
        return lin(x) * factor              # factor arrives as a 0-d float tensor

    xs = [(torch.randn(2), float(i) + 0.5) for i in range(4)]
    assert_matches_eager(lambda inst: scaled(*inst), xs, params=lin.parameters(), train=True)


def test_profile_accounts_for_every_batch_forward_and_backward():
    from phalanx.models import TreeLSTM
    from phalanx.data import synthetic

    model = TreeLSTM(30, 8)
    batcher = phalanx.Batcher(model.loss, profile=True)
    examples = [(t, 1) for t in synthetic.random_trees(6, 0, 30)]
    torch.stack(batcher(examples)).sum().backward()
    per_op = batcher.stats.per_op
    assert sum(r["batches"] for r in per_op.values()) == batcher.stats.batches
    assert sum(r["nodes"] for r in per_op.values()) == batcher.stats.nodes
    assert all(r["forward_s"] > 0 and r["backward_s"] > 0 for r in per_op.values())
    assert phalanx.Batcher(model).stats.per_op == {}


def test_one_shot_batch_matches_eager_and_reuses_its_batcher():
    from phalanx import api

    lin = nn.Linear(3, 2)

    def fn(x):
        return torch.sigmoid(lin(x))

    xs = [torch.randn(3) for _ in range(4)]
    got = phalanx.batch(fn, xs)
    for x, g in zip(xs, got, strict=True):
        torch.testing.assert_close(g, fn(x))
    phalanx.batch(fn, xs[:2], policy="agenda")
    assert len(api._CACHE[fn]) == 2               # one table per distinct option set
    table = api._CACHE[fn][(None, (("policy", "agenda"),))][0]
    phalanx.batch(fn, xs[:3], policy="agenda")
    assert len(api._CACHE[fn]) == 2               # ...reused, not rebuilt
    assert api._CACHE[fn][(None, (("policy", "agenda"),))][0] is table


def test_one_shot_batch_does_not_keep_the_model_alive():
    import gc
    import weakref

    from phalanx.models import TreeLSTM
    from phalanx.data import synthetic

    model = TreeLSTM(30, 8, embed_dim=4)
    phalanx.batch(model, synthetic.random_trees(3, 0, 30))
    phalanx.batch(model.encode, synthetic.random_trees(3, 0, 30))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_numbers_of_two_dtypes_across_batches_of_every_size():
    # build_steps picks every number of a flush at once and cuts one tensor per dtype into the
    # batches' lists: int and float numbers, in several batches of sizes 1 and up, in order.
    torch.manual_seed(5)
    emb, lin = nn.Embedding(10, 3), nn.Linear(3, 3)

    @phalanx.cell
    def step(h, word, scale):
        return torch.tanh(lin(h) + emb(word)) * scale

    def fn(inst):
        words, h = inst
        for i, w in enumerate(words):
            h = step(h, w, 0.5 + i)
        return h

    xs = [([w % 10 for w in range(k, 2 * k + 1)], torch.randn(3)) for k in range(5)]
    assert_matches_eager(fn, xs, params=[*emb.parameters(), *lin.parameters()], train=True)


def _tree_model(dim=4):
    from phalanx.models import TreeLSTM

    return TreeLSTM(30, dim, embed_dim=3)


def test_adjacent_gathers_from_one_arena_are_fused_and_match_eager():
    # NOTE: [Fused gathers]: a TreeLSTM node reads hl, cl, hr, cr from one [hidden] arena; with
    # the depth layout they are gathered, and the four reads become one run. One Batcher, reused
    # across SGD steps, inference and training, matches the eager loop.
    from phalanx.data import synthetic
    from phalanx.memory.layout import plan_layout
    from phalanx.runtime.executor import GATHER, build_steps
    from phalanx.schedule import schedule_graph

    torch.manual_seed(6)
    model = _tree_model()
    batcher = phalanx.Batcher(model, verify=True)
    trees = synthetic.random_trees(6, 1, 30)
    graph = batcher.record(trees)
    schedule = schedule_graph(graph, "depth")
    steps, _ = build_steps(graph, schedule, plan_layout(graph, schedule))
    fused = [(step, run) for step in steps for run in step.fused]
    assert fused, "no fused run on a TreeLSTM mini-batch"
    for step, (arena, index, positions) in fused:
        assert len(positions) > 1 and len(index) == len(positions) * step.size
        assert all(step.operands[p][0] == GATHER and step.operands[p][1] == arena for p in positions)
        # The fused index is the operands' own indices, back to back.
        assert torch.equal(index, torch.cat([step.operands[p][2] for p in positions]))
    # NOTE: [Whole reads]: an internal node's four operands are one run, read with one index.
    whole = [step for step in steps if step.whole is not None]
    assert whole, "no whole read on a TreeLSTM mini-batch"
    for step in whole:
        (arena, index, positions), = step.fused
        assert step.whole[:2] == (arena, index) and step.whole[2] == [step.size] * len(step.operands)
    # NOTE: [Joint writes]: h and c of a batch go to consecutive rows of one arena.
    joint = [step for step in steps if step.joint is not None]
    assert joint, "no joint write on a TreeLSTM mini-batch"
    for step in joint:
        arena, lo, hi = step.joint
        middle = lo + step.size
        assert [(a, rows) for _, a, rows in step.outputs] == [(arena, (lo, middle)), (arena, (middle, hi))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(3):
        batch = synthetic.random_trees(5, seed + 2, 30)
        assert_matches_eager(model, batch, batcher=batcher)
        assert_matches_eager(model, batch, params=list(model.parameters()), train=True, batcher=batcher)
        optimizer.step()


def test_a_cell_returning_a_fused_operand_view_matches_eager():
    # Fused gathers hand a cell views of one tensor; a cell that returns an operand as it is hands
    # that view back as its output, which is copied into its arena rows (never adopted as a whole
    # arena: it is not the view's own memory).
    @phalanx.cell
    def first_of(a, b):
        return a, a + b

    @phalanx.cell
    def leaf(x):
        return x * 1.0

    def fn(xs):
        p, q, r = (leaf(x) for x in xs)
        # p and q read in three orders at one depth: no row order makes those operand lists slices
        # (NOTE: [Reader order] in memory/layout.py), so both are gathered, fused
        extra = first_of(q, p), first_of(p, p)
        kept, total = first_of(*first_of(p, q))
        return kept, first_of(total, r), extra

    torch.manual_seed(7)
    instances = [[torch.randn(3, requires_grad=True) for _ in range(3)] for _ in range(4)]
    batcher = assert_matches_eager(fn, instances)
    assert batcher.stats.gathers >= 2
    assert_matches_eager(fn, instances, params=[t for inst in instances for t in inst], train=True)


def test_parameter_gradients_summed_over_batches_match_eager_even_when_their_sum_overflows():
    # Parameter gradients accumulate in place over the flush's batches; the finite check reads one
    # sum per gradient: here every entry is finite but float32 sums overflow, so the backward takes
    # the slow path (NOTE: [Rows the loss does not use]) and must still give eager's gradients.
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()

    def fn(inst):
        depth, x = inst
        for _ in range(depth):
            x = lin(x)
        return x

    instances = [(d, torch.full((2,), 1e37)) for d in (1, 2, 3)]
    batcher = assert_matches_eager(fn, instances, params=list(lin.parameters()), train=True, rtol=1e-3, atol=0.0)
    assert batcher.stats.batches >= 3
    assert not torch.isfinite(lin.weight.grad.sum())      # the overflow really happened


def test_whole_reads_with_an_operand_the_cell_ignores_match_eager():
    # NOTE: [Whole reads]: all three operands of a mix batch are one gathered run; the cell ignores
    # its middle one, so that operand gets no gradient and the backward adds the others one by one.
    @phalanx.cell
    def leaf(x):
        return x * 2.0

    @phalanx.cell
    def combine(a, ignored, b):
        return torch.tanh(a) * b

    @phalanx.cell
    def mix(a, ignored, b):
        return torch.tanh(a) - b

    def fn(xs):
        p, q, r, s = (leaf(x) for x in xs)
        first = combine(p, q, r)     # the leaves' first reader: its operand lists are slices (NOTE: [Reader order])
        # read again by another op type, twice per instance in other arrangements: gathered, one run
        return mix(q, r, p), mix(r, p, q), combine(first, s, p)

    torch.manual_seed(8)
    instances = [[torch.randn(3, requires_grad=True) for _ in range(4)] for _ in range(5)]
    batcher = phalanx.Batcher(fn, verify=True)
    graph = batcher.record(instances)
    from phalanx.memory.layout import plan_layout
    from phalanx.runtime.executor import build_steps
    from phalanx.schedule import schedule_graph

    schedule = schedule_graph(graph, "depth")
    steps, _ = build_steps(graph, schedule, plan_layout(graph, schedule))
    assert any(step.whole is not None for step in steps)
    assert_matches_eager(fn, instances, batcher=batcher)
    assert_matches_eager(fn, instances, params=[t for inst in instances for t in inst], train=True, batcher=batcher)


# *** NOTE: [Arena pool]: inference flushes of one Batcher reuse the last flush's arena buffers ***

def _tagger_and_sentences():
    from phalanx.models.tagger import BiLSTMTagger

    torch.manual_seed(0)
    model = BiLSTMTagger(20, 6, embed_dim=4, num_tags=5).eval()
    gen = torch.Generator().manual_seed(1)

    def sentences(lengths):
        return [torch.randint(0, 20, (n,), generator=gen) for n in lengths]
    return model, sentences


def test_pooled_arenas_are_reused_and_earlier_results_survive_later_calls():
    model, sentences = _tagger_and_sentences()
    batcher = phalanx.Batcher(model.forward, cells=True)
    with torch.no_grad():
        first_in = sentences([4, 6, 3, 5])
        first = batcher(first_in)
        kept = [[t.clone() for t in r] for r in first]
        pointers = {k: b.data_ptr() for k, b in batcher._arena_pool.buffers.items()}
        assert pointers
        second_in = sentences([2, 5, 4, 1])        # fewer rows: every arena fits the kept buffers
        second = batcher(second_in)
        now = {k: b.data_ptr() for k, b in batcher._arena_pool.buffers.items()}
        # kinds used by both flushes keep their buffers (sentence-length kinds of the inputs come and go)
        assert len(now.keys() & pointers.keys()) >= 4
        assert {k: now[k] for k in now.keys() & pointers.keys()} == {k: pointers[k] for k in now.keys() & pointers.keys()}
        third = batcher(sentences([9, 7, 8, 9, 6]))     # more rows: buffers grow
    for r, k in zip(first, kept, strict=True):       # results are copies, never arena rows
        for t, c in zip(r, k, strict=True):
            assert torch.equal(t, c)
    for got, words in zip(second, second_in, strict=True):
        for g, e in zip(got, model.forward(words), strict=True):
            torch.testing.assert_close(g, e)
    assert len(third) == 5
    assert_matches_eager(model.forward, sentences([3, 1, 7]), batcher=batcher)


def test_arena_pool_takes_leading_rows_and_grows_with_slack():
    from types import SimpleNamespace

    from phalanx.ir.aval import AVal
    from phalanx.runtime.executor import ArenaPool

    avals = [AVal((3,), torch.float32), AVal((3,), torch.float32), AVal((), torch.int64)]
    graph = SimpleNamespace(avals=avals, device=torch.device("cpu"))
    pool = ArenaPool()
    a = pool.allocate(graph, SimpleNamespace(arena_rows=[4, 2, 5]))
    assert [tuple(t.shape) for t in a] == [(4, 3), (2, 3), (5,)] and [t.dtype for t in a[1:]] == [torch.float32,
                                                                                                   torch.int64]
    assert a[0].data_ptr() != a[1].data_ptr()        # two arenas of one kind get two buffers
    b = pool.allocate(graph, SimpleNamespace(arena_rows=[5, 1, 2]))
    assert b[0].data_ptr() == a[0].data_ptr() and b[2].data_ptr() == a[2].data_ptr()   # within the slack
    c = pool.allocate(graph, SimpleNamespace(arena_rows=[40, 2, 5]))
    assert c[0].shape == (40, 3) and c[1].data_ptr() == a[1].data_ptr()
    pool.release()
    assert not pool.buffers


def test_arena_pool_keeps_only_what_the_last_flush_used():
    from types import SimpleNamespace

    from phalanx.ir.aval import AVal
    from phalanx.runtime.executor import ArenaPool

    cpu = torch.device("cpu")
    pool = ArenaPool()
    wide = [AVal((3,), torch.float32), AVal((7,), torch.float32), AVal((7,), torch.float32)]
    pool.allocate(SimpleNamespace(avals=wide, device=cpu), SimpleNamespace(arena_rows=[4, 2, 5]))
    assert len(pool.buffers) == 3
    narrow = [AVal((3,), torch.float32), AVal((5,), torch.float32)]    # value shapes that keep changing
    kept = pool.buffers[((3,), torch.float32, cpu, False, 0)]
    a = pool.allocate(SimpleNamespace(avals=narrow, device=cpu), SimpleNamespace(arena_rows=[2, 2]))
    assert set(pool.buffers) == {((3,), torch.float32, cpu, False, 0), ((5,), torch.float32, cpu, False, 0)}
    assert a[0].data_ptr() == kept.data_ptr()


def test_release_memory_drops_pooled_arenas_and_reuse_caches():
    model, sentences = _tagger_and_sentences()
    batcher = phalanx.Batcher(model.forward, cells=True, reuse=True)
    xs = sentences([3, 5, 2])
    with torch.no_grad():
        batcher(xs), batcher(xs)
    assert batcher.stats.plan_reused and batcher._arena_pool.buffers and len(batcher.reuse)
    batcher.release_memory()
    assert not batcher._arena_pool.buffers and not len(batcher.reuse) and not batcher.reuse.calls
    assert_matches_eager(model.forward, xs, batcher=batcher)
    assert batcher.stats.reused == 0 and not batcher.stats.plan_reused


def test_pooled_arenas_of_inference_mode_never_serve_a_no_grad_call():
    # tensors made under inference_mode cannot be written outside it (and the other way round is
    # kept apart too): alternating modes on one Batcher must keep working and matching eager
    model, sentences = _tagger_and_sentences()
    batcher = phalanx.Batcher(model.forward, cells=True)
    for mode in ("inference_mode", "no_grad", "inference_mode", "no_grad"):
        assert_matches_eager(model.forward, sentences([3, 5, 2]), batcher=batcher, grad_mode=mode)


# *** NOTE: [Direct steps]; an inference flush runs under inference_mode, its results stay normal ***

@pytest.mark.parametrize("inference_mode", [False, True])
def test_direct_steps_run_every_batch_after_an_op_types_first(inference_mode, monkeypatch):
    from phalanx.runtime import executor

    monkeypatch.setattr(executor, "INFERENCE_MODE", inference_mode)
    model, sentences = _tagger_and_sentences()
    batcher = phalanx.Batcher(model.forward, cells=True)
    general = []
    run_step = executor._run_step

    def counted(step, *args, **kwargs):
        general.append(step.sig.sid)
        return run_step(step, *args, **kwargs)
    monkeypatch.setattr(executor, "_run_step", counted)
    xs = sentences([4, 7, 2, 1, 6])
    assert_matches_eager(model.forward, xs, batcher=batcher)
    # each op type's first batch binds its kernel; every later batch of a cell whose outputs are
    # all direct skips the general path
    assert len(general) == len(set(general)) < batcher.stats.batches
    general.clear()
    assert_matches_eager(model.forward, sentences([3]), batcher=batcher)
    assert_matches_eager(model.forward, [], batcher=batcher)


@pytest.mark.parametrize("reuse", [False, True])
def test_inference_results_are_normal_tensors_that_later_autograd_and_training_accept(reuse):
    from torch.utils._pytree import tree_leaves

    model, sentences = _tagger_and_sentences()
    batcher = phalanx.Batcher(model.forward, cells=True, reuse=reuse)
    xs = sentences([3, 5, 2, 1])
    with torch.no_grad():
        results = batcher(xs)
    flat = [t for t in tree_leaves(results) if isinstance(t, torch.Tensor)]
    assert flat and not any(t.is_inference() for t in flat)
    weight = torch.ones(flat[0].shape[-1], requires_grad=True)
    sum((t * weight).sum() for t in flat).backward()        # saved for backward: no inference tensor
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
    flat[0].add_(1)                                          # and writable outside inference_mode
    # the same mini-batch trains next (its plan reused where reuse is on), then evaluates again
    assert_matches_eager(model.forward, xs, params=list(model.parameters()), train=True, batcher=batcher)
    assert_matches_eager(model.forward, xs, batcher=batcher)
    for mode in ("inference_mode", "no_grad"):
        assert_matches_eager(model.forward, xs, batcher=batcher, grad_mode=mode)


class _StepCell(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.score = nn.Linear(4, 1)

    def forward(self, h):
        h = torch.tanh(self.lin(h)) + 0.1
        return h, self.score(h)


class _Roller(nn.Module):
    """Steps a state while a cell's score is positive: fiber rounds whose every op type is a cell."""

    def __init__(self):
        super().__init__()
        self.embed = phalanx.cell(nn.Embedding(10, 4))
        self.step = phalanx.cell(_StepCell())

    def forward(self, word):
        h, score = self.step(self.embed(torch.tensor(word)))
        n = 0
        while score.item() > 0 and n < 5:
            h, score = self.step(h)
            n += 1
        return h * (n + 1)


def test_fiber_rounds_under_inference_mode_hand_back_normal_tensors(monkeypatch):
    from phalanx.runtime import executor

    modes = []
    only_traced = executor._only_traced_programs
    monkeypatch.setattr(executor, "_only_traced_programs", lambda steps: modes.append(only_traced(steps)) or modes[-1])
    torch.manual_seed(0)
    model = _Roller()
    words = list(range(10))
    batcher = phalanx.Batcher(model, cells=True)
    assert_matches_eager(model, words, batcher=batcher)
    with torch.no_grad():
        results = batcher(words)
    assert batcher.stats.fibers and True in modes       # some round ran under inference_mode
    assert not any(t.is_inference() for t in results)
    weight = torch.ones(4, requires_grad=True)
    sum((t * weight).sum() for t in results).backward()
    assert weight.grad is not None
    results[0].add_(1)
    assert_matches_eager(model, words, params=list(model.parameters()), train=True, batcher=batcher)


def test_user_code_run_by_a_flush_never_sees_inference_mode():
    # a native kernel runs the user's own function, which may keep what it makes: those must be
    # the normal tensors no_grad gives (NOTE: [Inference-mode flush]: traced programs only)
    kept = []

    @phalanx.cell
    def squash(x):
        y = torch.tanh(x) * 2
        kept.append(y)
        return y

    xs = [torch.randn(3) for _ in range(4)]
    batcher = assert_matches_eager(squash, xs, batcher=phalanx.Batcher(squash, cells=False))    # probed: runs squash
    kept.clear()
    with torch.no_grad():
        batcher(xs)
    assert kept and not any(t.is_inference() for t in kept)


# *** NOTE: [Training buffers]: a training flush's arenas are checked out until its backward ends ***

@phalanx.cell
class _Step(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.lin = nn.Linear(2 * dim, dim)

    def forward(self, h, x):
        # h * ...: the batch's backward reads the operand h itself (mul saves it), an arena view
        return h * torch.tanh(self.lin(torch.cat([h, x], dim=-1)))


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.step = _Step()

    def forward(self, inst):
        h, xs = inst
        for x in xs:
            h = self.step(h, x)
        return h


def _chains(seed, n=4):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, generator=gen), [torch.randn(3, generator=gen) for _ in range(1 + (k + seed) % 4)])
            for k in range(n)]


def _eager_grads(model, instances) -> list:
    model.zero_grad(set_to_none=True)
    weighted_total([model(x) for x in instances]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("cells", [False, True])
@pytest.mark.parametrize("order", ["first_backward_first", "second_backward_first"])
def test_two_training_forwards_then_both_backwards_match_eager(cells, order):
    # Each flush holds its own arenas until its backward: the second forward must not take (and
    # overwrite) the first's, whose backward still reads them.
    torch.manual_seed(9)
    model = _Chain()
    batcher = phalanx.Batcher(model, cells=cells, verify=True)
    first_in, second_in = _chains(1, 5), _chains(2, 3)
    weighted_total(batcher(first_in)).backward()            # buffers are now idle in the Batcher
    expected = [_eager_grads(model, first_in), _eager_grads(model, second_in)]
    totals = [weighted_total(batcher(first_in)), weighted_total(batcher(second_in))]
    for k in ((0, 1) if order == "first_backward_first" else (1, 0)):
        model.zero_grad(set_to_none=True)
        totals[k].backward()
        for p, e in zip(model.parameters(), expected[k], strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cells", [False, True])
def test_training_buffers_come_back_after_backward_only(cells):
    torch.manual_seed(10)
    model = _Chain()
    batcher = phalanx.Batcher(model, cells=cells, verify=True)
    buffers = batcher._training_buffers
    weighted_total(batcher(_chains(3))).backward()
    idle = buffers.idle()
    assert idle                                              # arenas and gradient arenas came back
    kept = batcher(_chains(4))                               # a forward whose backward never runs
    assert len(buffers.idle()) < len(idle)                   # it holds the buffers it took
    held = {b.data_ptr() for b in idle} - {b.data_ptr() for b in buffers.idle()}
    del kept
    instances = _chains(5)
    expected = _eager_grads(model, instances)
    out = batcher(instances)
    assert len(buffers.idle()) <= buffers.KEEP * buffers.KINDS
    weighted_total(out).backward()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)
    assert held.isdisjoint(b.data_ptr() for b in buffers.idle())   # never given back: died with the flush
    batcher.release_memory()
    assert buffers.idle() == []


def test_a_gradient_that_is_a_gradient_arena_view_survives_the_next_backward():
    # The sum's backward hands the output gradient (rows of a pooled gradient arena) straight to
    # both per-instance operands; the gradient the user keeps must not be that buffer.
    @phalanx.cell
    def add(a, b):
        return a + b

    def fn(inst):
        return add(*inst)

    batcher = phalanx.Batcher(fn, verify=True)
    first = [(torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True))]
    got = torch.autograd.grad(weighted_total(batcher(first)), first[0])     # as the flush returns them
    kept = [g.clone() for g in got]
    second = [(torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True))]     # the same rows
    (weighted_total(batcher(second)) * 3).backward()
    for g, k in zip(got, kept, strict=True):
        torch.testing.assert_close(g, k)
    assert_matches_eager(fn, second, params=[t for inst in second for t in inst], train=True, batcher=batcher)
