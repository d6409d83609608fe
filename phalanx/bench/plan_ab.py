"""Same-process A/B of the plan stage (``plan_layout`` + ``build_steps``) of two phalanx checkouts.

Each checkout records the same mini-batch of a workload (``cells=True``, inference; a workload
with fibers, ``nmt``, keeps every round's graph), schedules it, and then the plan stage of both
runs on its own graphs, interleaved rep by rep (CPU time, ``time.process_time``). It prints ms per
flush and us per batch (min and median over reps), the split between layout and steps, the
median of the paired ratios, and whether both checkouts planned exactly the same layouts, steps
and counts. The base checkout is loaded as in bench/ab.py (``load_base``).

    python -m phalanx.bench.plan_ab DIR [treelstm tagger lattice nmt] [--reps 30]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import statistics
import time

import torch

import phalanx
from phalanx.bench.ab import load_base

WORKLOADS = {
    "treelstm": lambda w: w.treelstm(64, 64, 2),
    "tagger": lambda w: w.tagger(64, 256, 2),
    "lattice": lambda w: w.lattice_gru_synthetic(64, 256, 2),
    "nmt": lambda w: w.nmt(8, 256, 1),
}


def flushes(package, name: str, sizes: dict) -> list:
    """(graph, schedule) of every flush of the workload's first mini-batch, recorded by ``package``."""
    workload = WORKLOADS[name](importlib.import_module(package.__name__ + ".bench.workloads"))
    model = workload.model.eval()
    if sizes.get(name):
        workload.batches[0] = workload.batches[0][:sizes[name]]
    batcher = package.Batcher(workload.phalanx_fn(model, False), cells=True)
    if not workload.decides:
        graph = batcher.record(workload.batches[0])
        return [(graph, batcher.policy.schedule(graph))]
    found = []
    plan = batcher._plan

    def keep(graph, stats):
        out = plan(graph, stats)
        found.append((dataclasses.replace(graph, imms=list(graph.imms)), out[0]))   # imms: reused by the next round
        return out

    batcher._plan = keep
    with torch.no_grad():
        batcher(workload.batches[0])
    return found


def _stage(package):
    layout = importlib.import_module(package.__name__ + ".memory.layout")
    executor = importlib.import_module(package.__name__ + ".runtime.executor")
    return layout.plan_layout, executor.build_steps


def plan_seconds(package, cases) -> tuple[float, float]:
    """CPU seconds of the layouts and of the steps of every flush in ``cases``."""
    plan_layout, build_steps = _stage(package)
    in_layout = in_steps = 0.0
    for graph, schedule in cases:
        start = time.process_time()
        layout = plan_layout(graph, schedule)
        middle = time.process_time()
        build_steps(graph, schedule, layout)
        in_layout, in_steps = in_layout + middle - start, in_steps + time.process_time() - middle
    return in_layout, in_steps


def _plain(x):
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.tolist() if x.dim() <= 1 else float(x.double().sum()))
    if isinstance(x, (list, tuple)):
        return tuple(_plain(y) for y in x)
    return x if isinstance(x, (int, float, str, bool, type(None))) else str(x)


def digest(package, cases) -> list:
    """Everything the plan stage decided, as plain data (comparable across checkouts)."""
    plan_layout, build_steps = _stage(package)
    out = []
    for graph, schedule in cases:
        layout = plan_layout(graph, schedule)
        steps, counts = build_steps(graph, schedule, layout)
        out.append((layout.value_row.tolist(), layout.arena_rows.tolist(), [b.tolist() for b in layout.batches],
                    sorted(vars(counts).items()),
                    [(s.size, _plain(s.operands), _plain(s.outputs), s.insts.tolist(), _plain(s.fused),
                      _plain(s.whole), s.joint) for s in steps]))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="directory holding the base checkout's phalanx package")
    parser.add_argument("workloads", nargs="*", help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--instances", type=int, default=0, help="cut the mini-batch to this many (0: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    torch.set_num_threads(1)
    base, _ = load_base(args.base)
    for name in args.workloads or list(WORKLOADS):
        sizes = {name: args.instances}
        cases = {"base": (base, flushes(base, name, sizes)), "this": (phalanx, flushes(phalanx, name, sizes))}
        same = digest(*cases["base"]) == digest(*cases["this"])
        times = {key: [] for key in cases}
        for _ in range(args.reps):
            for key, (package, found) in cases.items():
                times[key].append(plan_seconds(package, found))
        found = cases["this"][1]
        rounds, batches = len(found), sum(len(s) for _, s in found)
        print(f"{name}: {rounds} flush(es), {batches} batches, {sum(g.num_nodes for g, _ in found)} nodes; "
              f"same layouts, steps and counts: {same}")
        for key, split in times.items():
            total = [a + b for a, b in split]
            least, median = min(total) * 1e3 / rounds, statistics.median(total) * 1e3 / rounds
            per_batch = min(total) * 1e6 / max(batches, 1)
            layout, steps = min(a for a, _ in split) * 1e3 / rounds, min(b for _, b in split) * 1e3 / rounds
            print(f"  {key:5s} {least:7.3f} ms/flush (median {median:.3f}), {per_batch:6.1f} us/batch; "
                  f"layout {layout:.3f}, steps {steps:.3f} ms/flush")
        pairs = [sum(b) / max(sum(t), 1e-9) for b, t in zip(times["base"], times["this"], strict=True)]
        print(f"  paired base / this: median x{statistics.median(pairs):.2f} over {len(pairs)} reps")


if __name__ == "__main__":
    main()
