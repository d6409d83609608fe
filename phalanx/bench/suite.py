"""One benchmark run of a workload (``run_workload``: implementations side by side, policies'
schedules, optional peers) and the whole zoo (``run_all``: every registered workload at several
batch sizes), as JSON-ready payloads for tables (bench/report.py) and plots (bench/plots.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from . import harness, report
from .workloads import WORKLOADS, bench_batches, design_hidden


@dataclass
class Settings:
    """What one ``phalanx bench`` run times. ``hidden=None``: each model's size from DESIGN
    (workloads.design_hidden); ``batches=None``: each model's count (workloads.bench_batches).
    ``eager_repeats``: rounds the per-instance loops (eager, no-fibers) are timed in (None: all).
    ``fsm_seconds`` / ``fsm_episodes``: the budget of each fsm policy's training on held-out
    mini-batches (fsm_train.train_table); the payload says how it stopped."""

    hidden: int | None = None
    batch_sizes: tuple[int, ...] = (8, 64)
    batches: int | None = None
    repeats: int = 3
    policies: tuple[str, ...] = ("depth", "agenda", "fsm")
    plans: tuple = (False,)
    plan_objective: str = "bytes"
    cells: tuple[bool, ...] = (True,)
    reuse: tuple = (False,)          # False, True (recordings) or "plans" (recordings and plans)
    train: bool = False
    seed: int = 0
    threads: int = 1
    peers: tuple[str, ...] = ()
    policy_file: str | None = None
    eager_repeats: int | None = 1
    fsm_seconds: float | None = 10.0
    fsm_episodes: int = 1000
    models: tuple[str, ...] = field(default_factory=lambda: tuple(WORKLOADS))

    @classmethod
    def quick(cls, **overrides) -> "Settings":
        """About a minute for the whole zoo on one core: small hidden size, one timed mini-batch."""
        return cls(**{"hidden": 64, "batch_sizes": (8, 32), "batches": 1, "repeats": 2, "fsm_seconds": 1.0,
                      **overrides})

    def hidden_of(self, model: str) -> int:
        return self.hidden if self.hidden is not None else design_hidden(model)

    def batches_of(self, model: str) -> int:
        return self.batches if self.batches is not None else bench_batches(model)


def progress_units(settings: Settings, model: str) -> int:
    """Steps ``run_workload`` reports for one batch size (warm-ups and timed steps, peers included),
    at most: a model without fsm (fibers) or with a per-instance baseline (no-fibers) takes fewer."""
    impls = 1 + len(settings.policies) * len(settings.plans) * len(settings.cells) * len(settings.reuse) + len(_peer_strategies(settings))
    eager = min(settings.repeats, settings.repeats if settings.eager_repeats is None else settings.eager_repeats)
    batches = settings.batches_of(model)
    return impls * (1 + settings.repeats * batches) + 1 + eager * batches


def _peer_strategies(settings: Settings) -> list[int]:
    return [1, 2, 3] if "dynet" in settings.peers and not settings.train else []


def run_workload(model: str, batch_size: int, settings: Settings,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Payload of one model at one batch size: ``rows`` (one per implementation, peers included,
    all timed round-robin in one run), ``schedules`` (batches per policy vs the bound), ``notes``."""
    hidden = settings.hidden_of(model)
    workload = WORKLOADS[model](batch_size, hidden, settings.batches_of(model), settings.seed)
    payload = {"model": model, "hidden": hidden, "batch_size": batch_size, "train": settings.train,
               "batches": settings.batches_of(model), "repeats": settings.repeats,
               "eager_repeats": settings.eager_repeats,
               "rows": [], "schedules": [], "notes": [], "policy_training": {}}
    if not workload.batches:
        payload["notes"].append(f"not enough {model} instances for one mini-batch of {batch_size}")
        return payload
    names = list(settings.policies)
    if workload.decides and "fsm" in names:
        # Models that decide on their own values (fibers) record one graph per flush round, not per
        # mini-batch: the fsm policy has nothing to train on (nor the schedules table to compare).
        names.remove("fsm")
        payload["notes"].append(f"{model} decides on its own values (fibers): fsm skipped, no schedules table")
    policies, facts = harness.resolve_policies(workload, names, settings.train, settings.policy_file, settings.seed,
                                               settings.fsm_episodes, settings.fsm_seconds)
    impls = harness.build_impls(workload, policies, settings.train, list(settings.plans), settings.plan_objective,
                                 list(settings.cells), list(settings.reuse))
    peers = start_peers(model, batch_size, settings, payload["notes"])
    try:
        harness.measure(workload, impls + peers, settings.train, settings.repeats, progress=progress,
                        loop_repeats=settings.eager_repeats)
    finally:
        for impl in peers:
            impl.peer.close()
    rows = harness.summarize(workload, impls + peers, batch_size)
    add_dynet_ratios(rows)
    schedules = [] if workload.decides else harness.schedule_rows(workload, policies, settings.train)
    if workload.decides:
        payload["notes"].append(f"{model}: 'vs manual' is vs {workload.baseline_name}; flush rounds per call: "
                                + ", ".join(f"{r['impl']} {r['rounds']:.0f}" for r in rows if "rounds" in r))
    payload.update(rows=rows, schedules=schedules, policy_training=facts)
    payload["dynet_gap"] = report.dynet_gap(payload)
    return payload


def start_peers(model: str, batch_size: int, settings: Settings, notes: list[str]) -> list[harness.Impl]:
    """One Impl per requested peer, its subprocess started and its outputs checked (all peers start
    at once). A peer that cannot run here adds one line to ``notes`` instead."""
    if "dynet" not in settings.peers:
        return []
    from ..peers import dynet_worker

    if settings.train:
        notes.append("DyNet peer: inference only (run without --train)")
        return []
    if not dynet_worker.available():
        notes.append(dynet_worker.missing_note())
        return []
    peers = [dynet_worker.DynetPeer(model, batch_size, settings.hidden_of(model), settings.batches_of(model), settings.seed,
                                    settings.threads, strategy) for strategy in _peer_strategies(settings)]
    for peer in peers:
        peer.wait_ready()
    return [harness.Impl(peer.impl, None, [], None, peer=peer) for peer in peers]


def add_dynet_ratios(rows: list[dict]) -> None:
    """``vs_dynet`` on every timed row: DyNet's best strategy's seconds over the row's."""
    dynet = [r["seconds_per_batch"] for r in rows if r["impl"].startswith("dynet") and "seconds_per_batch" in r]
    if dynet:
        for r in rows:
            if "seconds_per_batch" in r:
                r["vs_dynet"] = min(dynet) / r["seconds_per_batch"]


def run_all(settings: Settings, progress: Callable[[str, str], None] | None = None,
            done: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Payloads of every model in ``settings.models`` at every batch size; ``done(payloads so far)``
    after each (so a long run that is stopped still leaves what it measured)."""
    payloads = []
    for model in settings.models:
        for batch_size in settings.batch_sizes:
            tick = (lambda what, m=model, b=batch_size: progress(f"{m} b={b}", what)) if progress else None
            start = time.perf_counter()
            payload = run_workload(model, batch_size, settings, tick)
            payload["wall_s"] = time.perf_counter() - start
            payloads.append(payload)
            if progress:
                progress(f"{model} b={batch_size}", None)     # done: the caller may round its count up
            if done:
                done(payloads)
    return payloads
