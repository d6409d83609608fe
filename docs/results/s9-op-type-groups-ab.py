"""Same-process paired A/B of op-type groups (NOTE: [Op-type groups]): the tagger with the Batcher
default (groups on) against CellOptions(group=False), inference, alternating order per mini-batch,
process time. Usage: python docs/results/s9-op-type-groups-ab.py HIDDEN ROUNDS"""
import time, sys, statistics, torch, phalanx
from phalanx.bench import workloads
from phalanx.cells.options import CellOptions
H = int(sys.argv[1]); reps = int(sys.argv[2])
torch.manual_seed(0)
w = workloads.tagger(64, H, 4)
fn = w.phalanx_fn(w.model, False)
bs = {"on": phalanx.Batcher(fn), "off": phalanx.Batcher(fn, cells=CellOptions(group=False))}
T = {k: [] for k in bs}
ratios = []
with torch.no_grad():
    for k in bs:
        for batch in w.batches: bs[k](batch)
    for rep in range(reps):
        for i, batch in enumerate(w.batches):
            got = {}
            for k in (["on", "off"] if (rep + i) % 2 else ["off", "on"]):
                t = time.process_time(); bs[k](batch); got[k] = time.process_time() - t
                T[k].append(got[k])
            ratios.append(got["off"] / got["on"])
for k, v in T.items():
    print(k, "median %.2f min %.2f ms" % (statistics.median(v) * 1e3, min(v) * 1e3))
q = statistics.quantiles(ratios, n=4)
print("paired off/on median x%.3f quartiles x%.3f .. x%.3f over %d" % (statistics.median(ratios), q[0], q[2], len(ratios)))
