"""The DyNet peer: same outputs as the PyTorch model when DyNet is installed (the worker checks
every mini-batch before timing and fails otherwise); a crash or a missing DyNet is a note, never
an exception."""
import subprocess

import pytest

from phalanx.bench import suite
from phalanx.peers import dynet_worker
from phalanx.peers.dynet_models import BUILDERS

needs_dynet = pytest.mark.skipif(not dynet_worker.available(), reason="dynet is not installed (phalanx[peers])")


@needs_dynet
@pytest.mark.parametrize("model", sorted(BUILDERS))
def test_dynet_computes_what_the_pytorch_model_computes(model):
    rows = dynet_worker.run_dynet(model, batch_size=3, hidden=8, batches=2, seed=1, repeats=1, threads=1,
                                  strategies=(3,))
    assert len(rows) == 1 and "note" not in rows[0], rows
    assert rows[0]["impl"] == "dynet[agenda+depth]" and rows[0]["samples"] == 2
    assert 0.0 <= rows[0]["max_abs_diff"] < 1e-4 and rows[0]["instances_per_s"] > 0


def test_a_model_without_a_dynet_version_is_a_note():
    rows = dynet_worker.run_dynet("no-such-model", 3, 8, 1, 0, 1, 1, strategies=(1, 3))
    note = "no DyNet version of no-such-model (add one to peers/dynet_models.py)"
    assert rows == [{"impl": "dynet[agenda]", "note": note}, {"impl": "dynet[agenda+depth]", "note": note}]


def test_a_crashing_peer_becomes_a_row_note(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, -11, "", ""))
    assert dynet_worker.run_dynet("treelstm", 3, 8, 1, 0, 1, 1, strategies=(2,)) == [
        {"impl": "dynet[depth]", "note": "crashed (SIGSEGV)"}]

    def too_slow(*a, **k):
        raise subprocess.TimeoutExpired(a, 5)

    monkeypatch.setattr(subprocess, "run", too_slow)
    assert dynet_worker.run_dynet("treelstm", 3, 8, 1, 0, 1, 1, strategies=(1,), timeout_s=5) == [
        {"impl": "dynet[agenda]", "note": "timed out after 5 s"}]


def test_missing_dynet_is_one_note_and_no_rows(monkeypatch):
    monkeypatch.setattr(dynet_worker, "available", lambda: False)
    settings = suite.Settings(hidden=8, batches=1, repeats=1, policies=("depth",), peers=("dynet",))
    payload = suite.run_workload("treelstm", 3, settings)
    assert [r["impl"] for r in payload["rows"]] == ["eager", "manual", "phalanx[depth]"]
    assert payload["notes"] == [dynet_worker.missing_note()]


def test_peer_rows_get_ratios_against_the_in_process_baselines(monkeypatch):
    found = [{"impl": "dynet[agenda]", "seconds_per_batch": 0.02, "instances_per_s": 150.0},
             {"impl": "dynet[depth]", "seconds_per_batch": 0.01, "instances_per_s": 300.0},
             {"impl": "dynet[agenda+depth]", "note": "crashed (SIGSEGV)"}]
    monkeypatch.setattr(dynet_worker, "available", lambda: True)
    monkeypatch.setattr(dynet_worker, "run_dynet", lambda *a, strategies, **k: [found[strategies[0] - 1]])
    rows = [{"impl": "eager", "seconds_per_batch": 0.04}, {"impl": "manual", "seconds_per_batch": 0.005},
            {"impl": "phalanx[fsm]", "seconds_per_batch": 0.008}]
    settings = suite.Settings(peers=("dynet",))
    peers = suite.peer_rows("treelstm", 3, settings, rows)
    assert [r["impl"] for r in peers] == ["dynet[agenda]", "dynet[depth]", "dynet[agenda+depth]"]
    assert peers[1]["vs_eager"] == pytest.approx(4.0) and peers[1]["vs_manual"] == pytest.approx(0.5)
    assert rows[2]["vs_dynet"] == pytest.approx(1.25) and peers[0]["vs_dynet"] == pytest.approx(0.5)
    assert "vs_dynet" not in peers[2]
    assert suite.peer_rows("treelstm", 3, suite.Settings(peers=("dynet",), train=True), rows) == []
