"""The public entry points: ``Batcher`` and ``batch``.

A call records every instance (running the user's per-instance function with lazy values), then
flushes: schedule -> layout -> plan -> execute, and hands back one result per instance as ordinary
torch tensors (autograd-connected when gradients are needed).
"""
from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from itertools import chain
from operator import attrgetter
from typing import Any, Callable, Iterable

import numpy as np
import torch

from . import _config
from .cells.options import CellOptions
from .errors import PhalanxError
from .frontend.recorder import rediscover_captured
from .frontend.recording import model_device, model_of, record_instances
from .frontend.reuse import DEFAULT_MAX_CALLS, RecordingCache
from .frontend.value import LazyValue
from .ir.signature import SignatureTable
from .memory.layout import plan_layout, verify_layout
from .memory.planner import plan_memory, verify_plan
from .runtime.fibers import Hub, collector_paused
from .runtime.executor import ArenaPool, FlushFunction, TrainingBuffers, TrainingRun, build_steps, run_inference
from .runtime.params import FlushParams
from .schedule import format_schedule, make_policy, verify_schedule
from .schedule.base import Policy
from .stats import ReadCounts, Stats


class Batcher:
    """Runs a per-instance function over a mini-batch as batched kernels.

    **Arguments:**
    - ``fn``: any callable taking ONE instance (usually an ``nn.Module`` whose forward handles one
      tree / sentence). It may return a tensor or a tuple / list / dict of tensors (None allowed).
    - ``policy``: ``"depth"`` (default), ``"agenda"``, ``"fsm"`` (learned; trains itself on the first
      call's graph unless given a trained ``FSMPolicy``), ``"optimal"`` (small graphs), or a ``Policy``.
    - ``verify``: run the graph / schedule / layout verifiers on every flush (default: PHALANX_VERIFY).
    - ``plan``: the memory planner's strategy (memory/planner.py), so operand lists are read in
      place where possible: ``"auto"``, ``"reader"``, ``"instance"``, ``"producer"``, ``"pqtree"``; ``False`` (default) lays
      values out in schedule order, each batch in reader order (NOTE: [Reader order], memory/layout.py). Planning is off by default because on CPU a gather is a cheap
      ``index_select`` and planning cost more than it saved in our benchmarks (README, Results).
    - ``plan_objective``: ``"bytes"`` (default: most bytes read in place) or ``"lists"`` (most
      operand lists read in place, i.e. fewest gather launches).
    - ``profile``: record per op type the batches, nodes and forward / backward seconds in
      ``stats.per_op`` (times each batch; off by default).
    - ``device``: where arenas, gathers and batched kernels run; default: the device of the model's
      first parameter (CPU for a model without parameters or a plain function). Instances' tensors
      must be there too (a clear error names both devices otherwise).
    - ``max_signatures``: bound on cached op types; past it the least recently used half is dropped
      (NOTE: [What an op type may cache] in ir/signature.py).
    - ``cells``: the ahead-of-time cell analysis (phalanx/cells): ``True`` traces every cell once
      per op type into a batched aten program (hoisting, merged matmuls, the input split of NOTE:
      [Input split], row-sparse embedding gradients) and refuses a data-dependent cell while
      recording; a ``CellOptions`` turns single optimizations off. The default (``True``) since
      session 8: in same-process runs over the zoo the traced programs are 1.07-1.59x faster than
      the probed kernels on six models and within 5% on the other eight (README, "Cells by
      default"), and they decide batching by analysis, not by a sample. ``False`` runs the cell's
      own code on stacked rows, checked once per op type by the taint-tracked probe
      (runtime/kernels.py): no tracing cost at the first call of a cell (~0.1-0.5 s per op type). A cell that cannot be traced (a closure
      tensor, an op make_fx cannot follow) is probed either way.
    - ``lazy_inputs``: tensors inside an instance (the instance itself, or inside tuples / lists /
      dicts) reach ``fn`` as lazy values, so code with no cell batches too (default True).
    - ``reuse``: ``True`` (or the number of instances to keep, default 65536) replays the recording
      of an instance object seen in an earlier call instead of running ``fn`` on it again (epochs
      over a fixed dataset; NOTE: [Recording reuse], frontend/reuse.py). Opt-in, because phalanx
      cannot check the contract: instances are not mutated between calls, and ``fn`` depends only
      on the instance and the model (no Python randomness or side effects). Recordings are dropped
      when the model's structure changes and are not used under other training flags; instances
      of a call with fibers are never reused. ``stats.reused`` counts the replayed instances.
      A call on exactly the instance objects of an earlier call (the same mini-batch again: an
      evaluation loop) also reuses that call's schedule and plan and only executes (NOTE: [Plan
      reuse]; ``stats.plan_reused``); ``reuse_plans=False`` keeps recordings only.

    ``batcher(instances)`` returns a list with one result per instance, in order. ``batcher.stats``
    describes the last call (see ``phalanx.Stats``). The recorder belongs to the calling thread
    (other threads' eager calls stay eager); runs cannot be nested, and one Batcher refuses a second
    concurrent call (use one Batcher per thread). One Batcher can serve a whole training run
    (docs/design.md, "One Batcher for a whole training run").

    **Example:**

    >>> batcher = phalanx.Batcher(model, policy="agenda")
    >>> outs = batcher(trees)                     # list of per-tree results
    >>> torch.stack(outs).sum().backward()        # gradients equal the per-instance loop's
    """

    def __init__(self, fn: Callable[[Any], Any], *, policy: "str | Policy" = "depth", verify: bool | None = None,
                 lazy_inputs: bool = True, plan: "str | bool" = False, plan_objective: str = "bytes", profile: bool = False,
                 max_signatures: int = 4096, table: SignatureTable | None = None,
                 device: "str | torch.device | None" = None, cells: "CellOptions | bool" = True,
                 reuse: "bool | int" = False, reuse_plans: bool = True):
        self.fn = fn
        self.device = torch.device(device) if device is not None else None
        self.plan_objective = plan_objective
        self.profile = profile
        self.plan = plan
        self.lazy_inputs = lazy_inputs
        self.policy = make_policy(policy)
        self.verify = bool(_config.VERIFY) if verify is None else verify
        root = model_of(fn)
        self.table = table if table is not None else SignatureTable(root, max_signatures, CellOptions.resolve(cells))
        self.stats = Stats(policy=self.policy.name)
        max_calls = DEFAULT_MAX_CALLS if reuse_plans else 0
        self.reuse = (None if reuse is False else RecordingCache(max_calls=max_calls) if reuse is True
                      else RecordingCache(reuse, max_calls))
        self._lock = threading.Lock()
        self._arena_pool = ArenaPool()      # NOTE: [Arena pool] (runtime/executor.py)
        self._training_buffers = TrainingBuffers()      # NOTE: [Training buffers] (runtime/executor.py)

    def __call__(self, instances: Iterable[Any]) -> list:
        if not self._lock.acquire(blocking=False):
            raise PhalanxError("this Batcher is already running (called from two threads at once, or from inside "
                               "its own run); use one Batcher per thread")
        try:
            with collector_paused():        # NOTE: [Collector paused] (runtime/fibers.py)
                return self._call(list(instances))
        finally:
            self._lock.release()

    def _call(self, instances: list) -> list:
        stats = self.stats = Stats(policy=self.policy.name, instances=len(instances))
        table = self.table
        table.begin_call()          # NOTE: [What an op type may cache] (ir/signature.py)
        t0 = time.perf_counter()
        reuse, known, hub = self.reuse, None, None
        if reuse is not None:
            reuse.begin_call(table)
            # a plan made under inference_mode holds inference tensors (indices, numbers) that
            # autograd may not save: each mode its own plans
            options = (self.policy, self.plan, self.plan_objective, self._device(), torch.is_inference_mode_enabled())
            known = reuse.call_plan(instances, table, options)
        if known is not None:       # NOTE: [Plan reuse]: this very mini-batch ran before
            graph, outputs, planned = known.graph, known.outputs, known.planned
            stats.reused, stats.plan_reused = len(instances), True
            _rediscover(graph)
            stats.add_graph(graph)
            t1 = time.perf_counter()
        else:
            # Instances run as fibers (runtime/fibers.py): if one forces a lazy value, the hub flushes
            # round by round and returns the results; otherwise it returns what was recorded, and
            # this call flushes once, below (NOTE: [Lazy fibers]: no decisions, no extra cost).
            hub = Hub(self, stats)
            rec, outputs = hub.record(instances)
            stats.fibers = hub.fiber_stats
            stats.reused = len(hub.replayed)
            if hub.results is not None:
                table.end_call(hub.used_sids)
                stats.record_s += time.perf_counter() - t0 - stats.schedule_s - stats.plan_s - stats.execute_s
                return hub.results
            graph = rec.graph.freeze()
            if reuse is not None:      # NOTE: [Recording reuse]
                reuse.store(instances, rec, graph, outputs, {i for i, _ in hub.replayed})
            t1 = time.perf_counter()
            planned = self._plan(graph, stats)
            if reuse is not None:
                reuse.store_call(instances, options, graph, outputs, planned)
        stats.nodes, stats.values = graph.num_nodes, graph.num_values
        stats.op_types = len(graph.used_sids)
        schedule, layout, steps, counts = planned
        t3 = time.perf_counter()
        result_index, slots = _result_rows(graph, layout, outputs)
        # The lazy values die here (NOTE: [Result slots]), not after the run.
        outputs = hub = None
        tensors = self._run(graph, layout, steps, result_index, stats)
        results = _assemble(slots, tensors, result_index, per_row_views=stats.training)
        t4 = time.perf_counter()
        table.end_call(graph.used_sids.tolist())
        stats.batches = len(schedule)
        for f in dataclasses.fields(ReadCounts):
            setattr(stats, f.name, getattr(counts, f.name))
        stats.record_s, stats.execute_s = t1 - t0, t4 - t3
        if _config.DEBUG:
            print(f"phalanx: {stats}")
            if _config.DEBUG >= 2:
                print(format_schedule(graph, schedule))
        return results

    def release_memory(self) -> None:
        """Drop what this Batcher keeps between calls to run faster: the arena buffers of its last
        inference flush (NOTE: [Arena pool], runtime/executor.py) and, with ``reuse``, the cached
        recordings and plans (NOTE: [Recording reuse], [Plan reuse]). The next call works as usual,
        paying once more for what was dropped. Op types and their kernels are kept."""
        self._arena_pool.release()
        self._training_buffers.release()
        if self.reuse is not None:
            self.reuse.clear()

    def _device(self) -> torch.device:
        return self.device if self.device is not None else model_device(self.table.root)

    def record(self, instances: Iterable[Any]):
        """Record ``instances`` without executing them; returns the frozen graph (``GraphArrays``).
        Used to train policies on sample graphs and by ``phalanx explain``. Without execution there
        are no values, so per-instance code that forces one raises ``DataDependentError``."""
        self.table.begin_call()
        rec, _ = record_instances(self.fn, list(instances), self.table, lazy_inputs=self.lazy_inputs,
                                  device=self._device())
        graph = rec.graph.freeze()
        self.table.end_call(graph.used_sids.tolist())
        return graph

    # *** flush: plan, then run (also one round of fibers) ***
    def _plan(self, graph, stats: Stats):
        """Schedule, layout and plan steps of a frozen graph; adds schedule and plan seconds."""
        t0 = time.perf_counter()
        _rediscover(graph)
        if graph.num_nodes and getattr(self.policy, "needs_training", False):
            self.policy.fit([graph])   # a self-training policy ("fsm") learns on its first graph
        schedule = self.policy.schedule(graph)
        stats.add_graph(graph)                    # stats.lower_bound is computed when first read
        t1 = time.perf_counter()
        if self.plan:
            layout, report = plan_memory(graph, schedule, self.plan, self.plan_objective)
        else:
            layout, report = plan_layout(graph, schedule), None
        steps, counts = build_steps(graph, schedule, layout)
        if self.verify:
            verify_schedule(graph, schedule)
            if report is None:
                verify_layout(graph, layout, outputs_consecutive=True)
            else:
                verify_plan(graph, schedule, layout, report)
        stats.schedule_s += t1 - t0
        stats.plan_s += time.perf_counter() - t1
        return schedule, layout, steps, counts

    def _run(self, graph, layout, steps, result_index: list, stats: Stats) -> list:
        """Execute the steps; returns the rows ``result_index`` names, one tensor per entry
        (autograd-connected through one FlushFunction when gradients are needed)."""
        params = FlushParams(graph, self.table.modules(), _instance_tensors(graph)) if torch.is_grad_enabled() else None
        if params is not None and params.inputs:
            stats.training = True
            buffers = self._training_buffers
            run = TrainingRun(steps, buffers.arenas(graph, layout), result_index, params, buffers, stats, self.profile)
            return list(FlushFunction.apply(run, *params.inputs))
        # NOTE: [Arena pool] (runtime/executor.py): these arenas die with this call; results are copies
        arenas = self._arena_pool.allocate(graph, layout)
        run_inference(steps, arenas, stats if self.profile else None)
        return [arenas[a].index_select(0, idx) for a, idx in result_index]

    def explain(self, instances: Iterable[Any], out=None):
        """Draw (``out``: a .png or .svg path) and diagnose what this Batcher does with ``instances``;
        returns a ``phalanx.debug.Explanation`` (``print`` it for the text). See phalanx/debug/."""
        from .debug.explain import explain

        return explain(self, instances, out=out)


def _rediscover(graph) -> None:
    for sid in graph.used_sids.tolist():
        if graph.sigs[sid].rediscover:
            rediscover_captured(graph.sigs[sid], graph.device)


def _instance_tensors(graph) -> list[torch.Tensor]:
    """Per-instance tensor operands that require grad (their gradients leave through the flush); a
    row of an earlier fiber round stands for its round's arena (read with one index_select)."""
    found: dict[int, torch.Tensor] = {}
    imms = graph.imms
    if not any(issubclass(t, torch.Tensor) for t in set(map(type, imms))):
        return []       # numbers only (word ids...): one C-level pass instead of a Python loop
    for x in imms:
        if isinstance(x, torch.Tensor):
            origin = getattr(x, "_phalanx_origin", None)
            t = x if origin is None else origin[0]
            if t.requires_grad:
                found.setdefault(id(t), t)
    return list(found.values())


def _result_rows(graph, layout, outputs) -> tuple[list, list]:
    """The rows every instance's results live in (one index tensor per arena, arenas in order of
    first use) and each instance's result slots.

    NOTE: [Result slots] an instance's slots are ``(rebuild, n)`` when its ``n`` leaves are all
    lazy and every result row is in one arena (its results are the next ``n`` rows, in leaf order),
    else ``(rebuild, leaves)`` with each lazy leaf replaced by the ``_Row`` of its arena. Slots hold
    no lazy values, so a call drops its ~1,500 (a tagger's per-token logits) before it runs: the
    collector passes during the run and the result views (whose allocations trigger them) no longer
    walk them."""
    # C-level passes over the leaves; arenas, rows and the split by arena are numpy.
    leaves = list(chain.from_iterable(leaves for leaves, _ in outputs))
    all_lazy = _ALL_LAZY.issuperset(map(type, leaves))
    if all_lazy:
        vids = np.fromiter(map(_VID, leaves), dtype=np.int64, count=len(leaves))
    else:
        vids = np.fromiter((leaf.vid for leaf in leaves if type(leaf) is LazyValue), dtype=np.int64)
    if not len(vids):
        return [], [(rebuild, list(leaves)) for leaves, rebuild in outputs]
    arena = graph.value_aval_id[vids]
    rows = torch.from_numpy(layout.value_row[vids]).to(graph.device)
    if (arena == arena[0]).all():
        index = [(int(arena[0]), rows)]
        if all_lazy:
            return index, [(rebuild, len(leaves)) for leaves, rebuild in outputs]
        row = _Row(int(arena[0]))
        return index, [(rebuild, len(leaves)) if _ALL_LAZY.issuperset(map(type, leaves)) else
                       (rebuild, [row if type(x) is LazyValue else x for x in leaves]) for leaves, rebuild in outputs]
    slot_of = dict(zip(vids.tolist(), map(_Row, arena.tolist())))
    firsts = np.unique(arena, return_index=True)[1]
    index = [(int(arena[i]), rows[torch.from_numpy(np.flatnonzero(arena == arena[i]))]) for i in np.sort(firsts)]
    return index, [(rebuild, [slot_of[x.vid] if type(x) is LazyValue else x for x in leaves])
                   for leaves, rebuild in outputs]


_VID = attrgetter("vid")
_ALL_LAZY = frozenset((LazyValue,))


class _Row:
    """A lazy leaf's slot: the next row of arena ``arena`` (NOTE: [Result slots])."""

    __slots__ = ("arena",)

    def __init__(self, arena: int):
        self.arena = arena


def _assemble(slots: list, tensors: list, result_index: list, per_row_views: bool) -> list:
    """Per-instance results in the user's structures. With autograd, one ``select`` view per result
    (not ``unbind``), so users may modify a result in place, as eagerly."""
    rows_of = [[t[i] for i in range(len(t))] if per_row_views else t.unbind(0) for t in tensors]
    if len(rows_of) == 1:
        return _assemble_in_order(slots, rows_of[0])
    per_arena = {a: iter(rows) for (a, _), rows in zip(result_index, rows_of, strict=True)}
    return [rebuild([next(per_arena[x.arena]) if type(x) is _Row else x for x in leaves])
            for rebuild, leaves in slots]


def _assemble_in_order(slots: list, rows) -> list:
    """Every result row in one arena, in leaf order (``_result_rows``): an instance whose leaves are
    all lazy takes the next ``n`` rows as one slice, with no per-leaf lookup."""
    results, at = [], 0
    for rebuild, leaves in slots:
        if type(leaves) is int:
            vals = [rows[at]] if leaves == 1 else list(rows[at:at + leaves])
            at += leaves
        else:
            vals = []
            for x in leaves:
                if type(x) is _Row:
                    x = rows[at]
                    at += 1
                vals.append(x)
        results.append(rebuild(vals))
    return results


# fn (or a bound method's object) -> {(method, options): (SignatureTable, Policy)}. Weak keys, and the
# values never hold fn itself, so a model used once with phalanx.batch can still be freed.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def batch(fn: Callable[[Any], Any], instances: Iterable[Any], **options) -> list:
    """One-shot ``Batcher(fn, **options)(instances)``. Op-type analysis (signatures, kernels) and
    a self-trained policy are cached per ``fn`` and options and reused by the next call, without
    keeping ``fn`` (or its model) alive."""
    key = tuple(sorted((k, v if isinstance(v, (str, int, bool, type(None), CellOptions)) else id(v))
                       for k, v in options.items()))
    owner, method = (fn.__self__, fn.__func__) if hasattr(fn, "__self__") and hasattr(fn, "__func__") else (fn, None)
    try:
        per_fn = _CACHE.setdefault(owner, {})
    except TypeError:
        return Batcher(fn, **options)(instances)
    cached = per_fn.get((method, key))
    if cached is None:
        batcher = Batcher(fn, **options)
        per_fn[(method, key)] = (batcher.table, batcher.policy)
    else:
        table, policy = cached
        batcher = Batcher(fn, **{**options, "policy": policy}, table=table)
    return batcher(instances)


__all__ = ["Batcher", "batch"]
