"""Diagnosis of one recorded, scheduled and profiled mini-batch: what makes it batch badly, each
finding with an estimate of the time it costs per mini-batch and what to do about it.

Costs come from the profiled call (``Batcher(profile=True)`` -> ``stats.per_op``: seconds per op
name): a finding that causes ``k`` extra batches of an op costs about ``k`` times that op's
measured time per batch. Gather costs are measured by repeating the same ``index_select`` calls.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.executor import GATHER
from ..schedule.bound import chain_lengths


@dataclass
class Finding:
    """One problem: ``cost_s`` (estimated seconds per mini-batch), what happened, what to do."""

    kind: str
    cost_s: float
    message: str
    action: str

    def __str__(self) -> str:
        return f"[{1e3 * self.cost_s:7.2f} ms] {self.message}\n             -> {self.action}"


def _op_seconds(per_op: dict, name: str) -> tuple[float, int]:
    """(forward + backward seconds, batches) measured for op ``name``."""
    row = per_op.get(name)
    if not row:
        return 0.0, 0
    return row["forward_s"] + row["backward_s"], row["batches"]


def _per_batch(per_op: dict, name: str) -> float:
    seconds, batches = _op_seconds(per_op, name)
    return seconds / batches if batches else 0.0


def shape_fragmentation(graph, schedule, per_op: dict) -> list[Finding]:
    """Op types that differ only in operand shapes (one callee, many shapes): each shape is its own
    op type, so they never share a batch. Compared with the batches the op would need if all its
    shapes were one type (the lower bound of the graph with those types merged)."""
    groups: dict[tuple, list[int]] = {}
    for sid in graph.used_sids.tolist():
        sig = graph.sigs[sid]
        key = (sig.name, sig.path, frozenset(sig.in_kinds), frozenset(a.dtype for a in sig.in_avals))
        groups.setdefault(key, []).append(sid)
    findings = []
    batch_sids = np.asarray(schedule.sids, dtype=np.int64)
    for (name, path, _, _), sids in groups.items():
        operands = {(graph.sigs[s].in_kinds, graph.sigs[s].in_avals) for s in sids}
        # Two types with the same operands are different callees or static arguments that the
        # name does not tell apart (two LSTM cells without a model path): not a shape problem.
        if len(sids) < 2 or len(operands) < len(sids):
            continue
        merged_sig = graph.node_sig.copy()
        merged_sig[np.isin(merged_sig, sids)] = sids[0]
        merged = dataclasses.replace(graph, node_sig=merged_sig)
        types, table = chain_lengths(merged)
        ideal = int(table[:, int(np.flatnonzero(types == sids[0])[0])].max())
        batches = int(np.isin(batch_sids, sids).sum())
        if batches <= ideal:
            continue
        varying = _varying_dims(graph, sids)
        where = f"`{name}`" + (f" ({path})" if path else "")
        findings.append(Finding(
            "shape-fragmentation", (batches - ideal) * _per_batch(per_op, name),
            f"{where} has {len(sids)} op types that differ only in operand shapes ({varying}): "
            f"{batches} batches instead of ~{ideal}",
            f"give every instance the same shapes (pad to a few bucket lengths, or pass the varying "
            f"length as data instead of a shape)"))
    return findings


def _varying_dims(graph, sids) -> str:
    """'operand 1 dim 0: 3..17' for the operand dimensions (and counts) that vary across the types."""
    parts = []
    avals = [graph.sigs[s].in_avals for s in sids]
    counts = sorted({len(a) for a in avals})
    if len(counts) > 1:
        parts.append(f"operand count: {counts[0]}..{counts[-1]}")
    for p in range(min(len(a) for a in avals)):
        shapes = [a[p].shape for a in avals]
        if len({len(s) for s in shapes}) != 1:
            parts.append(f"operand {p} rank")
            continue
        for d in range(len(shapes[0])):
            values = sorted({s[d] for s in shapes})
            if len(values) > 1:
                parts.append(f"operand {p} dim {d}: {values[0]}..{values[-1]}")
    return "; ".join(parts[:3]) or "dtypes or ranks"


def vmap_fallbacks(graph, per_op: dict) -> list[Finding]:
    """Cells the batching probe could not run natively: they run through ``torch.func.vmap``."""
    findings = []
    seen = set()
    for sid in graph.used_sids.tolist():
        sig = graph.sigs[sid]
        kernel = sig.kernel
        if kernel is None or kernel.mode != "vmap" or sig.name in seen:
            continue
        seen.add(sig.name)
        seconds, batches = _op_seconds(per_op, sig.name)
        findings.append(Finding(
            "vmap-fallback", seconds,
            f"{sig.name} fell back to vmap: {1e3 * seconds:.2f} ms per mini-batch over {batches} batches",
            ("make it batch-polymorphic so it runs natively: index with negative dims (dim=-1), avoid "
             "reshapes that hard-code the instance's shape, or mark it @phalanx.cell(batching='native') if it is")
            if sig.name.startswith("cell") else
            "give the op negative dims (e.g. dim=-2 instead of dim=0) so it runs natively on a batch"))
    return findings


def untraced_cells(graph, per_op: dict) -> list[Finding]:
    """Cells the ahead-of-time analysis could not trace (cells/aot.py): they run probe-checked
    kernels, without hoisting, the input split or row-sparse embedding gradients."""
    findings = []
    for sid in graph.used_sids.tolist():
        sig = graph.sigs[sid]
        aot = sig.meta.get("aot")
        reduced = getattr(sig.meta.get("kernel"), "reduced_errors", None)    # a ragged op type's
        if reduced:
            reason = next(iter(reduced.values()))
            seconds, batches = _op_seconds(per_op, sig.name)
            findings.append(Finding(
                "untraced-cell", seconds,
                f"{sig.name} has no reduced form ({reason}); {1e3 * seconds:.2f} ms per mini-batch over "
                f"{batches} batches running the cell's own code on segments",
                "use the stacked ragged argument only through .sum / .mean over its stacked dim "
                "(NOTE: [Reduced ragged programs]) so the cell is traced"))
        if aot is None or not aot.errors:
            continue
        reason = next(iter(aot.errors.values()))
        seconds, batches = _op_seconds(per_op, sig.name)
        findings.append(Finding(
            "untraced-cell", seconds,
            f"{sig.name} was not traced ahead of time ({reason}); {1e3 * seconds:.2f} ms per mini-batch "
            f"over {batches} batches through a probe-checked kernel",
            "make what it reads a parameter or buffer of the cell module, and keep its body to torch ops"))
    return findings


def tiny_batches(graph, schedule, per_op: dict, max_size: int = 2, exclude=()) -> list[Finding]:
    """Many batches of one or two nodes: launch overhead with little work per launch. Batches of
    the ops in ``exclude`` (already reported as split by shape) are not counted twice."""
    sizes = np.array([len(b) if graph.sigs[sid].name not in exclude else max_size + 1
                      for b, sid in zip(schedule.batches, schedule.sids, strict=True)])
    tiny = np.flatnonzero(sizes <= max_size)
    if len(schedule) == 0 or len(tiny) < max(4, 0.3 * len(schedule)):
        return []
    names = [graph.sigs[schedule.sids[i]].name for i in tiny]
    cost = sum(_per_batch(per_op, name) for name in names)
    common = max(set(names), key=names.count)
    return [Finding(
        "tiny-batches", cost,
        f"{len(tiny)} of {len(schedule)} batches run at most {max_size} nodes (most often {common}, "
        f"{names.count(common)} times)",
        "these are long chains of dependent nodes in few instances (or types split by shape): more "
        "instances per call fill them")]


def over_bound(graph, schedule, bound: int, per_op: dict) -> list[Finding]:
    """The policy ran more batches than the lower bound: a better schedule may exist."""
    extra = len(schedule) - bound
    if extra <= 0 or extra < 0.1 * max(bound, 1):
        return []
    mean = sum(_op_seconds(per_op, n)[0] for n in per_op) / max(sum(r["batches"] for r in per_op.values()), 1)
    return [Finding(
        "over-bound", extra * mean,
        f"policy `{schedule.policy}` runs {len(schedule)} batches; the lower bound is {bound}",
        "try Batcher(policy='fsm') (learned, often at the bound) or policy='agenda'")]


def gathers(steps, arena_rows, graph, repeats: int = 3) -> list[Finding]:
    """Operand lists read with ``index_select`` instead of a slice view; cost measured by running
    the same gathers on arenas of the same size."""
    reads = [(graph.avals[arena], int(arena_rows[arena]), idx)
             for step in steps for kind, arena, idx in step.operands if kind == GATHER]
    lists = sum(1 for step in steps for kind, _, _ in step.operands if kind in (0, GATHER))
    if not reads:
        return []
    arenas = {}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for aval, rows, idx in reads:
            key = (aval, rows)
            if key not in arenas:
                arenas[key] = torch.zeros((rows, *aval.shape), dtype=aval.dtype)
            arenas[key].index_select(0, idx)
        best = min(best, time.perf_counter() - start)
    moved = sum(len(idx) * aval.nbytes for aval, _, idx in reads)
    return [Finding(
        "gathers", best,
        f"{len(reads)} of {lists} operand lists are gathered (index_select, {moved / 1024:.0f} KiB copied)",
        "Batcher(plan='auto') lays values out so more operand lists are read in place")]


def diagnose(graph, schedule, steps, arena_rows, bound: int, per_op: dict) -> list[Finding]:
    """Every finding, most expensive first."""
    split = shape_fragmentation(graph, schedule, per_op)
    split_names = {f.message.split("`")[1] for f in split}
    findings = (split + vmap_fallbacks(graph, per_op) + untraced_cells(graph, per_op) + tiny_batches(graph, schedule, per_op, exclude=split_names)
                + over_bound(graph, schedule, bound, per_op)
                + gathers(steps, arena_rows, graph))
    return sorted(findings, key=lambda f: -f.cost_s)
