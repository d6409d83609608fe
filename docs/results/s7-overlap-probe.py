# Probe: overlap recording + planning of mini-batch B (a thread) with executing mini-batch A; tagger.
# Run: python docs/results/s7-overlap-probe.py MODEL HIDDEN [SWITCH_INTERVAL_S]
import sys, time, torch, threading
torch.set_num_threads(1)
from phalanx.bench import workloads
import phalanx
name, hidden = sys.argv[1], int(sys.argv[2])
si = float(sys.argv[3]) if len(sys.argv) > 3 else None
if si: sys.setswitchinterval(si)
w = getattr(workloads, name)(64, hidden, 2)
m = w.model.eval(); fn = w.phalanx_fn(m, False)
b1 = phalanx.Batcher(fn, cells=True); b2 = phalanx.Batcher(fn, cells=True, table=b1.table)
A, B = w.batches[0], w.batches[1]
with torch.no_grad():
    for _ in range(2): b1(A); b1(B); b2.record(B)
    def sched_plan(b, g):
        s = b.policy.schedule(g); from phalanx.memory.layout import plan_layout; from phalanx.runtime.steps import build_steps
        lay = plan_layout(g, s); build_steps(g, s, lay)
    for r in range(4):
        t = time.perf_counter(); b1(A); ta = time.perf_counter()-t
        t = time.perf_counter(); g = b2.record(B); sched_plan(b2, g); tb = time.perf_counter()-t
        done = {}
        def rec():
            t = time.perf_counter(); g = b2.record(B); sched_plan(b2, g); done['b'] = time.perf_counter()-t
        t = time.perf_counter()
        th = threading.Thread(target=rec); th.start()
        with torch.no_grad(): t2 = time.perf_counter(); b1(A); done['a'] = time.perf_counter()-t2
        th.join(); tt = time.perf_counter()-t
        print(f"exec A {ta*1e3:.1f}  rec+plan B {tb*1e3:.1f}  seq {1e3*(ta+tb):.1f}  overlapped {tt*1e3:.1f} (A {done['a']*1e3:.1f}, B {done['b']*1e3:.1f})")
