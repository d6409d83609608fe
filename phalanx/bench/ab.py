"""Same-process A/B of two phalanx checkouts on one benchmark workload, against its baseline (``manual``).

On a shared, noisy machine, timings from separate processes cannot be compared: this runs the
manual baseline, a base checkout and this checkout in ONE process, interleaved mini-batch by
mini-batch (CPU time, ``time.process_time``), and prints medians, minima, ratios to manual and each
phalanx's stage split. The base checkout is any directory holding a ``phalanx`` package (e.g.
``git archive <commit> | tar -x -C DIR``); it is copied to a temporary directory as the package
``phalanx_base`` (every import inside phalanx is relative, so both coexist).

    python -m phalanx.bench.ab DIR --hidden 64 [--model treelstm|tagger|lattice_gru_synthetic|...] [--cells] [--train] [--reps 6]
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import phalanx
from phalanx.bench import workloads as this_workloads
from phalanx.bench.harness import make_optimizer

STAGES = ("record_s", "schedule_s", "plan_s", "execute_s", "backward_s")


def load_base(directory: str):
    """The ``phalanx`` package under ``directory``, imported as ``phalanx_base``."""
    source = Path(directory) / "phalanx"
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"{source}: no phalanx package there")
    target = Path(tempfile.mkdtemp(prefix="phalanx-ab-"))
    shutil.copytree(source, target / "phalanx_base", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(target))
    return importlib.import_module("phalanx_base"), importlib.import_module("phalanx_base.bench.workloads")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="directory holding the base checkout's phalanx package")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--policy", default="depth")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--model", choices=sorted(this_workloads.WORKLOADS), default="treelstm")
    parser.add_argument("--cells", action="store_true", help="Batcher(cells=True) for both checkouts")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base, base_workloads = load_base(args.base)
    ours = this_workloads.WORKLOADS[args.model](args.batch_size, args.hidden, args.batches)
    theirs = base_workloads.WORKLOADS[args.model](args.batch_size, args.hidden, args.batches)
    impls = []      # (name, run, workload, batcher or None, optimizer)
    model = ours.copy_model().train(args.train)
    run, owner = ours.manual(model, args.train)
    impls.append(("manual", run, ours, None, owner))
    for name, package, workload in (("base", base, theirs), ("this", phalanx, ours)):
        model = workload.copy_model().train(args.train)
        options = {"cells": True} if args.cells else {}
        batcher = package.Batcher(workload.phalanx_fn(model, args.train), policy=args.policy, **options)
        impls.append((name, batcher, workload, batcher, model))
    optimizers = {name: make_optimizer([p for p in owner.parameters() if p.requires_grad])
                  for name, _, _, _, owner in impls}

    def step(name, run, workload, batch) -> float:
        start = time.process_time()
        if args.train:
            optimizers[name].zero_grad(set_to_none=True)
            workload.reduce(run(batch)).backward()
            optimizers[name].step()
        else:
            with torch.no_grad():
                run(batch)
        return time.process_time() - start

    for name, run, workload, _, _ in impls:         # warm-up: probes, first-call costs
        step(name, run, workload, workload.batches[0])
    seconds = {name: [] for name, *_ in impls}
    stats = {name: [] for name, _, _, batcher, _ in impls if batcher is not None}
    for _ in range(args.reps):
        for i in range(len(ours.batches)):
            for name, run, workload, batcher, _ in impls:
                seconds[name].append(step(name, run, workload, workload.batches[i]))
                if batcher is not None:
                    stats[name].append(batcher.stats.as_dict())
    median = {n: statistics.median(v) for n, v in seconds.items()}
    least = {n: min(v) for n, v in seconds.items()}
    mode = "train" if args.train else "inference"
    print(f"{args.model} hidden {args.hidden}{', cells' if args.cells else ''}, batch {args.batch_size}, {mode}, policy {args.policy}, {args.reps} rounds "
          f"x {len(ours.batches)} mini-batches; ms per mini-batch (CPU time): median (min), ratio to manual")
    for name in seconds:
        line = (f"  {name:7s} {median[name] * 1e3:8.2f} ({least[name] * 1e3:7.2f})  x{median['manual'] / median[name]:.3f}"
                f" (x{least['manual'] / least[name]:.3f})")
        if name in stats:
            split = " ".join(f"{k[:-2]} {statistics.median(s[k] for s in stats[name]) * 1e3:.2f}" for k in STAGES)
            line += f"  | wall: {split}, {stats[name][0]['batches']} batches"
        print(line)
    # Paired ratios: each mini-batch's runs are adjacent in time, so load that drifts over the run
    # cancels out of their ratio; the median over pairs is steadier than a ratio of medians.
    for other in ("manual", "base"):
        pairs = [o / t for o, t in zip(seconds[other], seconds["this"], strict=True)]
        low, mid, high = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
        print(f"  paired: {other} / this  median x{mid:.3f}, quartiles x{low:.3f} .. x{high:.3f} "
              f"over {len(pairs)} mini-batches")


if __name__ == "__main__":
    main()
