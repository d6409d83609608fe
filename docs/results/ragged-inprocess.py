"""phalanx vs the hand-batched baseline in ONE process, interleaved sample by sample (the shared
machine's load swings too much between benchmark runs to compare them).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python docs/results/ragged-inprocess.py lattice_gru_synthetic 8
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python docs/results/ragged-inprocess.py childsum 4

Inference (no_grad, modules in eval mode), hidden 256, batch 64, depth policy, 4 mini-batches per
round; per mini-batch, manual then phalanx, each timed with process time. Prints the median of
the per-sample manual/phalanx speed ratios (with quartiles), the median times, phalanx's median
time split (wall clock, from ``batcher.stats``) and its batches per mini-batch.
"""
import gc
import statistics
import sys
import time

import torch

import phalanx
from phalanx.bench.workloads import WORKLOADS


def main(name: str, rounds: int) -> None:
    torch.set_num_threads(1)
    workload = WORKLOADS[name](64, 256, 4)
    model = workload.model
    model.train(False)
    batcher = phalanx.Batcher(workload.phalanx_fn(model, False), policy="depth")
    manual = workload.manual(model, False)[0]
    times = {"manual": [], "phalanx": []}
    split = {"record": [], "schedule": [], "plan": [], "execute": []}
    with torch.no_grad():
        for batch in workload.batches:        # warm-up: op types, kernel choices
            batcher(batch), manual(batch)
        for _ in range(rounds):
            for batch in workload.batches:
                gc.collect()
                start = time.process_time()
                manual(batch)
                times["manual"].append(time.process_time() - start)
                start = time.process_time()
                batcher(batch)
                times["phalanx"].append(time.process_time() - start)
                stats = batcher.stats
                for key in split:
                    split[key].append(getattr(stats, f"{key}_s"))
    ratios = sorted(m / p for m, p in zip(times["manual"], times["phalanx"], strict=True))
    quarter = len(ratios) // 4
    print(f"{name}: phalanx {statistics.median(ratios):.2f}x manual (per-sample ratio median, quartiles "
          f"{ratios[quarter]:.2f}..{ratios[-1 - quarter]:.2f}, n={len(ratios)}); median ms manual "
          f"{statistics.median(times['manual']) * 1e3:.1f}, phalanx {statistics.median(times['phalanx']) * 1e3:.1f}; "
          "phalanx split ms " + ", ".join(f"{k} {statistics.median(v) * 1e3:.1f}" for k, v in split.items())
          + f"; {batcher.stats.batches} batches (lower bound {batcher.stats.lower_bound})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8)
