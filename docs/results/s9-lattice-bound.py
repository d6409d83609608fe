"""How fast could ANY level-by-level implementation of the lattice GRU be on this CPU? A bound
from the matrix products it cannot avoid, at the shapes the lattices force, timed with torch's own
GEMM (MKL) next to DyNet, `manual` and phalanx in one process, mini-batch by mini-batch.

A lattice node reads the mean of its predecessors' states, and its predecessors include the
previous character, so node t of every lattice depends on node t - 1: a mini-batch needs at least
max(length) sequential steps, and step t can batch at most the M_t lattices of length >= t. Each
step must multiply its M_t mean states by the recurrent weight (``addmm(b_hh, h[M_t, H], W_hh^T)``,
[M_t, H] x [H, 3H]); the input projection of every character can be one GEMM over all of them, and
so can the output layer. ``gemms`` runs exactly those products into preallocated buffers (no
gathers, no means, no gate arithmetic, no graph building: everything else is free), so no
implementation that batches level by level with these kernels can be faster than it. The FLOP
roofline (``s8-roofline.py``) bounds the same products at the machine's PEAK GEMM rate instead;
this one uses the rate torch reaches at the small M_t a lattice level has.

    OMP_NUM_THREADS=1 python docs/results/s9-lattice-bound.py [--hidden 256] [--reps 6]

Run it where ``dynet`` is installed (``pip install -e ".[peers]"``) to get the DyNet column.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import phalanx
from phalanx.bench import workloads
from phalanx.peers import dynet_worker


def level_sizes(lattices) -> list[int]:
    """M_t: how many lattices have a node at step t (t = 1 .. max length)."""
    lengths = [len(lat) for lat in lattices]
    return [sum(n >= t for n in lengths) for t in range(1, max(lengths, default=0) + 1)]


def gemm_only(model, lattices):
    """The unavoidable matrix products of one mini-batch, as a closure (buffers made once)."""
    gru, scorer = model.node.gru, model.scorer
    sizes = level_sizes(lattices)
    total = sum(sizes)
    w_ih_t, w_hh_t = gru.weight_ih.detach().t().contiguous(), gru.weight_hh.detach().t().contiguous()
    b_ih, b_hh = gru.bias_ih.detach(), gru.bias_hh.detach()
    linear = next(m for m in scorer.modules() if isinstance(m, torch.nn.Linear))
    w_out_t, b_out = linear.weight.detach().t().contiguous(), linear.bias.detach()
    x = torch.randn(total, w_ih_t.shape[0])
    h = torch.randn(max(sizes, default=0), w_hh_t.shape[0])
    states = torch.randn(total, w_hh_t.shape[0])
    x_proj, h_proj = torch.empty(total, w_ih_t.shape[1]), torch.empty(len(h), w_hh_t.shape[1])
    logits = torch.empty(total, w_out_t.shape[1])

    def run():
        torch.addmm(b_ih, x, w_ih_t, out=x_proj)
        for m in sizes:
            torch.addmm(b_hh, h[:m], w_hh_t, out=h_proj[:m])
        torch.addmm(b_out, states, w_out_t, out=logits)
    return run, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    w = workloads.lattice_gru_synthetic(args.batch_size, args.hidden, 4)
    model = w.copy_model().eval()
    impls = {}
    manual, _ = w.manual(model, False)
    impls["manual"] = lambda i: manual(w.batches[i])
    batcher = phalanx.Batcher(w.phalanx_fn(model, False))
    impls["phalanx"] = lambda i: batcher(w.batches[i])
    closures = [gemm_only(model, batch) for batch in w.batches]
    impls["gemms"] = lambda i: closures[i][0]()
    peer = None
    if dynet_worker.available():
        peer = dynet_worker.DynetPeer("lattice_gru_synthetic", args.batch_size, args.hidden, 4, 0, 1, strategy=3)
        if not peer.wait_ready():
            print("DyNet:", peer.note)
            peer = None
    sec = {name: [] for name in impls}
    if peer is not None:
        sec["dynet"] = []
    with torch.no_grad():
        for rep in range(args.reps + 1):
            for i in range(len(w.batches)):
                for name, f in impls.items():
                    start = time.perf_counter()
                    f(i)
                    if rep:                             # the first round warms every implementation
                        sec[name].append(time.perf_counter() - start)
                if peer is not None:
                    s = peer.time_batch(i)
                    if rep and s is not None:
                        sec["dynet"].append(s)
    if peer is not None:
        peer.close()
    sizes = [closures[i][1] for i in range(len(w.batches))]
    print(f"lattice_gru_synthetic, hidden {args.hidden}, batch {args.batch_size}: steps per mini-batch "
          f"{[len(s) for s in sizes]}, rows per step (first mini-batch) {sizes[0]}")
    print("ms per mini-batch (wall-clock medians over", len(sec["gemms"]), "timed mini-batches, interleaved)")
    med = {name: statistics.median(v) * 1e3 for name, v in sec.items() if v}
    for name, v in med.items():
        print(f"  {name:8s} {v:7.1f}")
    flops = sum(2 * m * args.hidden * 3 * args.hidden for s in sizes for m in s) / len(sizes)
    print(f"  recurrent GEMM FLOPs per mini-batch {flops / 1e9:.3f} GFLOP; gemms runs all products at "
          f"{(flops / 1e9) / (med['gemms'] / 1e3):.1f} GFLOP/s (recurrent share only)")
    if "dynet" in med:
        pair = statistics.median(d / g for d, g in zip(sec["dynet"], sec["gemms"], strict=True))
        print(f"  dynet / gemms, paired: {pair:.2f}x  -> the most any level-by-level implementation on these "
              f"GEMMs can be over DyNet here (target 2x)")
        pair = statistics.median(d / p for d, p in zip(sec["dynet"], sec["phalanx"], strict=True))
        print(f"  dynet / phalanx, paired: {pair:.2f}x")
    pair = statistics.median(m / p for m, p in zip(sec["manual"], sec["phalanx"], strict=True))
    print(f"  manual / phalanx, paired: {pair:.2f}x")


if __name__ == "__main__":
    main()
