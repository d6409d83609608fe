"""``explain``: what the scheduler did with one (small) mini-batch, drawn and in text.

The drawing (PNG or SVG by the file's suffix, matplotlib, our own layout) has two panels: the
recorded graph, one row per depth and one color per batch, and the timeline of batches (size per
batch, colored as in the graph, hatched where an operand list was gathered) against the lower
bound. The text says the same: op types, the batches level by level, the timeline, and the
diagnosis (debug/diagnose.py) ranked by the time each finding costs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..memory.layout import plan_layout
from ..memory.planner import plan_memory
from ..runtime.executor import GATHER, build_steps
from ..schedule.bound import chain_lengths, lower_bound
from .diagnose import Finding, diagnose

MAX_TEXT_BATCHES = 80     # longer timelines are cut in the text (the drawing shows all)


@dataclass
class Explanation:
    """What ``explain`` found. ``str(explanation)`` is the text form; ``findings`` the diagnosis."""

    graph: Any
    schedule: Any
    steps: list
    bound: int
    stats: Any
    findings: list[Finding] = field(default_factory=list)

    @property
    def batch_gathers(self) -> list[int]:
        return [sum(1 for kind, _, _ in step.operands if kind == GATHER) for step in self.steps]

    def type_rows(self) -> list[dict]:
        """Per op type: nodes, batches it ran in, its own lower bound (longest chain), batching mode."""
        types, table = chain_lengths(self.graph) if self.graph.num_nodes else (np.zeros(0, np.int64), None)
        sids = np.asarray(self.schedule.sids, dtype=np.int64)
        rows = []
        for j, sid in enumerate(types.tolist()):
            sig = self.graph.sigs[sid]
            rows.append({"sid": sid, "name": sig.name, "path": sig.path, "shapes": ", ".join(map(repr, sig.in_avals)),
                         "nodes": int((self.graph.node_sig == sid).sum()), "batches": int((sids == sid).sum()),
                         "bound": int(table[:, j].max()),
                         "mode": sig.kernel.mode if sig.kernel is not None else "-"})
        return rows

    def text(self) -> str:
        g, sched = self.graph, self.schedule
        lines = [f"{self.stats.instances} instances, {g.num_nodes} nodes, {len(g.used_sids)} op types: "
                 f"{len(sched)} batches with policy `{sched.policy}`, lower bound {self.bound}"]
        lines.append("\nop types (nodes, batches vs that type's own bound, batching mode):")
        for r in self.type_rows():
            at = f" @{r['path']}" if r["path"] else ""
            lines.append(f"  t{r['sid']:<3d} {r['nodes']:5d} nodes {r['batches']:4d} batches (bound {r['bound']:3d}) "
                         f"{r['mode']:6s} {r['name']}{at} ({r['shapes']})")
        if self.stats.per_op:
            lines.append("\nwhere the time goes (profiled call, per op; ms forward / backward):")
            for name, r in sorted(self.stats.per_op.items(), key=lambda kv: -kv[1]["forward_s"] - kv[1]["backward_s"]):
                lines.append(f"  {1e3 * r['forward_s']:8.2f} / {1e3 * r['backward_s']:8.2f} ms  {r['batches']:4d} batches "
                             f"{r['nodes'] / max(r['batches'], 1):6.1f} nodes/batch  {name}")
        lines.append("\ngraph by depth (batch: nodes at this depth):")
        batch_of = _batch_of(g, sched)
        for d in range(int(g.node_depth.max()) + 1 if g.num_nodes else 0):
            at = np.flatnonzero(g.node_depth == d)
            ids, counts = np.unique(batch_of[at], return_counts=True)
            cells = " ".join(f"b{b}:{c}" for b, c in zip(ids.tolist(), counts.tolist(), strict=True))
            lines.append(f"  depth {d:3d}: {len(at):4d} nodes  {cells}")
        lines.append(f"\ntimeline ({len(sched)} batches, lower bound {self.bound}):")
        gathers = self.batch_gathers
        for i, (nodes, sid) in enumerate(zip(sched.batches, sched.sids, strict=True)):
            if i == MAX_TEXT_BATCHES:
                lines.append(f"  ... {len(sched) - i} more batches")
                break
            lines.append(f"  b{i:<4d} x{len(nodes):<4d} gathers {gathers[i]}  t{sid:<3d} {g.sigs[sid].name}")
        lines.append("\ndiagnosis, most expensive first:" if self.findings else "\ndiagnosis: nothing to report")
        lines += [f"  {i + 1}. {f}" for i, f in enumerate(self.findings)]
        return "\n".join(lines)

    __str__ = text

    def draw(self, path: str | Path) -> Path:
        from .drawing import draw

        return draw(self, Path(path))


def _batch_of(graph, schedule) -> np.ndarray:
    batch_of = np.full(graph.num_nodes, -1, dtype=np.int64)
    for i, nodes in enumerate(schedule.batches):
        batch_of[nodes] = i
    return batch_of


def explain(batcher, instances, out: str | Path | None = None, *, train: bool = False,
            reduce: Callable | None = None) -> Explanation:
    """Run ``batcher`` on ``instances`` twice (the first call warms up: batching probes, a learned
    policy's training), profiling the second, then record and schedule them once more and return
    the Explanation; ``out`` (.png or .svg) also draws it. With ``train``, ``reduce(results)`` is the
    loss whose backward is profiled too. Runs in the caller's grad mode."""
    instances = list(instances)
    profile = batcher.profile
    batcher.profile = True
    try:
        for _ in range(2):
            batcher.stats.per_op.clear()
            results = batcher(instances)
            if train:
                reduce(results).backward()
    finally:
        batcher.profile = profile
    stats = batcher.stats
    graph = batcher.record(instances)
    schedule = batcher.policy.schedule(graph)
    if batcher.plan:
        layout, _ = plan_memory(graph, schedule, batcher.plan, batcher.plan_objective)
    else:
        layout = plan_layout(graph, schedule)
    steps, _ = build_steps(graph, schedule, layout)
    bound = lower_bound(graph)
    findings = diagnose(graph, schedule, steps, layout.arena_rows, bound, stats.per_op)
    explanation = Explanation(graph, schedule, steps, bound, stats, findings)
    if out is not None:
        explanation.draw(out)
    return explanation
