"""Instructions executed while recording one mini-batch (batch 64), counted by callgrind: unlike
times, counts do not move with the load of a shared machine, so small changes to the recording
hot path can be compared. Counts are not times (cache misses and branch mispredictions are not in
them); the Batcher's in-call ``stats.record_s`` is the time measure.

Run (valgrind with its headers; ~1-3 minutes per case)::

    printf '#include <valgrind/callgrind.h>\\nvoid cg_start(void){CALLGRIND_START_INSTRUMENTATION;CALLGRIND_ZERO_STATS;}\\nvoid cg_stop(void){CALLGRIND_DUMP_STATS_AT("region");CALLGRIND_STOP_INSTRUMENTATION;}\\n' > cg.c
    gcc -O2 -shared -fPIC -o /tmp/libcg.so cg.c
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg.out \\
        python docs/results/record-instructions.py treelstm-off /tmp/libcg.so
    grep -h '^summary:\\|^totals:' /tmp/cg.out.1     # instructions of the region; divide by the printed nodes

The region is ``Hub(batcher, Stats()).record(batch)`` (what ``stats.record_s`` times in a call)
after two warm-up calls, with the cyclic collector paused as a Batcher call pauses it.
"""
import ctypes
import gc
import sys

import torch

import phalanx
from phalanx.bench import workloads
from phalanx.runtime.fibers import Hub
from phalanx.stats import Stats

CASES = {
    "treelstm-off": (lambda: workloads.treelstm(64, 64, 1), False),
    "treelstm-on": (lambda: workloads.treelstm(64, 64, 1), True),
    "tagger-off": (lambda: workloads.tagger(64, 256, 1), False),
    "tagger-on": (lambda: workloads.tagger(64, 256, 1), True),
    "lattice-off": (lambda: workloads.lattice_gru_synthetic(64, 256, 1), False),
}


def main() -> None:
    torch.set_num_threads(1)
    make, cells = CASES[sys.argv[1]]
    cg = ctypes.CDLL(sys.argv[2])
    w = make()
    b = phalanx.Batcher(w.phalanx_fn(w.model.eval(), False), cells=cells)
    with torch.no_grad():
        batch = w.batches[0]
        b(batch)
        b(batch)
        print("nodes", b.stats.nodes, flush=True)
        b.table.begin_call()
        gc.disable()
        cg.cg_start()
        Hub(b, Stats()).record(batch)
        cg.cg_stop()
        gc.enable()


if __name__ == "__main__":
    main()
