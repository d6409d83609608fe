"""A/B of the in-call recording time (``stats.record_s``, process time) between two checkouts:
alternating subprocesses base / new (each runs s6-rec4-record-measure.py: warm-up, then the median
over ``reps`` repeats of the per-mini-batch record time), per case the median over runs.

Run: ``python docs/results/s6-rec4-record-ab.py CASES RUNS REPS BASE_ROOT NEW_ROOT``, e.g.
``treelstm-off,tagger-off 2 7 /tmp/base .`` where /tmp/base is ``git archive <commit>`` of the
base with its extension built (``python setup.py build_ext --inplace``)."""
import json, os, statistics, subprocess, sys
cases, runs, reps = sys.argv[1], int(sys.argv[2]), sys.argv[3]
roots = {"base": os.path.abspath(sys.argv[4]), "new": os.path.abspath(sys.argv[5])}
MEASURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s6-rec4-record-measure.py")
res = {}
for r in range(runs):
    order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
    for v in order:
        env = {**os.environ, "PYTHONPATH": roots[v], "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, MEASURE, cases, reps], env=env, cwd=roots[v],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:]); sys.exit(1)
        for line in out.stdout.splitlines():
            d = json.loads(line)
            res.setdefault(d["case"], {}).setdefault(v, []).append(d)
for case, by in res.items():
    b = [d["record_ms"] for d in by["base"]]; n = [d["record_ms"] for d in by["new"]]
    bm = [d["record_min_ms"] for d in by["base"]]; nm = [d["record_min_ms"] for d in by["new"]]
    nodes = by["new"][0]["nodes"]
    print(f"{case:14s} nodes {nodes:6.0f}  record ms median base {statistics.median(b):6.2f} new {statistics.median(n):6.2f} "
          f"(ratio {statistics.median(n)/statistics.median(b):.2f}); min base {min(bm):6.2f} new {min(nm):6.2f}; "
          f"us/node {1e3*statistics.median(b)/nodes:.2f} -> {1e3*statistics.median(n)/nodes:.2f}", flush=True)
