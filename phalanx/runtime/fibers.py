"""Fibers: tensor-dependent control flow inside per-instance code stays batched (ACRoBat).

Each instance runs as a fiber (a ``greenlet``). When its code forces a lazy value (``bool``,
``.item()``, ``.tolist()``, ``float``, ``int``, use as an index; a comparison in an ``if`` lands in
``bool``), the fiber suspends (``force``). When every live instance is suspended or finished, the
hub flushes what is recorded so far (schedule -> layout -> execute, the ordinary pipeline: one
*round*), then resumes each suspended fiber, which reads its concrete value and records on into a
fresh graph. Rounds = the maximum, not the sum, of the instances' decision points.

NOTE: [Values across rounds] A lazy value recorded in round k names a row of one of round k's
arenas. After round k is flushed, its graph is *stale*: a value of it used in round k+1 (an operand,
or a result) is a per-instance tensor operand (``ArgKind.TENSOR``) of the lazy value's aval. Every
graph of a run carries the run's token (``Columns.run``), so the recording fast path accepts such a
value natively (ir/_columns.c: same run, another graph) and records the stale value itself as an
immediate, without Python; the Python paths do the same. In inference the executor reads each
operand list of stale immediates that are rows of one arena of one round with one ``index_select``
from that arena (``EXTERNAL``), found from the list's value ids by two numpy lookups (NOTE: [Stale
operand lists]). In training, ``_flush`` first replaces each stale immediate by its concrete row, a
view of round k's output tagged with its (arena, row), read the same way; the arena, not each row,
is the input of the next flush. In training a round is one ``FlushFunction``
whose outputs are its whole arenas, so those reads are autograd-connected: gradients flow from
round k+1's flush into round k's, and decisions are ordinary Python. In inference the round keeps
its arenas themselves (no copy); results that fill a whole arena in order are views of it.

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

import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np
import torch
from greenlet import GreenletExit, getcurrent, greenlet

from ..errors import DataDependentError, PhalanxError
from ..frontend import recorder as _recorder
from ..frontend.recording import expose_submodules, hide_submodules, record_one
from ..frontend.value import LazyValue as _LazyValue
from .executor import allocate_arenas, run_inference


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
    """The executed arenas of one flushed round; turns a stale lazy value into its concrete row.

    Looked up once per stale operand of every later round (NOTE: [Values across rounds]), so rows
    and arenas are Python lists and each arena's row views are made once, by one ``unbind``."""

    __slots__ = ("graph", "value_row", "value_arena", "rows_np", "arenas_np", "arenas", "_rows", "_plain",
                 "_items")

    def __init__(self, graph, value_row, value_arena, arenas):
        self.graph = graph            # the DataflowGraph (kept alive so its id is not reused)
        self.value_row = value_row.tolist()
        self.value_arena = value_arena.tolist()
        self.rows_np, self.arenas_np = value_row, value_arena      # for whole operand lists at once
        self.arenas = arenas          # per arena: all rows (autograd-connected in training)
        self._rows: dict[int, list] = {}
        self._plain: dict[int, tuple] = {}
        self._items: dict[int, list | None] = {}

    def value(self, vid: int) -> torch.Tensor:
        arena = self.value_arena[vid]
        rows = self._rows.get(arena)
        if rows is None:
            rows = self._rows[arena] = self._row_views(arena)
        row = self.value_row[vid]
        view = rows[row]
        if view is None:
            view = rows[row] = self._tagged(self.arenas[arena], self.arenas[arena][row], row)
        return view

    def _row_views(self, arena: int) -> list:
        """The row views of an arena, made on first use: a small arena (a decoder step's states,
        most of which the next round reads) by one ``unbind`` (~1 us a row, and its backward stacks
        every row's gradient in one op); a large one (every encoder state, of which the decoder reads
        the last) one row at a time."""
        base = self.arenas[arena]
        if len(base) > _UNBIND_ROWS:
            return [None] * len(base)
        return [self._tagged(base, view, row) for row, view in enumerate(base.unbind(0))]

    @staticmethod
    def _tagged(base: torch.Tensor, view: torch.Tensor, row: int) -> torch.Tensor:
        # Where it lives, so a later round reads many such rows with ONE index_select from the
        # round's arena, not a stack of views (runtime/executor.py, EXTERNAL operands).
        view._phalanx_origin = (base, row)
        return view

    def data(self, vid: int) -> torch.Tensor:
        """The value's data, detached: what a suspension point (``item``, ``bool``...) reads."""
        arena = self.value_arena[vid]
        rows = self._plain.get(arena)
        if rows is None:
            rows = self._plain[arena] = self.arenas[arena].detach().unbind(0)
        return rows[self.value_row[vid]]

    def item(self, vid: int):
        """``data(vid).item()``; a 0-d value is read from its arena as one Python list, made once
        (every instance of a decoder reads its next word from the same arena of the round)."""
        arena = self.value_arena[vid]
        numbers = self._items.get(arena, False)
        if numbers is False:
            base = self.arenas[arena]
            numbers = self._items[arena] = base.detach().tolist() if base.dim() == 1 else None
        if numbers is None:
            return self.data(vid).item()
        return numbers[self.value_row[vid]]


    def rows(self, vids: list) -> "tuple[int, np.ndarray] | None":
        """(arena, rows) when the values ``vids`` all live in one arena of this round, else None."""
        arena_ids = self.arenas_np[vids]
        if len(arena_ids) and (arena_ids == arena_ids[0]).all():
            return int(arena_ids[0]), self.rows_np[vids]
        return None


_UNBIND_ROWS = 256      # RoundResult._row_views: arenas up to this many rows are unbound at once


# NOTE: [Collector paused] a call allocates many small objects that live until its end (lazy
# values, operand lists, fibers, row views), so the cyclic collector's thresholds keep firing and each
# older-generation pass walks every object of the call, and every other object of the process with
# it (a model, torch's own modules: ~300,000 objects in the test process): measured 10-30% of an NMT
# decode call. While any Batcher call of any thread runs (recording, rounds, plan, execution and the
# results' assembly: the flush alone was 3% of a tagger call at hidden 256, 5% at hidden 8, same
# process, paired), automatic collection is paused (gc is process-wide, hence the count); it
# resumes, as the user had it, when the last such call ends. Garbage without cycles is freed by
# reference counting meanwhile, as always.
_gc_lock = threading.Lock()
_gc_calls = 0
_gc_was_enabled = False


@contextmanager
def collector_paused():
    global _gc_calls, _gc_was_enabled
    with _gc_lock:
        if _gc_calls == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_calls += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_calls -= 1
            if _gc_calls == 0 and _gc_was_enabled:
                gc.enable()


_GRAPH_OF, _VID_OF = attrgetter("graph"), attrgetter("vid")


@dataclass(slots=True)
class _Fiber:
    glet: greenlet
    inst: int
    phase: int


class Hub:
    """Runs one Batcher call's instances as fibers. ``record`` returns the recorder and the recorded
    outputs when no instance suspended (the caller flushes once, as without fibers); otherwise it
    runs every round and leaves the final per-instance results in ``results``. While it runs it is
    the thread's hub (``recorder._SLOT.hub``): the front end's suspension points call ``force``."""

    def __init__(self, batcher, stats):
        self.batcher = batcher
        self.stats = stats
        self.device = batcher._device()
        self.fiber_stats = FiberStats()
        self.rounds: dict[int, RoundResult] = {}
        self.results: list | None = None
        self.used_sids: set[int] = set()
        self.waiting: list[_Fiber] = []      # suspended in the round being recorded
        self.resuming: list[_Fiber] = []     # suspended in the last flushed round, being resumed
        self.driver: greenlet | None = None
        self.main: greenlet | None = None
        self.rec = None
        # Every graph of this call carries it (Columns.run): the values of its earlier rounds are
        # recognised as stale by the fast path (NOTE: [Values across rounds]). A plain object, so
        # graphs do not keep the hub alive.
        self.token = object()

    # *** the hub loop ***
    def record(self, instances: list):
        slot = _recorder._SLOT
        if slot.rec is not None or slot.hub is not None:
            raise PhalanxError("phalanx runs cannot be nested (a Batcher was called while recording)")
        table = self.batcher.table
        self.instances, self.next = instances, 0
        self.rec = first = _recorder.Recorder(table, self.device, self.token)
        self.outputs: list = [None] * len(instances)
        self.replayed: list = []     # (instance, recording reused from an earlier call): NOTE: [Recording reuse]
        self.fiber_stats.decisions = [0] * len(instances)
        self.main = getcurrent()
        exposed = expose_submodules(table.root)
        slot.rec, slot.hub = first, self
        try:
            try:        # the collector is paused by the whole call (Batcher.__call__, NOTE: [Collector paused])
                return self._record_all(first)
            finally:
                self._release_rounds()
        except BaseException:
            slot.rec, slot.hub = None, None
            self._kill_fibers()
            raise
        finally:
            slot.rec, slot.hub = None, None
            hide_submodules(exposed)

    def _record_all(self, first):
        self._drive_new_instances()
        if self.replayed:
            self.batcher.reuse.replay(first, self.replayed, self.outputs)
        if not self.waiting:
            self.fiber_stats.rounds = 1
            return first, self.outputs
        self._run_rounds()
        return first, None

    def _release_rounds(self) -> None:
        # NOTE: [Collector paused] the paused collector still counts allocations, so the first one
        # after it resumes collects the youngest generation: every object of the call still alive.
        # Dropping the rounds' graphs, lazy values and row views first (the results hold tensors
        # only) leaves that pass little to walk: on an NMT decode call of 64 sentences, 10-37 ms
        # before, under 1 ms after.
        if self.results is not None:
            for rr in self.rounds.values():
                # The batcher's stats keep every round's frozen graph (for the lower bound) and with
                # it the immediates: row views of the earlier rounds' arenas. Executed rounds need
                # none of them, and they would keep every arena of the call alive until the next.
                rr.graph.imms.clear()
            self.rounds.clear()
            self.outputs = self.instances = None
            self.rec, self.waiting, self.resuming = None, [], []

    def _drive_new_instances(self) -> None:
        while self.next < len(self.instances):
            self.driver = greenlet(self._drive, parent=self.main)
            self.driver.switch()       # back here when the driver is done or its instance suspends

    def _drive(self) -> None:
        me = getcurrent()
        batcher = self.batcher
        while self.next < len(self.instances):
            i = self.next
            self.next = i + 1
            instance, reuse = self.instances[i], batcher.reuse
            block = reuse.lookup(instance, batcher.table) if reuse is not None else None
            if block is not None:       # NOTE: [Recording reuse]: appended once every instance ran
                self.replayed.append((i, block))
                continue
            self.outputs[i] = record_one(batcher.fn, self.rec, i, instance, batcher.lazy_inputs)
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
            self.rec = _recorder.Recorder(self.batcher.table, self.device, self.token)
            _recorder._SLOT.rec = self.rec
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

    # *** one round: the Batcher's own flush, keeping every arena row reachable ***
    def _flush(self) -> None:
        batcher, rec, stats = self.batcher, self.rec, self.stats
        training = torch.is_grad_enabled()
        if training:
            # The flush finds the tensors it differentiates into among the immediates (api.py
            # _instance_tensors): every stale value is its row view beforehand. In inference the
            # executor asks ``stale_operand`` per operand list instead (NOTE: [Stale operand lists]).
            self._resolve_stale_immediates(rec.graph.imms)
        graph = rec.graph.freeze()
        slot = _recorder._SLOT
        slot.rec = None
        try:
            schedule, layout, steps, counts = batcher._plan(graph, stats)
            start = time.perf_counter()
            if training:
                # Training: the round is one FlushFunction whose outputs are its whole arenas.
                every_row = [(a, torch.arange(int(n), device=graph.device)) for a, n in enumerate(layout.arena_rows)]
                arenas = batcher._run(graph, layout, steps, every_row, stats)
            else:
                # Inference: the arenas themselves (single-assignment, never reused), not a copy.
                arenas = allocate_arenas(graph, layout)
                run_inference(steps, arenas, stats if batcher.profile else None)
            stats.execute_s += time.perf_counter() - start
        finally:
            slot.rec = self.rec
        self.used_sids.update(graph.used_sids.tolist())
        self.rounds[id(rec.graph)] = RoundResult(rec.graph, layout.value_row, graph.value_aval_id, arenas)
        fs = self.fiber_stats
        fs.rounds += 1
        fs.round_batches.append(len(schedule))
        fs.round_nodes.append(graph.num_nodes)
        stats.nodes += graph.num_nodes
        stats.values += graph.num_values
        stats.batches += len(schedule)
        stats.op_types = max(stats.op_types, len(graph.used_sids))
        for name, value in vars(counts).items():
            setattr(stats, name, getattr(stats, name) + value)

    def _resolve_stale_immediates(self, imms: list) -> None:
        """Each immediate that is a lazy value of an earlier round becomes its concrete row
        (NOTE: [Values across rounds]): what the executor reads as a tensor operand."""
        rounds = self.rounds
        graph = value = None
        for i, x in enumerate(imms):
            if type(x) is _LazyValue:
                if x.graph is not graph:        # runs of one round: a decoder's states, its memory
                    graph = x.graph
                    value = rounds[id(graph)].value
                imms[i] = value(x.vid)

    def stale_operand(self, values: list) -> "tuple[torch.Tensor, np.ndarray] | list":
        """NOTE: [Stale operand lists] In inference a round's immediates keep its stale lazy values
        (NOTE: [Values across rounds]) until the executor reads them, one operand list at a time
        (runtime/executor.py ``_tensor_operand``): a list that is rows of one arena of one earlier
        round (a decoder's states, its memory) is that arena and its row numbers, found by two numpy
        lookups, with no row view made or looked up per value. Anything else (values of several rounds
        or arenas, mixed with concrete tensors) comes back as the list of concrete tensors, each stale
        value its tagged row view, as the training path resolves them all before the flush."""
        try:
            graphs = set(map(id, map(_GRAPH_OF, values)))
        except AttributeError:          # a concrete tensor among them
            graphs = None
        if graphs is not None and len(graphs) == 1:
            rr = self.rounds.get(graphs.pop())
            if rr is not None and rr.graph is values[0].graph:
                found = rr.rows(list(map(_VID_OF, values)))
                if found is not None:
                    return rr.arenas[found[0]], found[1]
        return [self.resolve_stale(v, "an operand") if type(v) is _LazyValue else v for v in values]

    def _collect_results(self) -> list:
        """Per-instance results; each (round, arena) holding results is read with one index_select,
        or, when the results are that whole arena in order (inference), as views of it."""
        wanted: dict[tuple[int, int], list[int]] = {}
        where = []
        for leaves, _ in self.outputs:
            for leaf in leaves:
                if type(leaf) is _LazyValue:
                    rr = self._round_of(leaf)
                    key = (id(rr.graph), rr.value_arena[leaf.vid])
                    wanted.setdefault(key, []).append(rr.value_row[leaf.vid])
                    where.append(key)
        rows = {}
        copy = torch.is_grad_enabled()
        for key, idx in wanted.items():
            arena = self.rounds[key[0]].arenas[key[1]]
            if copy or idx != list(range(len(arena))):
                arena = arena.index_select(0, torch.tensor(idx, device=self.device))
            rows[key] = iter(arena.unbind(0))
        places = iter(where)
        results = []
        for leaves, rebuild in self.outputs:
            vals = [next(rows[next(places)]) if type(leaf) is _LazyValue else leaf for leaf in leaves]
            results.append(rebuild(vals))
        return results

    def _round_of(self, value) -> RoundResult:
        rr = self.rounds.get(id(value.graph))
        if rr is None or rr.graph is not value.graph:
            raise PhalanxError(f"{value!r} belongs to a finished phalanx run")
        return rr

    # *** the front end's hooks (frontend/recorder.py force_value / resolve_stale) ***
    def force(self, value, what: str) -> torch.Tensor:
        """The concrete (detached) tensor of a lazy value. Inside a fiber whose value is not computed
        yet, this suspends the instance until the hub has flushed (NOTE: [Lazy fibers])."""
        if value.graph is self.rec.graph:
            self.suspend()
        return self._round_of(value).data(value.vid)

    def item(self, value):
        """``force(value).item()``, suspending the same way."""
        if value.graph is self.rec.graph:
            self.suspend()
        return self._round_of(value).item(value.vid)

    def resolve_stale(self, value, name: str) -> torch.Tensor:
        """A lazy value of an already flushed round, as the concrete tensor a later round reads
        (NOTE: [Values across rounds]). Raises if the value is from a finished run."""
        graph = value.graph
        rr = self.rounds.get(id(graph))
        if rr is None or rr.graph is not graph:
            raise PhalanxError(f"{name}: got a lazy value from a finished phalanx run")
        return rr.value(value.vid)

