"""Fibers: tensor-dependent control flow inside per-instance code stays batched (ACRoBat).

Each instance runs as a fiber (a ``greenlet``). When its code forces a lazy value (``bool``,
``.item()``, ``.tolist()``, ``float``, ``int``, use as an index; a comparison in an ``if`` lands in
``bool``), the fiber suspends (``force``). When every live instance is suspended or finished, the
hub flushes what is recorded so far (schedule -> layout -> execute, the ordinary pipeline: one
*round*), then resumes each suspended fiber, which reads its concrete value and records on into a
fresh graph. Rounds = the maximum, not the sum, of the instances' decision points.

NOTE: [Values across rounds] A lazy value recorded in round k names a row of one of round k's
arenas. After round k is flushed, its graph is *stale*: using one of its values in round k+1 (as an
operand, or as a result) resolves it to the concrete row, a view of the round's output, and it is
recorded as a per-instance tensor operand (``ArgKind.TENSOR``). In training a round is one
``FlushFunction`` whose outputs are its whole arenas, so those views are autograd-connected:
gradients flow from round k+1's flush into round k's, and decisions are ordinary Python.

NOTE: [Lazy fibers] A call whose instances never force a value must pay nothing: instances are
recorded by one *driver* greenlet, in order, on one stack. When an instance suspends, the driver
that runs it becomes that instance's fiber and the hub starts a new driver for the instances not
yet begun. So greenlets created = 1 + instances that suspended in round 0, and a model without
decisions records exactly as before (one greenlet per call, one flush).

NOTE: [Fiber memory] a suspended greenlet keeps a copy of its C stack. Plain Python recursion
costs little (3.11 keeps Python frames off the C stack) but each nested ``nn.Module`` call adds C
frames: measured, 5,000 instances suspended 40 module calls deep took 1.2 GB peak RSS against
0.3 GB for the same model without a decision (about 180 KB per fiber); shallow code (the 5,000
instance test) costs little. Very large calls of deeply nested modules should be split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from greenlet import GreenletExit, getcurrent, greenlet

from ..errors import DataDependentError, PhalanxError
from ..frontend import recorder as _recorder
from ..memory.layout import plan_layout, verify_layout
from ..memory.planner import plan_memory, verify_plan
from ..schedule import verify_schedule
from .executor import FlushFunction, TrainingRun, allocate_arenas, build_steps, run_inference

_HUB: "Hub | None" = None


@dataclass
class FiberStats:
    """What the fibers did in the last call: ``rounds`` flushes (1 when no instance forced a value),
    of which ``decision_rounds`` were forced by suspended instances (= the most values any one
    instance forced, not the sum: ACRoBat), ``decisions[i]`` the values instance i forced, and per
    round the batches and nodes it ran."""

    rounds: int = 0
    decision_rounds: int = 0
    decisions: list[int] = field(default_factory=list)
    round_batches: list[int] = field(default_factory=list)
    round_nodes: list[int] = field(default_factory=list)

    @property
    def max_decisions(self) -> int:
        return max(self.decisions, default=0)


class RoundResult:
    """The executed arenas of one flushed round; turns a stale lazy value into its concrete row."""

    __slots__ = ("graph", "value_row", "value_arena", "arenas", "_rows")

    def __init__(self, graph, value_row, value_arena, arenas):
        self.graph = graph            # the DataflowGraph (kept alive so its id is not reused)
        self.value_row = value_row
        self.value_arena = value_arena
        self.arenas = arenas          # per arena: all rows (autograd-connected in training)
        self._rows: dict[int, tuple] = {}

    def value(self, vid: int) -> torch.Tensor:
        arena = int(self.value_arena[vid])
        rows = self._rows.get(arena)
        if rows is None:
            # One unbind per arena: its backward stacks every row's gradient in one op.
            rows = self._rows[arena] = self.arenas[arena].unbind(0)
        return rows[int(self.value_row[vid])]


@dataclass(slots=True)
class _Fiber:
    glet: greenlet
    inst: int
    phase: int


class Hub:
    """Runs one Batcher call's instances as fibers. ``record`` returns the recorded outputs when no
    instance suspended (the caller flushes once, as without fibers); otherwise it runs every round
    and leaves the final per-instance results in ``results``."""

    def __init__(self, batcher, stats):
        self.batcher = batcher
        self.stats = stats
        self.fiber_stats = FiberStats()
        self.rounds: dict[int, RoundResult] = {}
        self.results: list | None = None
        self.waiting: list[_Fiber] = []      # suspended in the round being recorded
        self.resuming: list[_Fiber] = []     # suspended in the last flushed round, being resumed
        self.driver: greenlet | None = None
        self.main: greenlet | None = None
        self.rec = None

    # *** the hub loop ***
    def record(self, rec, instances: list) -> list | None:
        global _HUB
        if _recorder._ACTIVE is not None or _HUB is not None:
            raise PhalanxError("phalanx runs cannot be nested (a Batcher was called while recording)")
        self.instances, self.next, self.rec = instances, 0, rec
        self.outputs: list = [None] * len(instances)
        self.fiber_stats.decisions = [0] * len(instances)
        self.main = getcurrent()
        _recorder._ACTIVE, _HUB = rec, self
        try:
            self._drive_new_instances()
            if not self.waiting:
                self.fiber_stats.rounds = 1
                return self.outputs
            self._run_rounds()
            return None
        except BaseException:
            _recorder._ACTIVE, _HUB = None, None
            self._kill_fibers()
            raise
        finally:
            _recorder._ACTIVE, _HUB = None, None

    def _drive_new_instances(self) -> None:
        while self.next < len(self.instances):
            self.driver = greenlet(self._drive, parent=self.main)
            self.driver.switch()       # back here when the driver is done or its instance suspends

    def _drive(self) -> None:
        me = getcurrent()
        while self.next < len(self.instances):
            i = self.next
            self.next = i + 1
            self.outputs[i] = self.batcher._record_instance(self.rec, i, self.instances[i])
            if self.driver is not me:
                return                 # this driver became instance i's fiber; a new one took over

    def _run_rounds(self) -> None:
        while True:
            if not self.waiting and not len(self.rec.graph):
                break                   # the last fibers finished without recording anything
            self._flush()
            if not self.waiting:
                break
            self.fiber_stats.decision_rounds += 1
            self.resuming, self.waiting = self.waiting, []
            self.rec = _recorder.Recorder(self.batcher.table)
            _recorder._ACTIVE = self.rec
            for fiber in self.resuming:
                self.rec.begin_instance(fiber.inst, fiber.phase)
                fiber.glet.switch()     # runs the instance until it suspends again or finishes
        self.results = self._collect_results()

    def suspend(self) -> None:
        """Called from a fiber: wait until the current graph is flushed."""
        me = getcurrent()
        if me is self.main:
            raise DataDependentError("a lazy value was forced outside a fiber")
        rec = self.rec
        self.waiting.append(_Fiber(me, rec.inst, rec.phase))
        self.fiber_stats.decisions[rec.inst] += 1
        if self.driver is me:
            self.driver = None
        self.main.switch()

    def _kill_fibers(self) -> None:
        # Unwind every unfinished fiber now, while no recorder is active: left to the garbage
        # collector, its cleanup code (a phase's exit) could run during a later call.
        fibers = [f.glet for f in self.resuming + self.waiting] + ([self.driver] if self.driver is not None else [])
        self.resuming, self.waiting, self.driver = [], [], None
        for g in fibers:
            if not g.dead:
                try:
                    g.throw(GreenletExit)
                except BaseException:   # noqa: BLE001  (user cleanup code failing on a dead run)
                    pass

    # *** one round: the ordinary pipeline, keeping every arena row reachable ***
    def _flush(self) -> None:
        from ..api import _grad_inputs

        batcher, rec, stats = self.batcher, self.rec, self.stats
        t0 = time.perf_counter()
        graph = rec.graph.freeze()
        _recorder._ACTIVE = None
        try:
            if graph.num_nodes and getattr(batcher.policy, "needs_training", False):
                batcher.policy.fit([graph])
            schedule = batcher.policy.schedule(graph)
            if batcher.plan:
                layout, report = plan_memory(graph, schedule, batcher.plan, batcher.plan_objective)
            else:
                layout, report = plan_layout(graph, schedule), None
            steps, counts = build_steps(graph, schedule, layout)
            if batcher.verify:
                verify_schedule(graph, schedule)
                if report is None:
                    verify_layout(graph, layout, outputs_consecutive=True)
                else:
                    verify_plan(graph, schedule, layout, report)
            stats.schedule_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            arenas = allocate_arenas(graph, layout)
            grad_inputs = _grad_inputs(graph, steps) if torch.is_grad_enabled() else []
            if grad_inputs:
                stats.training = True
                every_row = [(a, torch.arange(int(n))) for a, n in enumerate(layout.arena_rows)]
                run = TrainingRun(steps, arenas, every_row, grad_inputs, _BackwardClock(stats), batcher.profile)
                arenas = list(FlushFunction.apply(run, *grad_inputs))
            else:
                run_inference(steps, arenas, stats if batcher.profile else None)
            stats.execute_s += time.perf_counter() - t0
        finally:
            _recorder._ACTIVE = self.rec
        self.rounds[id(rec.graph)] = RoundResult(rec.graph, layout.value_row, graph.value_aval_id, arenas)
        if not isinstance(stats._graph, list):
            stats._graph = []
        stats._graph.append(graph)          # the lower bound (a sum over rounds) is computed when read
        fs = self.fiber_stats
        fs.rounds += 1
        fs.round_batches.append(len(schedule))
        fs.round_nodes.append(graph.num_nodes)
        stats.nodes += graph.num_nodes
        stats.values += graph.num_values
        stats.batches += len(schedule)
        for name, value in vars(counts).items():
            setattr(stats, name, getattr(stats, name) + value)

    def _collect_results(self) -> list:
        """Per-instance results; each (round, arena) holding results is read with one index_select."""
        wanted: dict[tuple[int, int], list[int]] = {}
        for leaves, _ in self.outputs:
            for leaf in leaves:
                if type(leaf) is _LazyValue:
                    rr = self._round_of(leaf)
                    wanted.setdefault((id(rr.graph), int(rr.value_arena[leaf.vid])), []).append(int(rr.value_row[leaf.vid]))
        rows = {}
        for (g, arena), idx in wanted.items():
            rows[(g, arena)] = iter(self.rounds[g].arenas[arena].index_select(0, torch.tensor(idx)).unbind(0))
        results = []
        for leaves, rebuild in self.outputs:
            vals = [next(rows[(id(leaf.graph), int(self.rounds[id(leaf.graph)].value_arena[leaf.vid]))])
                    if type(leaf) is _LazyValue else leaf for leaf in leaves]
            results.append(rebuild(vals))
        return results

    def _round_of(self, value) -> RoundResult:
        rr = self.rounds.get(id(value.graph))
        if rr is None or rr.graph is not value.graph:
            raise PhalanxError(f"{value!r} belongs to a finished phalanx run")
        return rr


class _BackwardClock:
    """Adds each round's backward time to the call's Stats (TrainingRun assigns ``backward_s``)."""

    def __init__(self, stats):
        self._stats = stats

    def __getattr__(self, name):          # add_op_time and the rest: the call's Stats
        return getattr(self._stats, name)

    @property
    def backward_s(self) -> float:
        return self._stats.backward_s

    @backward_s.setter
    def backward_s(self, seconds: float) -> None:
        self._stats.backward_s += seconds


# *** hooks called by the front end ***
def force(value, what: str) -> torch.Tensor:
    """The concrete (detached) tensor of a lazy value. Inside a fiber whose value is not computed
    yet, this suspends the instance until the hub has flushed (NOTE: [Lazy fibers])."""
    hub = _HUB
    if hub is None:
        raise DataDependentError(
            f"{what} on {value!r} needs its value, which does not exist while recording; run the "
            f"instances with a Batcher call (fibers), keep the decision inside a cell, or run this code "
            f"outside phalanx")
    if value.graph is hub.rec.graph:
        hub.suspend()
    return hub._round_of(value).value(value.vid).detach()


def resolve_stale(value, name: str) -> torch.Tensor:
    """A lazy value of an already flushed round, as the concrete tensor a later round reads
    (NOTE: [Values across rounds]). Raises if the value is from a finished run."""
    hub = _HUB
    if hub is None:
        raise PhalanxError(f"{name}: got a lazy value from a finished phalanx run")
    rr = hub.rounds.get(id(value.graph))
    if rr is None or rr.graph is not value.graph:
        raise PhalanxError(f"{name}: got a lazy value from a finished phalanx run")
    return rr.value(value.vid)


from ..frontend.value import LazyValue as _LazyValue  # noqa: E402  (value.py imports this module)
