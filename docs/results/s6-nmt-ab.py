"""A/B in one process, interleaved, process CPU time: before = session 6 nmt3's three changes
switched off (stale immediates resolved to row views before each flush, no padded-stack op type, the
depth policy's sink postponement of a0529d3); after = this tree. Outputs are checked equal.
Run from the repository root: ``python docs/results/s6-nmt-ab.py nmt 64 7`` (model, batch, repeats)."""
import subprocess, sys, tempfile, torch, phalanx, time, importlib.util
from phalanx.bench import workloads
from phalanx.runtime import fibers as F
from phalanx.frontend import ragged as RG
from phalanx.schedule import depth as D
torch.set_num_threads(1)
with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(subprocess.run(["git", "show", "a0529d3:phalanx/schedule/depth.py"], capture_output=True, text=True,
                           check=True).stdout)
spec = importlib.util.spec_from_file_location("depth_old", f.name); old = importlib.util.module_from_spec(spec)
old.__package__ = "phalanx.schedule"; spec.loader.exec_module(old)
name = sys.argv[1]; bs = int(sys.argv[2]); reps = int(sys.argv[3])
w = workloads.WORKLOADS[name](bs, 256, 2)
fn = w.phalanx_fn(w.model, False)
b = phalanx.Batcher(fn, policy="depth")
new_flush, new_pad, new_sinks = F.Hub._flush, RG._end_padding, D._postpone_sinks
def old_flush(self):
    self._resolve_stale_immediates(self.rec.graph.imms)
    new_flush(self)
modes = {"before": (old_flush, lambda *a: None, old._postpone_sinks), "after": (new_flush, new_pad, new_sinks)}
res = {k: [] for k in modes}
flat = lambda o: [t for x in o for t in (x if isinstance(x, (tuple, list)) else (x,))]
with torch.no_grad():
    ref = [flat(b(batch)) for batch in w.batches]
    for r in range(reps):
        for k, (fl, pd, sk) in modes.items():
            F.Hub._flush, RG._end_padding, D._postpone_sinks = fl, pd, sk
            t = time.process_time(); outs = []; nbat = 0
            for batch in w.batches: outs.append(flat(b(batch))); nbat += b.stats.batches
            res[k].append((time.process_time() - t, nbat))
            for x, y in zip(ref, outs, strict=True):
                for a, c in zip(x, y, strict=True): torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
nb = len(w.batches)
for k, v in res.items():
    ts = sorted(x[0] for x in v)
    print(f"{name} b{bs} {k:7s} ms/batch min {1e3*ts[0]/nb:.1f} median {1e3*ts[len(ts)//2]/nb:.1f} batches/call {v[0][1]/nb}")
