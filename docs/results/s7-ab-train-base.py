# same-process A/B: cells=True training, base checkout vs this; plus default this
import sys, time, statistics, torch, importlib, shutil, tempfile
from pathlib import Path
torch.set_num_threads(1)
target = Path(tempfile.mkdtemp()); shutil.copytree(Path(sys.argv[1]) / "phalanx", target / "phalanx_base"); sys.path.insert(0, str(target))
base = importlib.import_module("phalanx_base"); bw = importlib.import_module("phalanx_base.bench.workloads")
import phalanx
from phalanx.bench import workloads
from phalanx.bench.harness import make_optimizer
hidden = int(sys.argv[2]); reps = int(sys.argv[3])
w = workloads.treelstm(64, hidden, 4); wb = bw.treelstm(64, hidden, 4)
impls = {}
m = w.copy_model().train(True); run, owner = w.manual(m, True); impls["manual"] = (run, make_optimizer([p for p in owner.parameters() if p.requires_grad]), w)
m = wb.copy_model().train(True); impls["base+cells"] = (base.Batcher(wb.phalanx_fn(m, True), cells=True), make_optimizer(list(m.parameters())), wb)
m = w.copy_model().train(True); impls["this+cells"] = (phalanx.Batcher(w.phalanx_fn(m, True), cells=True), make_optimizer(list(m.parameters())), w)
m = w.copy_model().train(True); impls["this"] = (phalanx.Batcher(w.phalanx_fn(m, True)), make_optimizer(list(m.parameters())), w)
def step(n, i):
    run, opt, wl = impls[n]
    s = time.process_time(); opt.zero_grad(set_to_none=True); wl.reduce(run(wl.batches[i])).backward(); opt.step(); return time.process_time() - s
for n in impls: step(n, 0); step(n, 1)
sec = {n: [] for n in impls}
for _ in range(reps):
    for i in range(4):
        for n in impls: sec[n].append(step(n, i))
for n in impls:
    pairs = [a / b for a, b in zip(sec["manual"], sec[n])]
    print(f"{n:12s} median {statistics.median(sec[n])*1e3:7.1f} ms  paired manual/this x{statistics.median(pairs):.3f}")
