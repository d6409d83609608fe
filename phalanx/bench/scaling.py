"""How cost scales with the mini-batch size: microseconds per instance and per recorded node for
eager, manual and phalanx policies at several batch sizes (``phalanx bench MODEL --scaling 1 8 64
256 1024``), with phalanx's time split per stage, also per node.

Each batch size is its own round-robin run (bench/harness.py) on ``ceil(instances / size)``
mini-batches of real data (at least one, at most what the data holds), so every size times about
the same number of instances. Eager costs the same per instance at every size (it never batches)
and is the slowest by far, so it is skipped above ``eager_max`` to save time."""
from __future__ import annotations

import math
import statistics
from typing import Callable

from rich.markup import escape
from rich.table import Table

from ..api import Batcher
from . import harness
from .report import _table
from .workloads import WORKLOADS

STAGES = ("record_s", "schedule_s", "plan_s", "execute_s", "backward_s")


def run_scaling(model: str, batch_sizes: list[int], hidden: int, policies: list[str], train: bool = False,
                instances: int = 256, repeats: int = 3, eager_max: int = 64, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> dict:
    """Payload: ``rows`` (one per batch size and implementation: ``us_per_instance``, ``us_per_node``,
    ``vs_manual``; phalanx rows add the median stage times per node ``<stage>_us_per_node``, batches
    and the lower bound), ``notes`` (skipped implementations, sizes the data cannot fill)."""
    payload = {"model": model, "hidden": hidden, "train": train, "batch_sizes": list(batch_sizes),
               "instances": instances, "repeats": repeats, "eager_max": eager_max, "rows": [], "notes": []}
    if any(b > eager_max for b in batch_sizes):
        payload["notes"].append(f"eager skipped above batch {eager_max} (it never batches: its cost per "
                                f"instance does not depend on the batch size)")
    for batch_size in batch_sizes:
        wanted = max(1, math.ceil(instances / batch_size))
        workload = WORKLOADS[model](batch_size, hidden, wanted, seed)
        if not workload.batches:
            payload["notes"].append(f"batch {batch_size}: not enough {model} instances for one mini-batch")
            continue
        if len(workload.batches) < wanted:
            payload["notes"].append(f"batch {batch_size}: data holds {len(workload.batches)} of {wanted} mini-batches")
        if "fsm" in policies and not workload.held_out:
            payload["notes"].append(f"batch {batch_size}: no held-out mini-batch, fsm learned on the timed ones")
        payload["rows"].extend(_measure_size(workload, batch_size, policies, train, repeats, eager_max, seed, progress))
    return payload


def _measure_size(workload, batch_size, policies, train, repeats, eager_max, seed, progress) -> list[dict]:
    resolved, _ = harness.resolve_policies(workload, policies, train, None, seed)
    impls = harness.build_impls(workload, resolved, train)
    if batch_size > eager_max:
        impls = [impl for impl in impls if impl.name != "eager"]
    recorder = Batcher(workload.phalanx_fn(workload.copy_model(), train))
    nodes = [recorder.record(batch).num_nodes for batch in workload.batches]
    tick = (lambda what: progress(f"b={batch_size} {what}")) if progress else None
    harness.measure(workload, impls, train, repeats, progress=tick)
    rows = []
    for impl in impls:
        # measure() times repeats x batches in order, so sample k ran on batch k % len(batches).
        per_node = [s / nodes[k % len(nodes)] for k, s in enumerate(impl.seconds)]
        seconds = statistics.median(impl.seconds)
        row = {"batch_size": batch_size, "impl": impl.name, "seconds_per_batch": seconds,
               "us_per_instance": 1e6 * seconds / batch_size, "us_per_node": 1e6 * statistics.median(per_node),
               "nodes_per_instance": sum(nodes) / (len(nodes) * batch_size), "samples": len(impl.seconds)}
        if impl.stats:
            for stage in STAGES:
                row[f"{stage[:-2]}_us_per_node"] = 1e6 * statistics.median(
                    s[stage] / nodes[k % len(nodes)] for k, s in enumerate(impl.stats))
            row.update({k: statistics.median(s[k] for s in impl.stats) for k in ("batches", "lower_bound")})
        rows.append(row)
    manual = next(r for r in rows if r["impl"] == "manual")
    for row in rows:
        row["vs_manual"] = manual["seconds_per_batch"] / row["seconds_per_batch"]
    return rows


def scaling_table(payload: dict) -> Table:
    """One row per batch size and implementation; fits 100 columns."""
    mode = "training" if payload["train"] else "inference"
    t = _table(f"{payload['model']} {mode}, hidden {payload['hidden']}: us per instance and per node; "
               f"phalanx stages in us per node", ["batch", "impl", "us/inst", "us/node", "vs manual",
                                                  "record", "sched", "plan", "execute"]
               + (["backward"] if payload["train"] else []))
    previous = None
    for r in payload["rows"]:
        stages = [f"{r[f'{s[:-2]}_us_per_node']:.2f}" if f"{s[:-2]}_us_per_node" in r else "-"
                  for s in STAGES[:4 + payload["train"]]]
        t.add_row(str(r["batch_size"]) if r["batch_size"] != previous else "", escape(r["impl"]),
                  f"{r['us_per_instance']:.1f}", f"{r['us_per_node']:.2f}", f"{r['vs_manual']:.2f}x", *stages)
        previous = r["batch_size"]
    if payload["notes"]:
        t.caption, t.caption_justify = escape("; ".join(payload["notes"])), "left"
    return t
