"""The DyNet peer: one long-lived subprocess per autobatch strategy (``DynetPeer``), timed
mini-batch by mini-batch on request, so the benchmark harness interleaves DyNet with the
in-process implementations (round-robin, like everything else it times).

The subprocess (``python -m phalanx.peers.dynet_worker CONFIG``) configures DyNet (memory,
autobatch: DyNet reads both once, before import), builds the same workload with the same seed
(so the same weights and mini-batches), checks DyNet's outputs equal the PyTorch model's on every
mini-batch, says it is ready, then answers ``run I`` with the seconds mini-batch I took (graph
construction and forward, as phalanx's time includes recording). It prints one marked JSON line
per answer. A crash (DyNet can segfault) or an error becomes the peer's ``note``.

DyNet runs single-threaded on CPU; the subprocess gets the benchmark's thread count through
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and ``torch.set_num_threads`` alike."""
from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

STRATEGIES = {1: "agenda", 2: "depth", 3: "agenda+depth"}
_MARKER = "PHALANX_PEER "


def available() -> bool:
    return importlib.util.find_spec("dynet") is not None


def missing_note() -> str:
    return "DyNet peer skipped: dynet is not installed (pip install 'phalanx[peers]')"


class DynetPeer:
    """DyNet with one autobatch strategy on one workload, in a subprocess. ``time_batch(i)`` gives
    the seconds of mini-batch ``i``, or None once the peer has failed (``note`` says why);
    ``facts`` holds what the subprocess reported when ready (``max_abs_diff`` vs PyTorch)."""

    def __init__(self, model: str, batch_size: int, hidden: int, batches: int, seed: int, threads: int,
                 strategy: int, mem_mb: int = 1024, timeout_s: float = 600.0):
        from .dynet_models import BUILDERS

        self.impl = f"dynet[{STRATEGIES[strategy]}]"
        self.note: str | None = None
        self.facts: dict = {}
        self.timeout_s = timeout_s
        self.proc = None
        if model not in BUILDERS:
            self.note = f"no DyNet version of {model} (add one to peers/dynet_models.py)"
            return
        config = {"model": model, "batch_size": batch_size, "hidden": hidden, "batches": batches, "seed": seed,
                  "threads": threads, "strategy": strategy, "mem_mb": mem_mb}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "phalanx.peers.dynet_worker", json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, bufsize=0)

    def wait_ready(self) -> bool:
        """Block until the subprocess has checked its outputs; False (with ``note``) if it failed."""
        if self.note is None and not self.facts:
            self.facts = self._reply() or {}
        return self.note is None

    def time_batch(self, index: int) -> float | None:
        if not self.wait_ready():
            return None
        try:
            self.proc.stdin.write(f"run {index}\n".encode())
        except OSError:
            pass                    # the process is gone: _reply reads the end of its output and says why
        reply = self._reply()
        return None if reply is None else reply["seconds"]

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass                # a pipe to a process that died: nothing left to flush
        self.proc = None

    def _reply(self) -> dict | None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.proc.kill()
                self.proc.wait()
                return self._fail(f"timed out after {self.timeout_s:.0f} s")
            line = self.proc.stdout.readline().decode()
            if line.startswith(_MARKER):
                return json.loads(line[len(_MARKER):])
            if line == "":
                code = self.proc.wait()
                if code < 0:
                    return self._fail(f"crashed ({signal.Signals(-code).name})")
                self._stderr.seek(0)
                last = (self._stderr.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                return self._fail(f"failed: {last[:200]}")

    def _fail(self, note: str) -> None:
        self.note = note
        return None


def run_dynet(model: str, batch_size: int, hidden: int, batches: int, seed: int, repeats: int, threads: int,
              strategies=(1, 2, 3), mem_mb: int = 1024, timeout_s: float = 600.0) -> list[dict]:
    """DyNet alone (not interleaved with anything): one row per strategy with ``seconds_per_batch``
    (median), ``instances_per_s`` and ``max_abs_diff``, or ``note`` when it failed."""
    import statistics

    rows = []
    for strategy in strategies:
        peer = DynetPeer(model, batch_size, hidden, batches, seed, threads, strategy, mem_mb, timeout_s)
        try:
            seconds = [peer.time_batch(0)]          # warm-up, as the harness gives everything
            seconds = [peer.time_batch(b) for _ in range(repeats) for b in range(batches)]
        finally:
            peer.close()
        if peer.note is not None:
            rows.append({"impl": peer.impl, "note": peer.note})
            continue
        median = statistics.median(seconds)
        rows.append({"impl": peer.impl, "seconds_per_batch": median, "instances_per_s": batch_size / median,
                     "samples": len(seconds), **peer.facts})
    return rows


def _flatten(results) -> list:
    return [t for r in results for t in (r if isinstance(r, (list, tuple)) else [r])]


def _serve(config: dict) -> None:
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
            diff = float(np.abs(g - x).max()) if g.size else 0.0
            if not np.allclose(g, x, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"DyNet output {k} of mini-batch {b} differs from PyTorch by {diff:.3g}")
            max_diff = max(max_diff, diff)
    print(_MARKER + json.dumps({"max_abs_diff": max_diff, "strategy": config["strategy"]}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[:1] != ["run"]:
            break
        batch = workload.batches[int(command[1])]
        start = time.perf_counter()
        run(batch)
        print(_MARKER + json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
