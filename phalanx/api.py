"""The public entry points: ``Batcher`` and ``batch``.

A call records every instance (running the user's per-instance function with lazy values), then
flushes: schedule -> layout -> plan -> execute, and hands back one result per instance as ordinary
torch tensors (autograd-connected when gradients are needed).
"""
from __future__ import annotations

import dataclasses
import time
import weakref
from typing import Any, Callable, Iterable

import torch

from . import _config
from .errors import InstanceError, PhalanxError, ResultStructureError
from .frontend import recorder as _recorder
from .frontend.value import LazyValue
from .ir.signature import SignatureTable
from .memory.layout import plan_layout, verify_layout
from .memory.planner import plan_memory, verify_plan
from .runtime import fibers as _fibers
from .runtime.executor import FlushFunction, TrainingRun, allocate_arenas, build_steps, run_inference
from .schedule import format_schedule, make_policy, verify_schedule
from .schedule.base import Policy
from .stats import ReadCounts, Stats

_LEAF_TYPES = (torch.Tensor, LazyValue, type(None))


class Batcher:
    """Runs a per-instance function over a mini-batch as batched kernels.

    **Arguments:**
    - ``fn``: any callable taking ONE instance (usually an ``nn.Module`` whose forward handles one
      tree / sentence). It may return a tensor or a tuple / list / dict of tensors (None allowed).
    - ``policy``: ``"depth"`` (default), ``"agenda"``, ``"fsm"`` (learned; trains itself on the first
      call's graph unless given a trained ``FSMPolicy``), ``"optimal"`` (small graphs), or a ``Policy``.
    - ``verify``: run the graph / schedule / layout verifiers on every flush (default: PHALANX_VERIFY).
    - ``plan``: the memory planner's strategy (memory/planner.py), so operand lists are read in
      place where possible: ``"auto"``, ``"instance"``, ``"producer"``, ``"pqtree"``; ``False`` (default) lays values
      out in schedule order. Planning is off by default because on CPU a gather is a cheap
      ``index_select`` and planning cost more than it saved in our benchmarks (README, Results).
    - ``plan_objective``: ``"bytes"`` (default: most bytes read in place) or ``"lists"`` (most
      operand lists read in place, i.e. fewest gather launches).
    - ``profile``: record per op type the batches, nodes and forward / backward seconds in
      ``stats.per_op`` (times each batch; off by default).
    - ``lazy_inputs``: tensors inside an instance (the instance itself, or inside tuples / lists /
      dicts) reach ``fn`` as lazy values, so code with no cell batches too (default True).

    ``batcher(instances)`` returns a list with one result per instance, in order. ``batcher.stats``
    describes the last call (see ``phalanx.Stats``). One phalanx run records at a time per process
    (the active recorder is process-global for speed); runs cannot be nested.

    **Example:**

    >>> batcher = phalanx.Batcher(model, policy="agenda")
    >>> outs = batcher(trees)                     # list of per-tree results
    >>> torch.stack(outs).sum().backward()        # gradients equal the per-instance loop's
    """

    def __init__(self, fn: Callable[[Any], Any], *, policy: "str | Policy" = "depth", verify: bool | None = None,
                 lazy_inputs: bool = True, plan: "str | bool" = False, plan_objective: str = "bytes", profile: bool = False):
        self.fn = fn
        self.plan_objective = plan_objective
        self.profile = profile
        self.plan = plan
        self.lazy_inputs = lazy_inputs
        self.policy = make_policy(policy)
        self.verify = bool(_config.VERIFY) if verify is None else verify
        root = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        self.table = SignatureTable(root)
        self.stats = Stats(policy=self.policy.name)

    def __call__(self, instances: Iterable[Any]) -> list:
        instances = list(instances)
        stats = self.stats = Stats(policy=self.policy.name, instances=len(instances))
        rec = _recorder.Recorder(self.table)
        t0 = time.perf_counter()
        # >>> fibers (runtime/fibers.py): instances run as fibers; if any forced a lazy value, the hub
        # flushed round by round and holds the results. Otherwise: one flush, below, as before.
        hub = _fibers.Hub(self, stats)
        outputs = hub.record(rec, instances)
        stats.fibers = hub.fiber_stats
        if hub.results is not None:
            stats.record_s += time.perf_counter() - t0 - stats.schedule_s - stats.execute_s
            return hub.results
        # <<< fibers
        t1 = time.perf_counter()
        graph = rec.graph.freeze()
        if getattr(self.policy, "needs_training", False):
            self.policy.fit([graph])   # a self-training policy ("fsm") learns on its first graph
        stats.nodes, stats.values = graph.num_nodes, graph.num_values
        stats.op_types = len(graph.used_sids)
        schedule = self.policy.schedule(graph)
        stats._graph = graph                      # stats.lower_bound is computed when first read
        t2 = time.perf_counter()
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
        t3 = time.perf_counter()
        results = self._execute(graph, layout, steps, outputs)
        t4 = time.perf_counter()
        stats.batches = len(schedule)
        for f in dataclasses.fields(ReadCounts):
            setattr(stats, f.name, getattr(counts, f.name))
        stats.record_s, stats.schedule_s, stats.plan_s, stats.execute_s = t1 - t0, t2 - t1, t3 - t2, t4 - t3
        if _config.DEBUG:
            print(f"phalanx: {stats}")
            if _config.DEBUG >= 2:
                print(format_schedule(graph, schedule))
        return results

    def record(self, instances: Iterable[Any]):
        """Record ``instances`` without executing them; returns the frozen graph (``GraphArrays``).
        Used to train policies on sample graphs and by ``phalanx explain``."""
        rec = _recorder.Recorder(self.table)
        self._record(rec, list(instances))
        return rec.graph.freeze()

    # *** record ***
    def _record(self, rec: "_recorder.Recorder", instances: list) -> list:
        outputs = []
        if _recorder._ACTIVE is not None:
            raise PhalanxError("phalanx runs cannot be nested (a Batcher was called while recording)")
        _recorder._ACTIVE = rec
        try:
            for i, instance in enumerate(instances):
                outputs.append(self._record_instance(rec, i, instance))
        finally:
            _recorder._ACTIVE = None
        return outputs

    def _record_instance(self, rec: "_recorder.Recorder", i: int, instance):
        rec.begin_instance(i)
        try:
            out = self.fn(rec.lazify(instance) if self.lazy_inputs else instance)
        except PhalanxError as e:
            if e.instance is None:
                # Same exception object (type, attributes, traceback), message naming the instance.
                e.args = (f"instance {i}: {e.args[0] if e.args else ''}", *e.args[1:])
                e.instance = i
            raise
        except Exception as e:
            err = InstanceError(i, f"{type(e).__name__}: {e}")
            err.instance = i
            raise err from e
        return _flatten_result(out, i)

    # *** execute ***
    def _execute(self, graph, layout, steps, outputs) -> list:
        arenas = allocate_arenas(graph, layout)
        # The rows every instance's results live in, one index per arena.
        rows_by_arena: dict[int, list[int]] = {}
        for leaves, _ in outputs:
            for leaf in leaves:
                if type(leaf) is LazyValue:
                    rows_by_arena.setdefault(int(graph.value_aval_id[leaf.vid]), []).append(int(layout.value_row[leaf.vid]))
        result_index = [(a, torch.tensor(r, dtype=torch.int64)) for a, r in rows_by_arena.items()]
        grad_inputs = _grad_inputs(graph, steps) if torch.is_grad_enabled() else []
        self.stats.training = bool(grad_inputs)
        if grad_inputs:
            run = TrainingRun(steps, arenas, result_index, grad_inputs, self.stats, self.profile)
            tensors = FlushFunction.apply(run, *grad_inputs)
        else:
            run_inference(steps, arenas, self.stats if self.profile else None)
            tensors = [arenas[a].index_select(0, idx) for a, idx in result_index]
        per_arena = {a: iter(t.unbind(0)) for (a, _), t in zip(result_index, tensors, strict=True)}
        results = []
        for leaves, rebuild in outputs:
            vals = [next(per_arena[int(graph.value_aval_id[x.vid])]) if type(x) is LazyValue else x for x in leaves]
            results.append(rebuild(vals))
        return results


def _grad_inputs(graph, steps) -> list[torch.Tensor]:
    """Parameters read by the batched ops plus per-instance tensors, all requiring grad."""
    found: dict[int, torch.Tensor] = {}
    for sid in graph.used_sids:
        for t in graph.sigs[sid].grad_leaves:
            if t.requires_grad:
                found.setdefault(id(t), t)
    for x in graph.imms:
        if isinstance(x, torch.Tensor) and x.requires_grad:
            found.setdefault(id(x), x)
    return list(found.values())


def _flatten_result(out, index: int):
    if type(out) is LazyValue or isinstance(out, torch.Tensor):
        return [out], (lambda vals: vals[0])
    leaves, spec = torch.utils._pytree.tree_flatten(out)
    bad = [leaf for leaf in leaves if not isinstance(leaf, _LEAF_TYPES)]
    if bad:
        err = ResultStructureError(
            f"instance {index}: the function returned {type(out).__name__} containing "
            f"{type(bad[0]).__name__} ({bad[0]!r:.60}); results must be tensors, lazy values, None, "
            f"or tuples / lists / dicts of them")
        err.instance = index
        raise err
    return leaves, (lambda vals: torch.utils._pytree.tree_unflatten(vals, spec))


_BATCHERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def batch(fn: Callable[[Any], Any], instances: Iterable[Any], **options) -> list:
    """One-shot ``Batcher(fn, **options)(instances)``; reuses a cached Batcher per ``fn`` and options
    so op-type analysis is not repeated."""
    key = tuple(sorted((k, v if isinstance(v, (str, int, bool, type(None))) else id(v)) for k, v in options.items()))
    try:
        per_fn = _BATCHERS.setdefault(fn, {})
    except TypeError:
        return Batcher(fn, **options)(instances)
    batcher = per_fn.get(key)
    if batcher is None:
        batcher = per_fn[key] = Batcher(fn, **options)
    return batcher(instances)


__all__ = ["Batcher", "batch"]
