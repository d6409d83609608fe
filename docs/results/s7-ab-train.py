# Same-process A/B: manual vs phalanx default and cells=True, TreeLSTM training (forward + backward + SGD step),
# process_time and perf_counter medians, paired ratios. Run: python docs/results/s7-ab-train.py HIDDEN REPS
import sys, time, statistics, torch
torch.set_num_threads(1)
from phalanx.bench import workloads
from phalanx.bench.harness import make_optimizer
import phalanx
hidden = int(sys.argv[1]); reps = int(sys.argv[2])
w = workloads.treelstm(64, hidden, 4)
impls = {}
m = w.copy_model().train(True); run, owner = w.manual(m, True); impls["manual"] = (run, make_optimizer([p for p in owner.parameters() if p.requires_grad]))
for cells in (False, True):
    m = w.copy_model().train(True); impls[f"cells={cells}"] = (phalanx.Batcher(w.phalanx_fn(m, True), cells=cells), make_optimizer(list(m.parameters())))
def step(n, i, clock):
    run, opt = impls[n]
    s = clock(); opt.zero_grad(set_to_none=True); w.reduce(run(w.batches[i])).backward(); opt.step(); return clock() - s
for n in impls: step(n, 0, time.perf_counter); step(n, 1, time.perf_counter)
for clock in (time.process_time, time.perf_counter):
    sec = {n: [] for n in impls}
    for _ in range(reps):
        for i in range(4):
            for n in impls: sec[n].append(step(n, i, clock))
    for n in impls:
        pairs = [a / b for a, b in zip(sec["manual"], sec[n])]
        print(clock.__name__, f"{n:12s} median {statistics.median(sec[n])*1e3:7.1f} ms  paired manual/this x{statistics.median(pairs):.3f}")
for n in ("cells=False", "cells=True"):
    run, opt = impls[n]
    for i in range(4):
        t = time.perf_counter(); opt.zero_grad(set_to_none=True); loss = w.reduce(run(w.batches[i])); t1 = time.perf_counter(); loss.backward(); t2 = time.perf_counter(); opt.step(); t3 = time.perf_counter()
        s = run.stats
        print(n, f"fwd {1e3*(t1-t):.1f} bwd {1e3*(t2-t1):.1f} opt {1e3*(t3-t2):.1f} | rec {s.record_s*1e3:.1f} sched {s.schedule_s*1e3:.1f} plan {s.plan_s*1e3:.1f} exec {s.execute_s*1e3:.1f} bwd {s.backward_s*1e3:.1f}")
run, opt = impls["manual"]
for i in range(4):
    t = time.perf_counter(); opt.zero_grad(set_to_none=True); loss = w.reduce(run(w.batches[i])); t1 = time.perf_counter(); loss.backward(); t2 = time.perf_counter(); opt.step(); t3 = time.perf_counter()
    print("manual", f"fwd {1e3*(t1-t):.1f} bwd {1e3*(t2-t1):.1f} opt {1e3*(t3-t2):.1f}")
