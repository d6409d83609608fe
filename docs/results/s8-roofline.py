"""How fast could ANY implementation of a workload be on this CPU? A FLOP roofline.

Batching changes how the work is grouped, not how much of it there is: a batched run does the same
matrix products as eager code (or more, with padding). So no implementation can be faster than
(the workload's matrix-product FLOPs) / (the machine's best single-thread GEMM rate). This script
measures both, on the bench's own mini-batches, single thread:

- peak: the best GFLOP/s of ``torch.mm`` over several large float32 shapes (the rate a GEMM-bound
  loop could at best sustain; the models' own GEMMs are smaller and run slower);
- per workload: matmul-family FLOPs (``torch.utils.flop_counter.FlopCounterMode``: mm, addmm, bmm,
  baddbmm, attention; elementwise work is not counted, so the bound is generous) of eager, manual
  (or no-fibers) and phalanx on one mini-batch, their times (min of ``--reps``), and
  ``bound = eager FLOPs / peak``: the fastest any implementation could run it. Eager code does
  exactly the work each instance needs (no padding); the counter misses ops called with ``out=``
  (phalanx's direct calls, nn.LSTM's internals), so the other rows' counts can read lower than the
  work they do and are shown only for reference.
- ``max vs eager`` = eager time / bound: the most any batching system can gain over eager here.

    OMP_NUM_THREADS=1 python docs/results/s8-roofline.py [--models berxit lattice_gru_synthetic ...]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import phalanx
from phalanx.bench import workloads


def peak_gflops(reps: int = 7) -> tuple[float, list]:
    rows = []
    for m, k, n in ((256, 1024, 1024), (512, 1024, 1024), (1024, 1024, 1024), (2048, 1024, 1024),
                    (1024, 2048, 2048), (1536, 512, 1280)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        best = min(_timed(lambda: a @ b) for _ in range(reps))
        rows.append(((m, k, n), 2 * m * k * n / best / 1e9))
    return max(g for _, g in rows), rows


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(run, batch, reps: int) -> tuple[float, float]:
    """(matmul GFLOPs, best seconds) of ``run(batch)`` under no_grad."""
    with torch.no_grad():
        run(batch)
        with FlopCounterMode(display=False) as counter:
            run(batch)
        best = min(_timed(lambda: run(batch)) for _ in range(reps))
    return counter.get_total_flops() / 1e9, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["berxit", "nmt", "lattice_gru_synthetic", "tagger", "treelstm"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    peak, rows = peak_gflops()
    print("single-thread sgemm: " + ", ".join(f"{m}x{k}x{n} {g:.1f}" for (m, k, n), g in rows) + " GFLOP/s")
    print(f"peak {peak:.1f} GFLOP/s\n")
    print(f"{'model':24s} {'impl':10s} {'GFLOP':>7s} {'ms':>8s} {'GFLOP/s':>8s}")
    summary = []
    for name in args.models:
        w = workloads.WORKLOADS[name](args.batch_size, workloads.design_hidden(name), 1)
        model = w.model.eval()
        batch = w.batches[0]
        impls = {"eager": w.eager(model, False)[0], w.baseline_name: w.manual(model, False)[0],
                 "phalanx": phalanx.Batcher(w.phalanx_fn(model, False))}
        found = {}
        for impl, run in impls.items():
            gflop, sec = measure(run, batch, args.reps)
            found[impl] = (gflop, sec)
            print(f"{name:24s} {impl:10s} {gflop:7.3f} {sec * 1e3:8.1f} {gflop / sec:8.1f}")
        bound = found["eager"][0] / peak
        summary.append((name, bound, found))
    print(f"\n{'model':24s} {'bound ms':>9s} {'eager ms':>9s} {'max vs eager':>13s} {'phalanx vs eager':>17s}"
          f" {'baseline ms':>12s} {'max vs baseline':>16s}")
    for name, bound, found in summary:
        eager = found["eager"][1]
        base = [v for k, v in found.items() if k not in ("eager", "phalanx")][0][1]
        print(f"{name:24s} {bound * 1e3:9.1f} {eager * 1e3:9.1f} {eager / bound:12.2f}x"
              f" {eager / found['phalanx'][1]:16.2f}x {base * 1e3:12.1f} {base / bound:15.2f}x")


if __name__ == "__main__":
    main()
