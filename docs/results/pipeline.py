"""Does ``Batcher.pipeline`` pay? Side by side in one process, on the bench's mini-batches and
weights, inference: the Batcher called in a loop vs ``batcher.pipeline(minibatches)`` (the next
mini-batch recorded on a worker thread while the current one's kernels run), interleaved round by
round, wall-clock time (the pipeline uses a second core for recording; torch keeps 1 thread for
kernels). Results are checked equal first.

    OMP_NUM_THREADS=1 python docs/results/pipeline.py treelstm tagger lattice_gru_synthetic --hidden 64 256
"""
import argparse
import statistics
import time

import torch

from phalanx import Batcher
from phalanx.bench import workloads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':24} {'hidden':>6} {'loop ms':>8} {'pipeline ms':>12} {'speedup':>8} {'record ms':>10}")
    for name in args.models:
        for hidden in args.hidden:
            w = workloads.WORKLOADS[name](args.batch_size, hidden, args.batches)
            model = w.model.eval()
            batcher = Batcher(w.phalanx_fn(model, False))
            with torch.no_grad():
                loop = [batcher(b) for b in w.batches]
                piped = list(batcher.pipeline(w.batches))
                for a, b in zip(loop, piped, strict=True):
                    torch.testing.assert_close(w.reduce(a), w.reduce(b))
                loop_t, pipe_t, record = [], [], []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    for b in w.batches:
                        batcher(b)
                        record.append(batcher.stats.record_s)
                    loop_t.append((time.perf_counter() - t) / len(w.batches))
                    t = time.perf_counter()
                    for _ in batcher.pipeline(w.batches):
                        pass
                    pipe_t.append((time.perf_counter() - t) / len(w.batches))
            lo, pi = statistics.median(loop_t), statistics.median(pipe_t)
            print(f"{name:24} {hidden:6d} {lo * 1e3:8.1f} {pi * 1e3:12.1f} {lo / pi:7.2f}x "
                  f"{statistics.median(record) * 1e3:10.1f}")


if __name__ == "__main__":
    main()
