"""Where recording time goes, per recorded node, on TreeLSTM written naturally (hidden 64, batch 64,
4 mini-batches of EWT dev trees, 1 thread). Run: ``python docs/results/record-breakdown.py``.

Rows (best of 7 rounds each, so background load inflates them least; the collector paused, as in a
Batcher call):
- record: ``record_instances`` over the mini-batches (what ``Batcher`` does before freezing);
- user code alone: the same per-instance code with the three cells replaced by plain Python
  functions returning a constant (the user's recursion, attribute reads, tuple unpacking);
- cell call: one ``self.internal(hl, cl, hr, cr)`` call recorded (the native CellCall +
  Columns.append_call), and ``append_call`` alone, in a loop of 50,000;
- per instance: begin_instance + lazify + flatten_result around a function that does nothing;
- the pure-Python twin's record (``PHALANX_NATIVE=0``, a subprocess), for comparison.
"""
import gc
import os
import subprocess
import sys
import time

import torch

import phalanx
from phalanx.bench import workloads
from phalanx.frontend import recorder as R
from phalanx.frontend.recording import record_instances, record_one
from phalanx.ir import columns

torch.set_num_threads(1)


def best(f, rounds=7) -> float:
    """Best of ``rounds``, with the cyclic collector paused as a Batcher call pauses it
    (runtime/fibers.py, NOTE: [Collector paused]), so its passes over unrelated objects do not count."""
    times = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        finally:
            gc.enable()
    return min(times)


def main() -> None:
    w = workloads.treelstm(64, 64, 4)
    m = w.model
    fn = w.phalanx_fn(m, False)
    b = phalanx.Batcher(fn)
    with torch.no_grad():
        for batch in w.batches:
            b(batch)
        nodes = sum(b.record(batch).num_nodes for batch in w.batches)
        instances = sum(len(batch) for batch in w.batches)

        def record():
            for batch in w.batches:
                b.table.begin_call()
                record_instances(fn, batch, b.table)

        t_record = best(record)
        pair = (0, 0)
        d = m.__dict__
        d["leaf"], d["internal"], d["classifier"] = (lambda w: pair), (lambda a, b, c, e: pair), (lambda h: h)
        try:
            t_user = best(lambda: [fn(x) for batch in w.batches for x in batch])
        finally:
            for k in ("leaf", "internal", "classifier"):
                del d[k]

        b.table.begin_call()
        rec = R.Recorder(b.table, torch.device("cpu"))
        R._SLOT.rec = rec
        try:
            x = m.leaf(3)
            h, c = m.internal(*x, *x)
            internal, append = m.internal, rec.append_call
            args = (h, c, h, c)
            n = 50_000
            one = w.batches[0][0]

            def calls():
                for _ in range(n):
                    internal(h, c, h, c)

            def appends():
                for _ in range(n):
                    append(internal, args)

            def per_instance():
                for _ in range(n // 10):
                    record_one(lambda i: x, rec, 0, one)

            t_call, t_append, t_inst = best(calls) / n, best(appends) / n, best(per_instance) / (n // 10)
        finally:
            R._SLOT.rec = None

    us = 1e6
    print(f"TreeLSTM hidden 64, batch 64, {len(w.batches)} mini-batches: {nodes / len(w.batches):.0f} nodes and "
          f"{instances / len(w.batches):.0f} instances per mini-batch; native fast path: {columns.NATIVE}")
    print(f"record                         {us * t_record / nodes:6.2f} us/node ({1e3 * t_record / len(w.batches):.2f} ms per mini-batch)")
    print(f"  user code alone              {us * t_user / nodes:6.2f} us/node")
    print(f"  one recorded cell call       {us * t_call:6.2f} us (append_call alone {us * t_append:.2f})")
    print(f"  per instance (begin, lazify, flatten) {us * t_inst:5.2f} us = {us * t_inst * instances / nodes:.2f} us/node")
    if columns.NATIVE:
        twin = subprocess.run([sys.executable, __file__, "--twin"], env={**os.environ, "PHALANX_NATIVE": "0"},
                              capture_output=True, text=True, check=True).stdout.strip()
        print(f"pure-Python twin: record       {twin} us/node")


def twin() -> None:
    w = workloads.treelstm(64, 64, 4)
    fn = w.phalanx_fn(w.model, False)
    b = phalanx.Batcher(fn)
    with torch.no_grad():
        for batch in w.batches:
            b(batch)
        nodes = sum(b.record(batch).num_nodes for batch in w.batches)

        def record():
            for batch in w.batches:
                b.table.begin_call()
                record_instances(fn, batch, b.table)

        print(f"{1e6 * best(record) / nodes:6.2f}")


if __name__ == "__main__":
    twin() if "--twin" in sys.argv else main()
