"""The DyNet peer: same outputs as the PyTorch model when DyNet is installed (the worker checks
every mini-batch before timing and fails otherwise); a crash or a missing DyNet is a note, never
an exception."""
import subprocess
import sys

import pytest

from phalanx.bench import suite
from phalanx.peers import dynet_worker
from phalanx.peers.dynet_models import BUILDERS
from tests.models.zoo_checks import requires_jieba

needs_dynet = pytest.mark.skipif(not dynet_worker.available(), reason="dynet is not installed (phalanx[peers])")
CHINESE = {"lattice_gru", "lattice_lstm"}                  # lattices over UD Chinese need the jieba lexicon


@needs_dynet
@pytest.mark.parametrize("model", [pytest.param(m, marks=requires_jieba) if m in CHINESE else m
                                   for m in sorted(BUILDERS)])
def test_dynet_computes_what_the_pytorch_model_computes(model):
    rows = dynet_worker.run_dynet(model, batch_size=3, hidden=8, batches=2, seed=1, repeats=1, threads=1,
                                  strategies=(3,))
    assert len(rows) == 1 and "note" not in rows[0], rows
    assert rows[0]["impl"] == "dynet[agenda+depth]" and rows[0]["samples"] == 2
    assert 0.0 <= rows[0]["max_abs_diff"] < 1e-4 and rows[0]["instances_per_s"] > 0


@needs_dynet
def test_lattice_gru_matches_pytorch_under_the_other_autobatch_strategies():
    """Nodes with several predecessors (word arcs) averaged, batched by agenda and by depth
    (agenda+depth is the parametrized test above)."""
    rows = dynet_worker.run_dynet("lattice_gru_synthetic", batch_size=4, hidden=6, batches=1, seed=2, repeats=1,
                                  threads=1, strategies=(1, 2))
    assert [r["impl"] for r in rows] == ["dynet[agenda]", "dynet[depth]"]
    for row in rows:
        assert "note" not in row, row
        assert 0.0 <= row["max_abs_diff"] < 1e-4 and row["samples"] == 1


def test_a_model_without_a_dynet_version_is_a_note():
    rows = dynet_worker.run_dynet("no-such-model", 3, 8, 1, 0, 1, 1, strategies=(1, 3))
    note = "no DyNet version of no-such-model (add one to peers/dynet_models.py)"
    assert rows == [{"impl": "dynet[agenda]", "note": note}, {"impl": "dynet[agenda+depth]", "note": note}]


class FakePeer:
    """Stands in for DynetPeer: fixed seconds per mini-batch, or a failure after ``fail_after`` calls."""

    def __init__(self, impl, seconds, fail_after=None):
        self.impl, self.seconds, self.fail_after = impl, seconds, fail_after
        self.note, self.facts, self.calls, self.closed = None, {"max_abs_diff": 0.0}, [], False

    def wait_ready(self):
        return True

    def time_batch(self, index):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            self.note = "crashed (SIGSEGV)"
            return None
        self.calls.append(index)
        return self.seconds

    def close(self):
        self.closed = True


def test_peers_are_timed_round_robin_with_ratios_and_failures_as_notes(monkeypatch):
    fakes = [FakePeer("dynet[agenda]", 1e-4), FakePeer("dynet[depth]", 5e-5), FakePeer("dynet[agenda+depth]", 1e-5, 2)]
    monkeypatch.setattr(dynet_worker, "available", lambda: True)
    monkeypatch.setattr(dynet_worker, "DynetPeer", lambda *a: fakes[a[-1] - 1])
    settings = suite.Settings(hidden=8, batches=2, repeats=2, policies=("depth",), peers=("dynet",))
    payload = suite.run_workload("treelstm", 3, settings)
    rows = {r["impl"]: r for r in payload["rows"]}
    assert list(rows) == ["eager", "manual", "phalanx[depth]", "dynet[agenda]", "dynet[depth]", "dynet[agenda+depth]"]
    assert fakes[0].calls == [0, 0, 1, 0, 1] and all(f.closed for f in fakes)   # warm-up, then 2 rounds
    assert rows["dynet[agenda+depth]"] == {"impl": "dynet[agenda+depth]", "note": "crashed (SIGSEGV)"}
    depth = rows["dynet[depth]"]
    assert depth["seconds_per_batch"] == 5e-5 and depth["vs_dynet"] == 1.0 and depth["max_abs_diff"] == 0.0
    assert rows["dynet[agenda]"]["vs_dynet"] == pytest.approx(0.5)
    assert depth["vs_eager"] == pytest.approx(rows["eager"]["seconds_per_batch"] / 5e-5)
    assert rows["phalanx[depth]"]["vs_dynet"] == pytest.approx(5e-5 / rows["phalanx[depth]"]["seconds_per_batch"])
    assert payload["notes"] == []
    gap = payload["dynet_gap"]
    assert (gap["phalanx"], gap["dynet"], gap["target"]) == ("phalanx[depth]", "dynet[depth]", 2.0)
    assert gap["ratio"] == pytest.approx(rows["phalanx[depth]"]["vs_dynet"])


def test_a_crashing_subprocess_becomes_a_note(monkeypatch):
    """The real DynetPeer protocol against a stand-in process that segfaults after saying ready."""
    script = ("import os, signal, sys; print('PHALANX_PEER ' + '{\"max_abs_diff\": 0.0}', flush=True); "
              "sys.stdin.readline(); os.kill(os.getpid(), signal.SIGSEGV)")
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: real_popen([sys.executable, "-c", script], **kw))
    peer = dynet_worker.DynetPeer("treelstm", 3, 8, 1, 0, 1, strategy=2)
    assert peer.wait_ready() and peer.facts == {"max_abs_diff": 0.0}
    assert peer.time_batch(0) is None and peer.note == "crashed (SIGSEGV)"
    assert peer.time_batch(0) is None
    peer.close()


def test_a_failing_or_silent_subprocess_becomes_a_note(monkeypatch):
    real_popen = subprocess.Popen
    script = "import sys; sys.exit('DyNet output 0 of mini-batch 0 differs from PyTorch by 0.5')"
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: real_popen([sys.executable, "-c", script], **kw))
    peer = dynet_worker.DynetPeer("treelstm", 3, 8, 1, 0, 1, strategy=1)
    assert not peer.wait_ready()
    assert peer.note == "failed: DyNet output 0 of mini-batch 0 differs from PyTorch by 0.5"
    peer.close()
    script = "import time; time.sleep(30)"
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: real_popen([sys.executable, "-c", script], **kw))
    peer = dynet_worker.DynetPeer("treelstm", 3, 8, 1, 0, 1, strategy=1, timeout_s=0.5)
    assert peer.time_batch(0) is None and peer.note == "timed out after 0 s"
    peer.close()


def test_missing_dynet_is_one_note_and_no_rows(monkeypatch):
    monkeypatch.setattr(dynet_worker, "available", lambda: False)
    settings = suite.Settings(hidden=8, batches=1, repeats=1, policies=("depth",), peers=("dynet",))
    payload = suite.run_workload("treelstm", 3, settings)
    assert [r["impl"] for r in payload["rows"]] == ["eager", "manual", "phalanx[depth]"]
    assert payload["notes"] == [dynet_worker.missing_note()]
