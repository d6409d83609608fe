"""The recorder belongs to the thread running the Batcher: other threads stay eager."""
import threading

import pytest
import torch

import phalanx
from phalanx.data import synthetic
from phalanx.models import TreeLSTM


def test_eager_calls_on_another_thread_stay_eager_while_a_batcher_records():
    torch.manual_seed(0)
    model = TreeLSTM(30, 8, embed_dim=4)
    trees = synthetic.random_trees(40, 0, 30)
    started, results, errors = threading.Event(), [], []

    def eager_worker():
        started.wait()
        with torch.no_grad():
            for t in trees[:20]:
                out = model(t)
                results.append(type(out))

    def slow_instance(tree):
        started.set()                       # the other thread runs while this one records
        return model(tree)

    worker = threading.Thread(target=eager_worker)
    worker.start()
    try:
        with torch.no_grad():
            got = phalanx.Batcher(slow_instance)(trees)
    except Exception as e:  # noqa: BLE001
        errors.append(e)
    worker.join(timeout=60)
    assert not errors
    assert results and all(r is torch.Tensor for r in results)
    with torch.no_grad():
        for g, t in zip(got, trees, strict=True):
            torch.testing.assert_close(g, model(t))


def test_two_batchers_on_two_threads_both_work():
    torch.manual_seed(0)
    models = [TreeLSTM(30, 8, embed_dim=4) for _ in range(2)]
    trees = synthetic.random_trees(30, 1, 30)
    out: dict = {}

    def run(k):
        batcher = phalanx.Batcher(models[k])
        with torch.no_grad():
            out[k] = [batcher(trees) for _ in range(5)]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    with torch.no_grad():
        for k in range(2):
            expected = [models[k](t) for t in trees]
            for got in out[k]:
                for g, e in zip(got, expected, strict=True):
                    torch.testing.assert_close(g, e)


def test_one_batcher_called_from_inside_its_own_run_is_a_clear_error():
    torch.manual_seed(0)
    model = TreeLSTM(30, 8, embed_dim=4)
    batcher = phalanx.Batcher(lambda t: batcher([t])[0])
    with pytest.raises(phalanx.PhalanxError, match="already running"):
        batcher(synthetic.random_trees(2, 0, 30))
    with torch.no_grad():
        assert len(phalanx.Batcher(model)(synthetic.random_trees(2, 0, 30))) == 2


def test_one_batcher_on_two_threads_at_once_is_a_clear_error():
    torch.manual_seed(0)
    model = TreeLSTM(30, 8, embed_dim=4)
    inside, release, errors = threading.Event(), threading.Event(), []

    def blocking(tree):
        inside.set()
        release.wait(timeout=60)
        return model(tree)

    batcher = phalanx.Batcher(blocking)
    first = threading.Thread(target=lambda: batcher(synthetic.random_trees(1, 0, 30)))
    first.start()
    inside.wait(timeout=60)
    try:
        batcher(synthetic.random_trees(1, 0, 30))
    except phalanx.PhalanxError as e:
        errors.append(e)
    finally:
        release.set()
        first.join(timeout=60)
    assert errors and "already running" in str(errors[0])
