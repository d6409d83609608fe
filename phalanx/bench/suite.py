"""One benchmark run of a workload (``run_workload``: implementations side by side, policies'
schedules, optional peers) and the whole zoo (``run_all``: every registered workload at several
batch sizes), as JSON-ready payloads for tables (bench/report.py) and plots (bench/plots.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import harness
from .workloads import WORKLOADS


@dataclass
class Settings:
    hidden: int = 256
    batch_sizes: tuple[int, ...] = (8, 64)
    batches: int = 4
    repeats: int = 3
    policies: tuple[str, ...] = ("depth", "agenda", "fsm")
    plans: tuple = (False,)
    plan_objective: str = "bytes"
    train: bool = False
    seed: int = 0
    threads: int = 1
    peers: tuple[str, ...] = ()
    policy_file: str | None = None
    models: tuple[str, ...] = field(default_factory=lambda: tuple(WORKLOADS))

    @classmethod
    def quick(cls, **overrides) -> "Settings":
        """About a minute for the whole zoo on one core: small hidden size, one timed mini-batch."""
        return cls(**{"hidden": 64, "batch_sizes": (8, 32), "batches": 1, "repeats": 2, **overrides})


def progress_units(settings: Settings, model: str) -> int:
    """Steps ``run_workload`` reports for one batch size (warm-ups + timed steps + peers)."""
    impls = 2 + len(settings.policies) * len(settings.plans)
    return impls * (1 + settings.repeats * settings.batches) + len(_peer_strategies(settings))


def _peer_strategies(settings: Settings) -> list[int]:
    return [1, 2, 3] if "dynet" in settings.peers and not settings.train else []


def run_workload(model: str, batch_size: int, settings: Settings,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Payload of one model at one batch size: ``rows`` (one per implementation; peers included
    with ``vs_dynet`` ratios), ``schedules`` (batches per policy vs the bound) and ``notes``."""
    workload = WORKLOADS[model](batch_size, settings.hidden, settings.batches, settings.seed)
    payload = {"model": model, "hidden": settings.hidden, "batch_size": batch_size, "train": settings.train,
               "rows": [], "schedules": [], "notes": [], "policy_training": {}}
    if not workload.batches:
        payload["notes"].append(f"not enough {model} instances for one mini-batch of {batch_size}")
        return payload
    policies, facts = harness.resolve_policies(workload, list(settings.policies), settings.train,
                                               settings.policy_file, settings.seed)
    impls = harness.build_impls(workload, policies, settings.train, list(settings.plans), settings.plan_objective)
    harness.measure(workload, impls, settings.train, settings.repeats, progress=progress)
    rows = harness.summarize(workload, impls, batch_size)
    rows += peer_rows(model, batch_size, settings, rows, progress)
    payload.update(rows=rows, schedules=harness.schedule_rows(workload, policies, settings.train),
                   policy_training=facts)
    if "dynet" in settings.peers:
        from ..peers import dynet_worker

        if settings.train:
            payload["notes"].append("DyNet peer: inference only (run without --train)")
        elif not dynet_worker.available():
            payload["notes"].append(dynet_worker.missing_note())
    return payload


def peer_rows(model: str, batch_size: int, settings: Settings, rows: list[dict], progress=None) -> list[dict]:
    """Rows of the requested peers; adds ``vs_dynet`` (DyNet's best strategy / this) to every row."""
    strategies = _peer_strategies(settings)
    if not strategies:
        return []
    from ..peers import dynet_worker

    if not dynet_worker.available():
        return []
    found = []
    for strategy in strategies:
        found += dynet_worker.run_dynet(model, batch_size, settings.hidden, settings.batches, settings.seed,
                                        settings.repeats, settings.threads, strategies=(strategy,))
        if progress:
            progress(found[-1]["impl"])
    base = {r["impl"]: r["seconds_per_batch"] for r in rows}
    timed = [r for r in found if "seconds_per_batch" in r]
    for r in timed:
        r["vs_eager"] = base["eager"] / r["seconds_per_batch"]
        r["vs_manual"] = base["manual"] / r["seconds_per_batch"]
    if timed:
        best = min(r["seconds_per_batch"] for r in timed)
        for r in rows + timed:
            r["vs_dynet"] = best / r["seconds_per_batch"]
    return found


def run_all(settings: Settings, progress: Callable[[str, str], None] | None = None) -> list[dict]:
    """Payloads of every model in ``settings.models`` at every batch size."""
    payloads = []
    for model in settings.models:
        for batch_size in settings.batch_sizes:
            tick = (lambda what, m=model, b=batch_size: progress(f"{m} b={b}", what)) if progress else None
            payloads.append(run_workload(model, batch_size, settings, tick))
    return payloads
