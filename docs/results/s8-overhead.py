"""Is phalanx's gap to ``manual`` in the kernels or around them? Run the same workload at a tiny
hidden size (kernels nearly free: the time is the per-batch overhead of each implementation) and at
the real one, same process, interleaved mini-batch by mini-batch, CPU time (``process_time``)
medians and paired ratios. If phalanx's gap at the real size equals its gap at the tiny size, its
kernels are at parity and the gap is overhead (recording, planning, per-batch dispatch).

    OMP_NUM_THREADS=1 python docs/results/s8-overhead.py tagger --hidden 8 256 [--train] [--reps 6]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import phalanx
from phalanx.bench import workloads
from phalanx.bench.harness import make_optimizer


def impls(w, train: bool) -> dict:
    found = {}
    model = w.copy_model().train(train)
    run, owner = w.manual(model, train)
    found["manual"] = (run, make_optimizer([p for p in owner.parameters() if p.requires_grad]) if train else None)
    for cells in (False, True):
        model = w.copy_model().train(train)
        found["cells" if cells else "default"] = (phalanx.Batcher(w.phalanx_fn(model, train), cells=cells),
                                                  make_optimizer(list(model.parameters())) if train else None)
    return found


def step(w, run, opt, batch) -> float:
    start = time.process_time()
    if opt is None:
        with torch.no_grad():
            run(batch)
    else:
        opt.zero_grad(set_to_none=True)
        w.reduce(run(batch)).backward()
        opt.step()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--hidden", type=int, nargs="+", default=[8, 256])
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for hidden in args.hidden:
        w = getattr(workloads, args.model)(args.batch_size, hidden, 4)
        runs = impls(w, args.train)
        for run, opt in runs.values():          # warm: analysis, kernels, pools
            for batch in w.batches:
                step(w, run, opt, batch)
        sec = {name: [] for name in runs}
        split = {name: [] for name in runs if name != "manual"}
        for _ in range(args.reps):
            for batch in w.batches:
                for name, (run, opt) in runs.items():
                    sec[name].append(step(w, run, opt, batch))
                    if name in split:
                        s = run.stats
                        split[name].append((s.record_s + s.schedule_s + s.plan_s, s.execute_s, s.backward_s))
        rows[hidden] = {name: statistics.median(v) for name, v in sec.items()}
        print(f"{args.model} {'training' if args.train else 'inference'}, hidden {hidden}, batch {args.batch_size}:"
              f" ms per mini-batch (process_time medians over {len(sec['manual'])})")
        for name, v in sec.items():
            pair = statistics.median(m / t for m, t in zip(sec["manual"], v, strict=True))
            extra = ""
            if name in split:
                parts = [statistics.median(p[i] for p in split[name]) * 1e3 for i in range(3)]
                extra = f"  record+schedule+plan {parts[0]:.1f}, execute {parts[1]:.1f}, backward {parts[2]:.1f}"
            print(f"  {name:8s} {statistics.median(v) * 1e3:8.1f}  paired manual/this {pair:.3f}x{extra}")
    if len(rows) >= 2:
        small, large = min(rows), max(rows)
        print(f"gap to manual (ms): hidden {small} -> hidden {large}")
        for name in rows[small]:
            if name != "manual":
                gaps = [(rows[h][name] - rows[h]["manual"]) * 1e3 for h in (small, large)]
                print(f"  {name:8s} {gaps[0]:7.1f} -> {gaps[1]:7.1f}")


if __name__ == "__main__":
    main()
