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

Session 10 adds ``floor``: every kernel a level-by-level implementation must run, as tightly as
torch allows, with all index building (and every view a level reads or writes) done ahead of time
and not counted. Per mini-batch: the input projection of every character (one GEMM), then per level
t (the M_t lattices with a node there, their E_t predecessor edges): gather the predecessors'
states (``index_select`` of E_t rows), their means (``index_add_`` into zeroed rows, times
1/degree), the recurrent GEMM, and the GRU gate math with every op in place or into preallocated
buffers (r, z: one add and one sigmoid over 2H columns; n: mul, add, tanh; h = n + z * (h_prev -
n): sub, mul, add, written straight into the level's rows of a level-major state buffer, so no
scatter); then the output layer (one GEMM). Checked against ``manual``'s logits before timing.
About 13 small kernels and one GEMM a level; no recording, no graph, no scheduling, no Python
beyond the level loop: whatever batches level by level with torch's kernels does at least this.

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


def kernel_floor(model, lattices):
    """Every kernel of one mini-batch, level by level, indices built ahead (see the docstring)."""
    gru, scorer = model.node.gru, model.scorer
    hidden = gru.hidden_size
    w_ih_t, w_hh_t = gru.weight_ih.detach().t().contiguous(), gru.weight_hh.detach().t().contiguous()
    b_ih, b_hh = gru.bias_ih.detach(), gru.bias_hh.detach()
    linear = next(m for m in scorer.modules() if isinstance(m, torch.nn.Linear))
    w_out_t, b_out = linear.weight.detach().t().contiguous(), linear.bias.detach()
    embed = model.embed.weight.detach()
    # level-major rows: row 0 is every lattice's initial state (zeros), then level 1's nodes, ...
    lengths = [len(lat) for lat in lattices]
    levels = max(lengths, default=0)
    row_of: dict = {}
    rows = 1
    plan = []
    chars = []
    for t in range(1, levels + 1):
        start = rows
        edge_row, edge_src, degree = [], [], []
        for i, lat in enumerate(lattices):
            if lengths[i] >= t:
                preds = lat.preds[t - 1]
                local = rows - start
                edge_row.extend([local] * len(preds))
                edge_src.extend(0 if p == 0 else row_of[i, p] for p in preds)
                degree.append(len(preds))
                chars.append(lat.chars[t - 1])
                row_of[i, t] = rows
                rows += 1
        plan.append((start, rows, torch.tensor(edge_row), torch.tensor(edge_src),
                     (1.0 / torch.tensor(degree, dtype=torch.float32)).unsqueeze(1)))
    chars = torch.tensor(chars, dtype=torch.long)
    states = torch.zeros(rows, hidden)
    x_proj = torch.empty(rows - 1, 3 * hidden)
    widest = max((hi - lo for lo, hi, *_ in plan), default=0)
    most_edges = max((len(e) for _, _, e, _, _ in plan), default=0)
    gathered = torch.empty(most_edges, hidden)
    h_prev, gh = torch.empty(widest, hidden), torch.empty(widest, 3 * hidden)
    rz, tmp = torch.empty(widest, 2 * hidden), torch.empty(widest, hidden)
    logits = torch.empty(rows - 1, w_out_t.shape[1])

    # Every view each level reads or writes, made here (not timed): the loop is kernels only.
    levels_views = []
    for lo, hi, edge_row, edge_src, scale in plan:
        m, e = hi - lo, len(edge_src)
        gi, gh_m, r_z = x_proj[lo - 1:hi - 1], gh[:m], rz[:m]
        levels_views.append((edge_row, edge_src, scale, gathered[:e], h_prev[:m], gh_m, gi[:, :2 * hidden],
                             gh_m[:, :2 * hidden], r_z, r_z[:, :hidden], r_z[:, hidden:], gh_m[:, 2 * hidden:],
                             gi[:, 2 * hidden:], tmp[:m], states[lo:hi]))
    every_char = embed.index_select(0, chars)
    all_states = states[1:]

    def run():
        torch.addmm(b_ih, torch.index_select(embed, 0, chars, out=every_char), w_ih_t, out=x_proj)
        for (edge_row, edge_src, scale, g, hp, gh_m, gi_rz, gh_rz, r_z, r, z, gh_n, gi_n, n,
             out) in levels_views:
            torch.index_select(states, 0, edge_src, out=g)
            hp.zero_().index_add_(0, edge_row, g).mul_(scale)
            torch.addmm(b_hh, hp, w_hh_t, out=gh_m)
            torch.add(gi_rz, gh_rz, out=r_z).sigmoid_()
            torch.mul(r, gh_n, out=n).add_(gi_n).tanh_()
            torch.sub(hp, n, out=out).mul_(z).add_(n)
        torch.addmm(b_out, all_states, w_out_t, out=logits)
    in_lattice_order = torch.tensor([row_of[i, t] - 1 for i in range(len(lattices)) for t in range(1, lengths[i] + 1)],
                                    dtype=torch.long)
    return run, lambda: logits.index_select(0, in_lattice_order)


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
    floors = [kernel_floor(model, batch) for batch in w.batches]
    impls["floor"] = lambda i: floors[i][0]()
    with torch.no_grad():       # the floor computes what the model computes
        for i, (run, result) in enumerate(floors):
            run()
            expected = torch.cat(manual(w.batches[i]))
            torch.testing.assert_close(result(), expected, rtol=1e-4, atol=1e-5)
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
        pair = statistics.median(d / f for d, f in zip(sec["dynet"], sec["floor"], strict=True))
        print(f"  dynet / floor, paired: {pair:.2f}x  -> the most an implementation running these kernels level by "
              f"level (and nothing else) can be over DyNet here (target 2x)")
    pair = statistics.median(m / p for m, p in zip(sec["manual"], sec["phalanx"], strict=True))
    print(f"  manual / phalanx, paired: {pair:.2f}x")


if __name__ == "__main__":
    main()
