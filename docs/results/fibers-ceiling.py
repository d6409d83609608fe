"""How fast can phalanx be on the fibers models? Side by side in one process, on the bench's
mini-batches and weights: eager (the model per instance), the time eager spends inside the cells
(forward hooks, in a second eager run), phalanx (depth policy), and phalanx's batched kernels alone (``profile=True``: every
batch's operand reads, kernel and output write, summed over the rounds). ``ceiling`` = eager /
phalanx kernels alone: the speedup phalanx would reach if recording, scheduling, planning and the
fibers cost nothing.

    OMP_NUM_THREADS=1 python docs/results/fibers-ceiling.py nmt berxit --batch-size 8 64
"""
import argparse
import time

import torch

from phalanx import Batcher
from phalanx.bench import workloads


def cell_timer(model):
    """Forward hooks on every cell module: seconds spent inside cells (outermost call only)."""
    spent, depth, start = [0.0], [0], [0.0]

    def pre(_m, _a):
        if depth[0] == 0:
            start[0] = time.perf_counter()
        depth[0] += 1

    def post(_m, _a, _o):
        depth[0] -= 1
        if depth[0] == 0:
            spent[0] += time.perf_counter() - start[0]

    handles = []
    for m in model.modules():
        if hasattr(type(m), "_phalanx_fn") or hasattr(m, "_phalanx_fn"):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return spent, handles


def measure(name: str, batch_size: int, repeats: int) -> dict:
    w = workloads.WORKLOADS[name](batch_size, workloads.design_hidden(name), workloads.bench_batches(name))
    model = w.model
    eager, _ = w.eager(model, False)
    fn = w.phalanx_fn(model, False)
    timed, profiled = Batcher(fn, policy="depth"), Batcher(fn, policy="depth", profile=True)
    row = {"eager": 0.0, "eager_cells": 0.0, "phalanx": 0.0, "kernels": 0.0, "rounds": 0}
    with torch.no_grad():
        for batch in w.batches:                       # warm-up: op types, probes
            timed(batch), profiled(batch)
        for batch in w.batches:
            start = time.perf_counter()
            eager(batch)
            row["eager"] += time.perf_counter() - start
            spent, handles = cell_timer(model)       # a second eager run: hooks cost a few percent
            eager(batch)
            row["eager_cells"] += spent[0]
            for h in handles:
                h.remove()
            best = best_kernels = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                timed(batch)
                best = min(best, time.perf_counter() - start)
                profiled(batch)
                best_kernels = min(best_kernels, sum(r["forward_s"] for r in profiled.stats.per_op.values()))
            row["phalanx"] += best
            row["kernels"] += best_kernels
            row["rounds"] = max(row["rounds"], timed.stats.fibers.rounds)
    n = len(w.batches)
    return {k: (v / n if k != "rounds" else v) for k, v in row.items()}


def berxit_layer_by_batch(hidden: int = 256) -> None:
    """One Berxit layer's cost per sentence, alone and in batches: what batching can gain at most."""
    from phalanx.models.berxit import Berxit

    torch.manual_seed(0)
    layer = Berxit(100, hidden).layers[0]
    print(f"\nberxit layer (hidden {hidden}): ms per sentence, alone and in batches of B padded sentences")
    print(f"{'tokens':>6} " + " ".join(f"{'B=' + str(b):>7}" for b in (1, 8, 16, 64)))
    with torch.no_grad():
        for length in (16, 32, 64):
            cells = []
            for b in (1, 8, 16, 64):
                lead = () if b == 1 else (b,)
                x, mask = torch.randn(*lead, length, hidden), torch.ones(*lead, length, dtype=torch.bool)
                layer(x, mask)
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(10):
                        layer(x, mask)
                    best = min(best, (time.perf_counter() - start) / 10)
                cells.append(f"{1e3 * best / b:7.3f}")
            print(f"{length:6d} " + " ".join(cells), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':8} {'batch':>5} {'eager ms':>9} {'in cells':>9} {'phalanx':>8} {'kernels':>8} "
          f"{'rounds':>6} {'speedup':>8} {'ceiling':>8}")
    for name in args.models:
        for bs in args.batch_size:
            r = measure(name, bs, args.repeats)
            print(f"{name:8} {bs:5d} {1e3 * r['eager']:9.1f} {1e3 * r['eager_cells']:9.1f} {1e3 * r['phalanx']:8.1f} "
                  f"{1e3 * r['kernels']:8.1f} {r['rounds']:6d} {r['eager'] / r['phalanx']:7.2f}x "
                  f"{r['eager'] / r['kernels']:7.2f}x", flush=True)
    if "berxit" in args.models:
        berxit_layer_by_batch()


if __name__ == "__main__":
    main()
