"""Runs implementations of one workload side by side and collects comparable measurements.

Implementations are timed round-robin (eager, manual, each policy, then again), so slow drifts of
a shared, noisy machine hit all of them alike; we report the median seconds per mini-batch and
ratios between implementations measured in the same run."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..api import Batcher
from ..schedule import OptimalPolicy, lower_bound, make_policy
from ..schedule.fsm import FSMPolicy
from ..errors import PhalanxError
from .workloads import Workload


@dataclass
class Impl:
    name: str
    run: Callable[[list], object]          # one mini-batch -> results
    params: list
    optimizer: torch.optim.Optimizer | None
    batcher: Batcher | None = None
    # Another system in a subprocess (peers/): ``peer.time_batch(i)`` -> seconds or None (``peer.note``).
    peer: object | None = None
    seconds: list[float] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)   # training: the loss of every step, in order


def resolve_policies(workload: Workload, names: list[str], train: bool, policy_file: str | None = None,
                     seed: int = 0, fsm_episodes: int = 1000, fsm_seconds: float | None = None) -> tuple[list, dict]:
    """Policy objects for ``names``; ``fsm`` is loaded from ``policy_file`` or trained on the
    workload's held-out mini-batches (never on the timed ones), within ``fsm_episodes`` episodes
    and ``fsm_seconds`` seconds. Returns (policies, training facts)."""
    policies, facts = [], {}
    for name in names:
        if name != "fsm":
            policies.append(make_policy(name))
            continue
        if policy_file:
            policy = FSMPolicy.load(policy_file)
            facts = {"fsm_policy_file": policy_file}
        else:
            start = time.perf_counter()
            fn = workload.phalanx_fn(workload.model, train)
            policy = FSMPolicy.train(fn, workload.held_out or workload.batches, seed=seed, max_episodes=fsm_episodes,
                                     max_seconds=fsm_seconds)
            # Timed mini-batches may hold op types the held-out ones lack (a child-sum node with
            # more children than any held-out one): those states go greedy, counted as fallbacks.
            policy.unknown_types = "fallback"
            facts = {"fsm_training_s": time.perf_counter() - start, "fsm_training": policy.metadata,
                     "fsm_budget": {"episodes": fsm_episodes, "seconds": fsm_seconds}}
        policies.append(policy)
    return policies, facts


def schedule_rows(workload: Workload, policies: list, train: bool, optimal_max_nodes: int = 200) -> list[dict]:
    """Batches per policy over the timed mini-batches, against the lower bound and (on graphs of at
    most ``optimal_max_nodes`` nodes) the exact optimum; scheduling microseconds per node."""
    batcher = Batcher(workload.phalanx_fn(workload.model, train))
    graphs = [batcher.record(batch) for batch in workload.batches]
    nodes = sum(g.num_nodes for g in graphs)
    bound = sum(lower_bound(g) for g in graphs)
    rows = [{"policy": "lower bound", "batches": bound, "vs_bound": 1.0}]
    if all(g.num_nodes <= optimal_max_nodes for g in graphs):
        try:
            opt = sum(len(OptimalPolicy(optimal_max_nodes).schedule(g)) for g in graphs)
            rows.append({"policy": "optimal", "batches": opt, "vs_bound": opt / max(bound, 1)})
        except PhalanxError as e:
            rows.append({"policy": "optimal", "batches": None, "note": str(e)})
    else:
        rows.append({"policy": "optimal", "batches": None,
                     "note": f"skipped: graphs > {optimal_max_nodes} nodes"})
    for policy in policies:
        total = fallbacks = 0
        start = time.perf_counter()
        for g in graphs:
            total += len(policy.schedule(g))
            fallbacks += getattr(policy, "fallbacks", 0)
        seconds = time.perf_counter() - start
        row = {"policy": policy.name, "batches": total, "vs_bound": total / max(bound, 1),
               "schedule_us_per_node": 1e6 * seconds / max(nodes, 1)}
        if isinstance(policy, FSMPolicy):
            row["fallbacks"] = fallbacks
        rows.append(row)
    return rows


def make_optimizer(params) -> torch.optim.Optimizer:
    """The one optimizer every implementation steps with: plain SGD, the same update rule for dense
    gradients and for the sparse embedding gradients of the manual baselines (``torch.optim.Adam``
    would reject those), so all loss sequences stay comparable step by step."""
    return torch.optim.SGD(params, lr=0.01)


def build_impls(workload: Workload, policies: list, train: bool, plans=(False,), objective: str = "bytes",
                cells=(True,), reuse=(False,)) -> list[Impl]:
    impls = []

    def make(name, build=None, policy=None, plan=False, traced=False, reused=False):
        model = workload.copy_model()
        model.train(train)
        batcher = None
        if policy is None:
            run, owner = build(model, train)
        else:
            batcher = Batcher(workload.phalanx_fn(model, train), policy=make_policy(policy), plan=plan,
                              plan_objective=objective, cells=traced, reuse=bool(reused),
                              reuse_plans=reused == "plans")
            run, owner = batcher, model
        params = [p for p in owner.parameters() if p.requires_grad]
        optimizer = make_optimizer(params) if train else None
        impls.append(Impl(name, run, params, optimizer, batcher))

    make("eager", workload.eager)
    make(workload.baseline_name, workload.manual)
    for policy in policies:
        for plan in plans:
            for traced in cells:
                for reused in reuse:
                    suffix = (f"+plan:{plan}" + ("" if objective == "bytes" else f"/{objective}")) if plan else ""
                    suffix += ("" if traced else "+probe") + ("+reuse" if reused else "") + (
                        "+plans" if reused == "plans" else "")
                    make(f"phalanx[{getattr(policy, 'name', policy)}{suffix}]", policy=policy, plan=plan,
                         traced=traced, reused=reused)
    return impls


def step(impl: Impl, batch: list, train: bool, reduce) -> float:
    start = time.perf_counter()
    if train:
        impl.optimizer.zero_grad(set_to_none=True)
        loss = reduce(impl.run(batch))
        loss.backward()
        impl.optimizer.step()
        seconds = time.perf_counter() - start
        impl.losses.append(float(loss.detach()))
        return seconds
    with torch.no_grad():
        impl.run(batch)
    return time.perf_counter() - start


PER_INSTANCE_LOOPS = ("eager", "no-fibers")


def measure(workload: Workload, impls: list[Impl], train: bool, repeats: int, progress=None,
            loop_repeats: int | None = None) -> None:
    """Warm every implementation up on the first batch, then time ``repeats`` rounds over all batches;
    the per-instance loops (``PER_INSTANCE_LOOPS``) only in the first ``loop_repeats`` of them (None:
    all): their cost per instance does not depend on the batch, and on the slow models they would
    take most of the benchmark's time. A Batcher with ``reuse`` also sees every other batch once,
    without gradients (no optimizer step, so its losses stay comparable): its timed rounds are the
    epochs after the first, where every instance replays its recording."""
    for impl in impls:
        if impl.peer is not None:
            impl.peer.time_batch(0)
        else:
            step(impl, workload.batches[0], train, workload.reduce)
            if getattr(impl.batcher, "reuse", None) is not None:
                with torch.no_grad():
                    for batch in workload.batches[1:]:
                        impl.batcher(batch)
        if progress:
            progress(f"warm-up {impl.name}")
    for round_ in range(repeats):
        for b, batch in enumerate(workload.batches):
            for impl in impls:
                if impl.name in PER_INSTANCE_LOOPS and loop_repeats is not None and round_ >= loop_repeats:
                    continue
                if impl.peer is not None:
                    seconds = impl.peer.time_batch(b)
                    if seconds is not None:
                        impl.seconds.append(seconds)
                else:
                    impl.seconds.append(step(impl, batch, train, workload.reduce))
                if impl.batcher is not None:
                    impl.stats.append(impl.batcher.stats.as_dict())
                if progress:
                    progress(impl.name)


def paired_ratio(base: list, this: list) -> "float | None":
    """Median over timed steps of base / this, each pair measured back to back on the same
    mini-batch (``measure`` runs the implementations round-robin): a machine whose speed drifts
    moves both sides of a pair alike, so this is steadier than the ratio of the two medians.
    None when the two were not timed step for step (per-instance loops skip later rounds)."""
    if not base or len(base) != len(this):
        return None
    return statistics.median(b / t for b, t in zip(base, this, strict=True))


def summarize(workload: Workload, impls: list[Impl], batch_size: int) -> list[dict]:
    rows = []
    base = {impl.name: statistics.median(impl.seconds) for impl in impls if impl.seconds}
    manual = next((impl for impl in impls if impl.name == workload.baseline_name), None)
    for impl in impls:
        note = getattr(impl.peer, "note", None)
        if note is not None:            # a peer that failed: its note, and no times even if some ran
            rows.append({"impl": impl.name, "note": note})
            continue
        seconds = base[impl.name]
        row = {"impl": impl.name, "seconds_per_batch": seconds, "instances_per_s": batch_size / seconds,
               "vs_eager": base["eager"] / seconds, "vs_manual": base[workload.baseline_name] / seconds,
               "vs_manual_paired": paired_ratio(manual.seconds if manual else [], impl.seconds),
               "samples": len(impl.seconds)}
        if impl.losses:
            # Same weights, batches and SGD steps: every implementation's loss sequence must agree.
            row["losses"] = impl.losses
        if impl.stats:
            keys = ("nodes", "batches", "lower_bound", "operand_lists", "in_place", "gathers", "gather_bytes",
                    "output_blocks", "scattered_outputs", "record_s", "schedule_s", "plan_s", "execute_s",
                    "backward_s", "record_us_per_node", "reused", "plan_reused")
            row.update({k: statistics.median(s[k] for s in impl.stats) for k in keys})
            if impl.stats[0].get("fibers") is not None:     # flush rounds per call (runtime/fibers.py)
                row["rounds"] = statistics.median(s["fibers"]["rounds"] for s in impl.stats)
        row.update(getattr(impl.peer, "facts", {}))
        rows.append(row)
    return rows
