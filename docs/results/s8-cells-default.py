"""Should ``cells=True`` be the default? Every zoo model, same process, interleaved call by call:
``Batcher(cells=False)`` (each cell's own code on stacked rows, probe-checked) against
``Batcher(cells=True)`` (traced programs), CPU time (``process_time``), the median of the paired
ratios probe/cells (> 1: the traced programs are faster) and each side's median.

    OMP_NUM_THREADS=1 python docs/results/s8-cells-default.py [--models ...] [--train] [--reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import phalanx
from phalanx.bench import workloads
from phalanx.bench.harness import make_optimizer

ZOO = ["treelstm", "tagger", "childsum", "treegru", "mvrnn", "twotype", "nested", "dag",
       "lattice_gru_synthetic", "lattice_lstm", "nmt", "berxit", "stackrnn", "drnn"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=ZOO)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':24s} {'probe ms':>9s} {'cells ms':>9s} {'probe/cells (paired)':>21s}")
    for name in args.models:
        w = workloads.WORKLOADS[name](args.batch_size, workloads.design_hidden(name), 2)
        if args.train and w.decides:
            continue
        runs = {}
        for cells in (False, True):
            model = w.copy_model().train(args.train)
            runs[cells] = (phalanx.Batcher(w.phalanx_fn(model, args.train), cells=cells),
                           make_optimizer(list(model.parameters())) if args.train else None)

        def step(cells, batch) -> float:
            batcher, opt = runs[cells]
            start = time.process_time()
            if opt is None:
                with torch.no_grad():
                    batcher(batch)
            else:
                opt.zero_grad(set_to_none=True)
                w.reduce(batcher(batch)).backward()
                opt.step()
            return time.process_time() - start

        for batch in w.batches:                 # warm: tracing, probes, pools
            step(False, batch), step(True, batch)
        sec = {False: [], True: []}
        for _ in range(args.reps):
            for batch in w.batches:
                for cells in (False, True):
                    sec[cells].append(step(cells, batch))
        paired = statistics.median(p / c for p, c in zip(sec[False], sec[True], strict=True))
        print(f"{name:24s} {statistics.median(sec[False]) * 1e3:9.1f} {statistics.median(sec[True]) * 1e3:9.1f}"
              f" {paired:20.2f}x", flush=True)


if __name__ == "__main__":
    main()
