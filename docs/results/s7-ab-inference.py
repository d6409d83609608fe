# Same-process A/B, inference: manual vs a BASE checkout (e.g. git archive of an older commit, C extension
# built in place) vs this tree, default and cells=True; process_time medians and paired ratios.
# Run: python docs/results/s7-ab-inference.py BASE MODEL HIDDEN REPS
import sys, time, statistics, torch, importlib, shutil, tempfile
from pathlib import Path
torch.set_num_threads(1)
target = Path(tempfile.mkdtemp()); shutil.copytree(Path(sys.argv[1]) / "phalanx", target / "phalanx_base"); sys.path.insert(0, str(target))
base = importlib.import_module("phalanx_base"); bw = importlib.import_module("phalanx_base.bench.workloads")
import phalanx
from phalanx.bench import workloads
name, hidden, reps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
w = getattr(workloads, name)(64, hidden, 4); wb = getattr(bw, name)(64, hidden, 4)
impls = {}
m = w.copy_model().eval(); impls["manual"] = (w.manual(m, False)[0], w)
for cells in (False, True):
    m = wb.copy_model().eval(); impls[f"base cells={cells}"] = (base.Batcher(wb.phalanx_fn(m, False), cells=cells), wb)
    m = w.copy_model().eval(); impls[f"this cells={cells}"] = (phalanx.Batcher(w.phalanx_fn(m, False), cells=cells), w)
sec = {n: [] for n in impls}
with torch.no_grad():
    for n, (run, wl) in impls.items():
        for bt in wl.batches: run(bt)
    for _ in range(reps):
        for i in range(4):
            for n, (run, wl) in impls.items():
                s = time.process_time(); run(wl.batches[i]); sec[n].append(time.process_time() - s)
for n in impls:
    pairs = [a / b for a, b in zip(sec["manual"], sec[n])]
    print(f"{name} {hidden} {n:16s} median {statistics.median(sec[n])*1e3:7.1f} ms  paired manual/this x{statistics.median(pairs):.3f}")
