"""Entry points of spawned training processes, and the 1 vs N process throughput measurement.

``steps_worker`` trains a fixed number of steps as one rank of a local gloo group and rank 0 writes
the parameters and the timed seconds to a file: the data-parallel equivalence test compares those
parameters with a single-process run, and ``measure_throughput`` times the same global batches
with 1 and with N processes.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

from .distributed import init_local, shutdown, spawn
from .loop import TrainConfig, Trainer
from .tasks import TASKS


def steps_worker(rank: int, world_size: int, port: int, configs: list[dict[str, Any]], warmup: int, steps: int,
                 result_path: str) -> None:
    """For each config in turn: train ``warmup`` untimed then ``steps`` timed steps (no dev
    evaluation); rank 0 saves a list of ``{"params", "seconds", "examples"}`` to ``result_path``.
    (Several configs share one process start, which costs more than a tiny run.)"""
    ctx = init_local(rank, world_size, port)
    results = []
    try:
        for config in configs:
            cfg = TrainConfig(**config)
            torch.set_num_threads(cfg.threads)
            trainer = Trainer(TASKS[cfg.model](cfg.max_sentences), cfg, ctx)
            trainer.train_steps(warmup, evaluate=False)
            if ctx.distributed:
                dist.barrier()
            start = time.perf_counter()
            trainer.train_steps(steps, evaluate=False)
            if ctx.distributed:
                dist.barrier()
            seconds = time.perf_counter() - start
            params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            results.append({"params": params, "seconds": seconds, "examples": steps * cfg.batch_size})
        if ctx.is_main:
            torch.save(results, result_path)
    finally:
        shutdown(ctx)


def run_steps(configs: list[TrainConfig], world_size: int, steps: int, warmup: int = 0,
              timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """``steps_worker`` in ``world_size`` fresh local processes; rank 0's results, one per config."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.pt")
        spawn(steps_worker, world_size, ([vars(c).copy() for c in configs], warmup, steps, path), timeout_s=timeout_s)
        return torch.load(path, weights_only=True)


def measure_throughput(config: TrainConfig, world_sizes=(1, 2), steps: int = 20, warmup: int = 3, rounds: int = 2,
                       timeout_s: float = 590.0) -> list[dict[str, Any]]:
    """Training throughput on the same global batches with each number of processes (each process
    uses ``config.threads`` threads). ``rounds`` alternate the order (1, 2, then 2, 1, ...) so a
    shared machine's load drifts over both; each row keeps its fastest round. Rows: processes,
    seconds (fastest round), sentences/s, every round's seconds, speedup vs the first row."""
    seconds: dict[int, list[float]] = {w: [] for w in world_sizes}
    examples = steps * config.batch_size
    for r in range(rounds):
        for world_size in (world_sizes if r % 2 == 0 else tuple(reversed(world_sizes))):
            seconds[world_size].append(run_steps([config], world_size, steps, warmup, timeout_s)[0]["seconds"])
    rows = [{"processes": w, "threads_per_process": config.threads, "steps": steps, "global_batch": config.batch_size,
             "seconds": min(seconds[w]), "rounds_s": seconds[w], "sentences_per_s": examples / min(seconds[w])}
            for w in world_sizes]
    for row in rows:
        row["speedup"] = row["sentences_per_s"] / rows[0]["sentences_per_s"]
    return rows
