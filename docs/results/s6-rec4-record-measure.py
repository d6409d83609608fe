"""Per-call ``stats.record_s`` of a Batcher (median over repeats, process time: the Batcher's clock
is swapped for ``time.process_time`` so other processes' load counts less) for a set of
workloads (batch 64, 2 mini-batches, no_grad, eval); prints one JSON line per case. Used by
s6-rec4-record-ab.py."""
import json, os, statistics, sys, time
import torch
torch.set_num_threads(1)
import phalanx
import types, phalanx.api as A
A.time = types.SimpleNamespace(perf_counter=time.process_time)
from phalanx.bench import workloads
from phalanx.ir import columns

CASES = {
    "treelstm-off": (lambda: workloads.treelstm(64, 64, 2), False),
    "treelstm-on": (lambda: workloads.treelstm(64, 64, 2), True),
    "tagger-off": (lambda: workloads.tagger(64, 256, 2), False),
    "tagger-on": (lambda: workloads.tagger(64, 256, 2), True),
    "lattice-off": (lambda: workloads.lattice_gru_synthetic(64, 256, 2), False),
}

def main():
    names = sys.argv[1].split(",")
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    for name in names:
        make, cells = CASES[name]
        w = make()
        fn = w.phalanx_fn(w.model.eval(), False)
        b = phalanx.Batcher(fn, cells=cells)
        rec, tot, nodes = [], [], 0
        with torch.no_grad():
            for batch in w.batches:
                b(batch)
            for _ in range(reps):
                r = t = 0.0
                n = 0
                for batch in w.batches:
                    t0 = time.process_time()
                    b(batch)
                    t += time.process_time() - t0
                    r += b.stats.record_s
                    n += b.stats.nodes
                rec.append(r / len(w.batches)); tot.append(t / len(w.batches)); nodes = n / len(w.batches)
        print(json.dumps({"case": name, "native": columns.NATIVE, "record_ms": 1e3 * statistics.median(rec),
                          "record_min_ms": 1e3 * min(rec), "total_ms": 1e3 * statistics.median(tot),
                          "nodes": nodes, "us_per_node": 1e6 * statistics.median(rec) / nodes}), flush=True)

main()
