"""Ablation of the ahead-of-time cell analysis: the same workload with each optimization switched
off on its own, timed round-robin in one run against ``manual``.

``phalanx ablation treelstm tagger lattice_gru_synthetic --hidden 64 256`` prints one table per
(model, hidden size): seconds per mini-batch, each variant's ratio to ``manual`` and to the variant
with every optimization on (``all``: above 1.00x means that optimization pays), batches and nodes
(the input split adds nodes and batches), and the time split.
"""
from __future__ import annotations

import statistics
import time

from rich.console import Console
from rich.table import Table

from ..api import Batcher
from ..cells.options import CellOptions
from ..schedule import make_policy
from . import harness
from .workloads import WORKLOADS

# name -> Batcher(cells=...): every optimization, each one off, no analysis at all (probe-checked kernels).
VARIANTS = {
    "all": CellOptions(),
    "no-split": CellOptions(split=False),
    "no-hoist": CellOptions(hoist=False),
    "no-merge": CellOptions(merge=False),
    "no-inplace": CellOptions(inplace=False),
    "dense-grads": CellOptions(sparse_grads=False),
    "no-defer": CellOptions(defer_grads=False),
    "no-reduce": CellOptions(reduce_ragged=False),
    "no-distinct": CellOptions(distinct_rows=False),
    "no-group": CellOptions(group=False),
    "all-off": CellOptions.all_off(),
    "untraced": False,
}


def run_ablation(model: str, hidden: int, batch_size: int = 64, train: bool = False, batches: int = 4,
                 repeats: int = 3, policy: str = "depth", variants=tuple(VARIANTS), seed: int = 0) -> dict:
    """One payload: a row per variant (and ``manual``), timed round-robin on the same mini-batches."""
    workload = WORKLOADS[model](batch_size, hidden, batches, seed)
    impls = []

    def add(name, cells):
        m = workload.copy_model()
        m.train(train)
        if cells is None:
            run, owner, batcher = *workload.manual(m, train), None
        else:
            batcher = Batcher(workload.phalanx_fn(m, train), policy=make_policy(policy), cells=cells)
            run, owner = batcher, m
        params = [p for p in owner.parameters() if p.requires_grad]
        impls.append(harness.Impl(name, run, params, harness.make_optimizer(params) if train else None, batcher))

    add(workload.baseline_name, None)
    for name in variants:
        add(name, VARIANTS[name])
    start = time.perf_counter()
    harness.measure(workload, impls, train, repeats)
    base = {impl.name: statistics.median(impl.seconds) for impl in impls}
    rows = []
    for impl in impls:
        row = {"variant": impl.name, "seconds_per_batch": base[impl.name],
               "vs_manual": base[workload.baseline_name] / base[impl.name]}
        if impl.batcher is not None:
            row["vs_all"] = base.get("all", base[impl.name]) / base[impl.name]
            for key in ("nodes", "batches", "record_s", "schedule_s", "plan_s", "execute_s", "backward_s"):
                row[key] = statistics.median(s[key] for s in impl.stats)
        rows.append(row)
    return {"model": model, "hidden": hidden, "batch_size": batch_size, "train": train, "policy": policy,
            "repeats": repeats, "batches": batches, "wall_s": time.perf_counter() - start, "rows": rows}


def table(payload: dict) -> Table:
    mode = "training" if payload["train"] else "inference"
    t = Table(title=f"{payload['model']} hidden {payload['hidden']} batch {payload['batch_size']} {mode} "
                    f"({payload['policy']}): cell optimizations off one at a time", title_justify="left")
    for col in ("variant", "ms/batch", "vs manual", "vs all", "batches", "nodes", "record", "execute", "backward"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in payload["rows"]:
        ms = lambda k: f"{1e3 * r[k]:.1f}" if k in r else "-"  # noqa: E731
        t.add_row(r["variant"], f"{1e3 * r['seconds_per_batch']:.1f}", f"{r['vs_manual']:.2f}x",
                  f"{r['vs_all']:.2f}x" if "vs_all" in r else "-", str(int(r.get("batches", 0))) if "batches" in r else "-",
                  str(int(r["nodes"])) if "nodes" in r else "-", ms("record_s"), ms("execute_s"),
                  ms("backward_s") if payload["train"] else "-")
    return t


def print_tables(payloads: list[dict], console: Console | None = None) -> None:
    console = console or Console(width=100)
    for p in payloads:
        console.print(table(p))
