"""The DyNet peer: ``run_dynet`` (parent side) starts one subprocess per autobatch strategy; the
subprocess (``python -m phalanx.peers.dynet_worker CONFIG``) configures DyNet, builds the same
workload with the same seed (so the same weights and mini-batches), checks DyNet's outputs equal
the PyTorch model's, then times inference and prints one JSON line.

DyNet runs single-threaded on CPU; the subprocess gets the benchmark's thread count through
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and ``torch.set_num_threads`` alike."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

STRATEGIES = {1: "agenda", 2: "depth", 3: "agenda+depth"}
_MARKER = "PHALANX_PEER_RESULT "


def available() -> bool:
    return importlib.util.find_spec("dynet") is not None


def missing_note() -> str:
    return "DyNet peer skipped: dynet is not installed (pip install 'phalanx[peers]')"


def run_dynet(model: str, batch_size: int, hidden: int, batches: int, seed: int, repeats: int, threads: int,
              strategies=(1, 2, 3), mem_mb: int = 1024, timeout_s: float = 600.0) -> list[dict]:
    """One row per strategy: ``impl``, ``seconds_per_batch``, ``instances_per_s``, ``max_abs_diff``
    (DyNet vs the PyTorch model), or ``note`` when the subprocess failed or crashed."""
    from .dynet_models import BUILDERS

    rows = []
    for strategy in strategies:
        impl = f"dynet[{STRATEGIES[strategy]}]"
        if model not in BUILDERS:
            rows.append({"impl": impl, "note": f"no DyNet version of {model} (add one to peers/dynet_models.py)"})
            continue
        config = {"model": model, "batch_size": batch_size, "hidden": hidden, "batches": batches, "seed": seed,
                  "repeats": repeats, "threads": threads, "strategy": strategy, "mem_mb": mem_mb}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        try:
            done = subprocess.run([sys.executable, "-m", "phalanx.peers.dynet_worker", json.dumps(config)],
                                  capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            rows.append({"impl": impl, "note": f"timed out after {timeout_s:.0f} s"})
            continue
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(_MARKER)]
        if done.returncode == 0 and lines:
            rows.append({"impl": impl, **json.loads(lines[-1][len(_MARKER):])})
        elif done.returncode < 0:
            rows.append({"impl": impl, "note": f"crashed ({signal.Signals(-done.returncode).name})"})
        else:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"impl": impl, "note": f"failed: {last[:200]}"})
    return rows


def _flatten(results) -> list:
    return [t for r in results for t in (r if isinstance(r, (list, tuple)) else [r])]


def _worker(config: dict) -> dict:
    import dynet_config

    dynet_config.set(mem=str(config["mem_mb"]), autobatch=config["strategy"], random_seed=config["seed"] + 1)
    import dynet as dy
    import numpy as np
    import torch

    from ..bench.workloads import WORKLOADS
    from .dynet_models import BUILDERS

    torch.set_num_threads(config["threads"])
    name = config["model"]
    workload = WORKLOADS[name](config["batch_size"], config["hidden"], config["batches"], config["seed"])
    model = workload.model.eval()
    pc = dy.ParameterCollection()
    forward = BUILDERS[name](dy, pc, model)

    def run(batch) -> list:
        dy.renew_cg()
        outs = [e for example in batch for e in forward(example)]
        dy.forward(outs)
        return outs

    # Same outputs as the PyTorch model on every timed mini-batch, before any timing.
    eager, _ = workload.eager(model, False)
    max_diff = 0.0
    for b, batch in enumerate(workload.batches):
        with torch.no_grad():
            expected = [t.numpy() for t in _flatten(eager(batch))]
        got = [e.npvalue().reshape(x.shape) for e, x in zip(run(batch), expected, strict=True)]
        for k, (g, x) in enumerate(zip(got, expected, strict=True)):
            if not np.allclose(g, x, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"DyNet output {k} of mini-batch {b} differs from PyTorch by "
                                 f"{float(np.abs(g - x).max()):.3g}")
            max_diff = max(max_diff, float(np.abs(g - x).max()) if g.size else 0.0)
    run(workload.batches[0])                  # warm-up, as the in-process implementations get
    seconds = []
    for _ in range(config["repeats"]):
        for batch in workload.batches:
            start = time.perf_counter()
            run(batch)
            seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    return {"seconds_per_batch": median, "instances_per_s": config["batch_size"] / median, "samples": len(seconds),
            "max_abs_diff": max_diff, "strategy": config["strategy"]}


if __name__ == "__main__":
    print(_MARKER + json.dumps(_worker(json.loads(sys.argv[1]))), flush=True)
