"""Where one phalanx NMT decode call (greedy, fibers, policy depth) spends its time, in CPU time of
this process (time.process_time: robust to other jobs on the cores), best of N repeats over the
bench's 2 mini-batches. Run: ``python docs/results/nmt-cost-breakdown.py [batch size] [repeats]``.

Prints (all per mini-batch): the call; ATen's own time inside it (torch.profiler self CPU of every
aten op: the kernels, including index_select/copies) against everything else (Python: recording,
fibers, planning, the executor's bookkeeping); the vocabulary projection (the [n, hidden] x
[hidden, vocab] addmm eager pays too) and the other big kernels; the executor's time per op type;
and the fibers' per-decision cost (resuming a fiber, recording a decoder step and its argmax,
reading the word back)."""
import collections
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import phalanx
from phalanx.bench import workloads
from phalanx.runtime import fibers

torch.set_num_threads(1)
clock = time.process_time
bs = int(sys.argv[1]) if len(sys.argv) > 1 else 64
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
w = workloads.nmt(bs, 256, 2)
fn = w.phalanx_fn(w.model, False)
b = phalanx.Batcher(fn, policy="depth")
nb = len(w.batches)
vocab = w.model.decoder.out.out_features

resume = {"s": 0.0, "n": 0}
_plain_rounds = fibers.Hub._run_rounds


def _timed_rounds(self):
    """Hub._run_rounds, timing the loop that resumes the suspended fibers (their recording)."""
    from phalanx.frontend import recorder
    while True:
        if not self.waiting and not len(self.rec.graph):
            break
        self._flush()
        if not self.waiting:
            break
        self.fiber_stats.decision_rounds += 1
        self.resuming, self.waiting = self.waiting, []
        self.rec = recorder.Recorder(self.batcher.table, self.device, self.token)
        recorder._SLOT.rec = self.rec
        t = clock()
        for fiber in self.resuming:
            self.rec.begin_instance(fiber.inst, fiber.phase)
            fiber.glet.switch()
        resume["s"] += clock() - t
        resume["n"] += len(self.resuming)
    self.results = self._collect_results()


with torch.no_grad():
    for batch in w.batches:
        b(batch)
    best = None
    for _ in range(reps):
        fibers.Hub._run_rounds = _timed_rounds
        resume.update(s=0.0, n=0)
        t = clock()
        split = collections.Counter()
        for batch in w.batches:
            b(batch)
            s = b.stats
            split.update(record=s.record_s, schedule=s.schedule_s, plan=s.plan_s, execute=s.execute_s)
        row = {"call": clock() - t, **split, "resume": resume["s"], "decisions": resume["n"]}
        if best is None or row["call"] < best["call"]:
            best = row
    fibers.Hub._run_rounds = _plain_rounds
    # ATen's own time: one profiled pass (the profiler adds its own cost; shares, not absolutes).
    start = clock()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in w.batches:
            b(batch)
    profiled = clock() - start
    b_op = phalanx.Batcher(fn, policy="depth", profile=True)
    for batch in w.batches:
        b_op(batch)
    per_op = collections.Counter()
    for batch in w.batches:
        b_op(batch)
        for name, r in b_op.stats.per_op.items():
            per_op[name] += r["forward_s"]

events = prof.key_averages(group_by_input_shape=True)
aten = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6
vocab_mm = sum(e.self_cpu_time_total for e in events
               if e.key == "aten::addmm" and e.input_shapes and e.input_shapes[0] == [vocab]) / 1e6
by_op = collections.Counter()
for e in events:
    if e.key.startswith("aten::"):
        by_op[e.key] += e.self_cpu_time_total / 1e6
ms = lambda x: f"{1e3 * x / nb:7.1f}"        # noqa: E731
print(f"nmt batch {bs}: {best['call'] * 1e3 / nb:.1f} ms per mini-batch (best of {reps}, process CPU time)")
print(f"  stages: record {ms(best['record'])}  schedule {ms(best['schedule'])}  plan {ms(best['plan'])}"
      f"  execute {ms(best['execute'])}  (wall-clock stats of the same calls)")
print(f"  fibers: {best['decisions'] / nb:.0f} resumes, {ms(best['resume'])} ms"
      f" = {1e6 * best['resume'] / max(best['decisions'], 1):.1f} us per decision (resume, record a step, read the word)")
print(f"  profiled pass {ms(profiled)} ms: ATen self time {ms(aten)} ms = {100 * aten / profiled:.0f}%;"
      f" vocab projection addmm {ms(vocab_mm)} ms = {100 * vocab_mm / profiled:.0f}%")
print("  top ATen ops (self ms per mini-batch): " + ", ".join(f"{k[6:]} {1e3 * v / nb:.1f}" for k, v in by_op.most_common(8)))
print("  executor per op type (ms per mini-batch, profile=True): "
      + ", ".join(f"{k} {1e3 * v / nb:.1f}" for k, v in per_op.most_common(8)))
