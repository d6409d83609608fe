"""frontend/warm.py: a Recorder starts with what the previous Recorder of its table learned (NOTE:
[Warm recorder caches]) and drops it when the op types, training flags or device it was learned for
change; results stay those of eager PyTorch throughout."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.frontend.warm import RecorderCaches, caches_for
from phalanx.ir import columns
from phalanx.models.tagger import BiLSTMTagger
from tests.oracle import assert_matches_eager
from tests.unit.test_columns import python_cell_calls


def _sentences(n: int, seed: int = 0) -> list:
    return [[1 + (k * 7 + j + seed) % 19 for j in range(1 + (k + seed) % 6)] for k in range(n)]




@pytest.mark.skipif(not columns.NATIVE, reason="the Python twin calls the recorder's Python path by design")
def test_the_next_mini_batch_records_every_cell_call_natively(monkeypatch):
    torch.manual_seed(0)
    model = BiLSTMTagger(20, hidden=8).eval()
    batcher = phalanx.Batcher(model)
    batcher.record(_sentences(5))
    calls = python_cell_calls(monkeypatch)
    graph = batcher.record(_sentences(9, seed=3))
    assert calls == [] and graph.num_nodes > 9 * 5
    with torch.no_grad():
        assert_matches_eager(model, _sentences(7, seed=1), batcher=batcher)
    assert calls == []


def test_caches_are_dropped_when_training_flags_change_and_results_stay_eager():
    torch.manual_seed(1)
    model = BiLSTMTagger(20, hidden=8)
    params = list(model.parameters())
    batcher = phalanx.Batcher(model)
    sentences = _sentences(6)
    model.eval()
    assert_matches_eager(model, sentences, batcher=batcher)
    learned_in_eval = batcher.table.recorder_caches
    assert learned_in_eval.splits        # the LSTM steps' input split was learned
    model.train()
    assert_matches_eager(model.loss, [(s, [t % 17 for t in s]) for s in sentences], params=params, train=True,
                         batcher=phalanx.Batcher(model.loss, table=batcher.table))
    assert batcher.table.recorder_caches is not learned_in_eval
    model.eval()
    assert_matches_eager(model, _sentences(4, seed=2), batcher=batcher)


def test_caches_are_dropped_when_the_table_is_cleared_or_evicted():
    torch.manual_seed(2)
    model = BiLSTMTagger(20, hidden=8).eval()
    batcher = phalanx.Batcher(model, max_signatures=3)     # evicted (and renumbered) at every call
    for seed in range(3):
        assert_matches_eager(model, _sentences(5, seed), batcher=batcher)
    learned = batcher.table.recorder_caches
    model.fwd.lstm = nn.LSTMCell(8, 8)                     # a structure change clears the table
    assert_matches_eager(model, _sentences(5, 4), batcher=batcher)
    assert batcher.table.recorder_caches is not learned


def test_validity_follows_the_table_and_the_device():
    torch.manual_seed(3)
    model = BiLSTMTagger(20, hidden=8).eval()
    batcher = phalanx.Batcher(model)
    batcher.record(_sentences(3))
    table = batcher.table
    caches = table.recorder_caches
    cpu = torch.device("cpu")
    assert caches.sigs and caches.valid(table, cpu) and caches_for(table, cpu) is caches
    assert not caches.valid(table, torch.device("meta"))
    sid, sig = next(iter(caches.sigs.items()))
    table.sigs[sid] = None            # as if eviction put another op type at this id
    assert not caches.valid(table, cpu)
    table.sigs[sid] = sig
    table.clear()
    assert not caches.valid(table, cpu)
    assert isinstance(caches_for(table, cpu), RecorderCaches) and table.recorder_caches is not caches
