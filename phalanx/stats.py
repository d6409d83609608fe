"""Stats of one phalanx call, filled in as the pipeline runs (backward time arrives later)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass


@dataclass
class ReadCounts:
    """How a flush's batches read operands and write outputs (filled by runtime/executor.build_steps)."""

    operand_lists: int = 0
    in_place: int = 0
    gathers: int = 0
    gather_bytes: int = 0
    output_blocks: int = 0
    scattered_outputs: int = 0


@dataclass
class Stats(ReadCounts):
    """What the last ``Batcher`` call did.

    ``batches`` is the number of batched kernel calls; ``lower_bound`` the fewest any schedule could
    have (schedule/bound.py). ``operand_lists`` counts (batch, lazy operand) pairs, ``in_place`` those
    read as a slice view, ``gathers`` those read with one ``index_select`` (``gather_bytes`` copied).
    Times are seconds; ``backward_s`` is filled in when ``loss.backward()`` runs.
    """

    policy: str = ""
    instances: int = 0
    nodes: int = 0
    values: int = 0
    op_types: int = 0
    batches: int = 0
    record_s: float = 0.0
    schedule_s: float = 0.0
    plan_s: float = 0.0
    execute_s: float = 0.0
    backward_s: float = 0.0
    training: bool = False
    reused: int = 0               # instances replayed from an earlier call (Batcher(reuse=...))
    plan_reused: bool = False     # the whole call's plan came from an earlier call (NOTE: [Plan reuse])
    # Fibers (runtime/fibers.FiberStats): flush rounds, decisions per instance, batches / nodes per round.
    fibers: object = None
    # Filled only by Batcher(profile=True): per op type, batches / nodes / forward and backward seconds.
    per_op: dict = field(default_factory=dict)

    def add_op_time(self, name: str, nodes: int, seconds: float, phase: str = "forward_s") -> None:
        row = self.per_op.setdefault(name, {"batches": 0, "nodes": 0, "forward_s": 0.0, "backward_s": 0.0})
        if phase == "forward_s":
            row["batches"] += 1
            row["nodes"] += nodes
        row[phase] += seconds

    # The lower bound is a report, not work the batch needs: computed on first read (schedule/bound.py).
    _graphs: list = field(default_factory=list, repr=False, compare=False)
    _lower_bound: int | None = field(default=None, repr=False, compare=False)

    def add_graph(self, graph) -> None:
        """A flushed graph (fibers: one per round) whose lower bound counts toward ``lower_bound``."""
        self._graphs.append(graph)
        self._lower_bound = None

    @property
    def lower_bound(self) -> int:
        if self._lower_bound is None:
            from .schedule.bound import lower_bound

            self._lower_bound = sum(lower_bound(g) for g in self._graphs)
            self._graphs = []
        return self._lower_bound

    @property
    def record_us_per_node(self) -> float:
        return 1e6 * self.record_s / self.nodes if self.nodes else 0.0

    def as_dict(self) -> dict:
        # Field by field: ``asdict(self)`` would deep-copy ``_graphs`` too (fibers: every round's
        # graph and what it references, gigabytes on NMT) only for the copy to be dropped.
        out = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if is_dataclass(value):
                value = asdict(value)
            elif f.name == "per_op":
                value = {name: dict(row) for name, row in value.items()}
            out[f.name] = value
        out["lower_bound"] = self.lower_bound
        out["record_us_per_node"] = self.record_us_per_node
        return out

    def __str__(self) -> str:
        return (f"{self.instances} instances, {self.nodes} nodes, {self.batches} batches "
                f"(lower bound {self.lower_bound}, policy {self.policy}), {self.in_place}/{self.operand_lists} "
                f"operand lists in place, {self.gathers} gathers ({self.gather_bytes} B); record "
                f"{self.record_s * 1e3:.1f} ms ({self.record_us_per_node:.1f} us/node), schedule "
                f"{self.schedule_s * 1e3:.1f} ms, plan {self.plan_s * 1e3:.1f} ms, execute "
                f"{self.execute_s * 1e3:.1f} ms, backward {self.backward_s * 1e3:.1f} ms")
