"""Stage split of one phalanx NMT decode call (greedy, fibers), in CPU time of this process
(time.process_time: robust to other jobs on the cores), best of N rounds over 2 mini-batches.
Run: ``python docs/results/fibers-stage-split.py [batch size] [rounds]``. The "record" stage of
``Stats`` is split further: freeze, resolve (stale immediates -> row views, NOTE: [Values across
rounds]), release (dropping the rounds at the end of the call) and the fibers' own recording."""
import sys, time, gc, functools
import torch
import phalanx
from phalanx.bench import workloads
from phalanx.runtime import fibers
from phalanx.ir import graph as G
torch.set_num_threads(1)
time.perf_counter = time.process_time   # CPU time of this process: robust to other agents on the cores
bs = int(sys.argv[1]) if len(sys.argv) > 1 else 64
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
w = workloads.nmt(bs, 256, 2)
m = w.model
fn = w.phalanx_fn(m, False)
b = phalanx.Batcher(fn, policy="depth")
acc = {}
def wrap(owner, name, label):
    orig = getattr(owner, name)
    @functools.wraps(orig)
    def f(*a, **k):
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            acc[label] = acc.get(label, 0) + time.perf_counter() - t
    setattr(owner, name, f)
wrap(G.DataflowGraph, "freeze", "freeze")
if hasattr(fibers.Hub, "_resolve_stale_immediates"):
    wrap(fibers.Hub, "_resolve_stale_immediates", "resolve")
wrap(fibers.RoundResult, "__init__", "roundresult")
wrap(fibers.Hub, "_collect_results", "collect")
wrap(fibers.Hub, "_release_rounds", "release")
wrap(fibers.Hub, "_flush", "flush")
wrap(fibers.Hub, "record", "hub.record")
rows = []
with torch.no_grad():
    for batch in w.batches:
        b(batch)
    for r in range(reps):
        acc.clear()
        tot = dict(total=0, record=0, plan=0, execute=0)
        for batch in w.batches:
            t = time.perf_counter()
            b(batch)
            tot["total"] += time.perf_counter() - t
            s = b.stats
            tot["record"] += s.record_s; tot["plan"] += s.plan_s + s.schedule_s; tot["execute"] += s.execute_s
        tot.update(acc)
        tot["recording(outside flush)"] = tot["hub.record"] - tot["flush"] - tot.get("collect", 0) - tot.get("release", 0)
        rows.append({k: 1e3 * v / len(w.batches) for k, v in tot.items()})
best = {k: min(r[k] for r in rows) for k in rows[0]}
print(" ".join(f"{k}={v:.1f}" for k, v in best.items()))
