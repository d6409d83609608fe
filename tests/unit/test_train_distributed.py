"""Data-parallel training: 2 gloo processes on 127.0.0.1, each batching its shard with its own
Batcher under DDP, end with the parameters of 1 process over the same global batches. Every
spawned run is bounded by a timeout, so a hang fails instead of stalling the suite."""
import time

import pytest
import torch

from phalanx.train import TrainConfig, Trainer
from phalanx.train.distributed import Context, DistributedError, ShardLoss, shard, spawn
from phalanx.train.tasks import TASKS
from phalanx.train.workers import run_steps

STEPS = 4


def test_two_processes_match_one_process_over_the_same_global_batches(tmp_path):
    """Tagger (depth policy) and TreeLSTM (fsm policy learned per rank; a shard of one-word trees
    would leave the internal cell unused) in one spawned 2-process run."""
    configs = [TrainConfig(model=model, epochs=3, hidden=8, lr=0.02, batch_size=6, seed=1, policy=policy,
                           out=str(tmp_path), max_sentences=18)
               for model, policy in (("tagger", "depth"), ("treelstm", "fsm"))]
    parallel = run_steps(configs, world_size=2, steps=STEPS, timeout_s=150)
    for config, result in zip(configs, parallel, strict=True):
        single = Trainer(TASKS[config.model](config.max_sentences), config)
        initial = {k: v.clone() for k, v in single.model.state_dict().items()}
        single.train_steps(STEPS, evaluate=False)
        assert single.global_step == STEPS
        changed = 0
        for name, value in single.model.state_dict().items():
            torch.testing.assert_close(result["params"][name], value, rtol=1e-5, atol=1e-6,
                                       msg=f"{config.model} {name}")
            changed += not torch.equal(value, initial[name])
        assert changed == len(initial)    # every parameter moved, so the comparison is not vacuous


def test_a_step_follows_the_gradient_of_the_global_mean_loss(tmp_path):
    """The loss scaling (world_size / terms of the global batch) gives, for 1 process, the mean
    over every token of the batch: the same gradient as the eager per-instance loop."""
    config = TrainConfig(model="tagger", epochs=1, hidden=8, lr=0.1, batch_size=5, seed=2, out=str(tmp_path),
                         max_sentences=10)
    task = TASKS["tagger"](10)
    trainer = Trainer(task, config)
    batch = task.train[:5]
    eager = task.build_model(8)
    eager.load_state_dict(trainer.model.state_dict())
    terms = [t for x in batch for t in eager.loss(x)]
    (torch.stack(terms).sum() / len(terms)).backward()
    loss = trainer.step(batch)
    assert loss == pytest.approx(float(torch.stack(terms).detach().mean()), rel=1e-5)
    for (name, p), q in zip(trainer.model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_cell_the_shard_never_runs_gets_an_exact_zero_gradient():
    """One-word trees never run the TreeLSTM internal cell: its parameters get zero gradients (so
    DDP's reducer and Adam see every parameter), and the others the true gradient."""
    task = TASKS["treelstm"](None)
    one_word = [x for x in task.train if x[0].is_leaf][:3]
    assert len(one_word) == 3
    torch.manual_seed(0)
    model = task.build_model(8)
    ShardLoss(model)(one_word, 1 / 3).backward()
    eager = task.build_model(8)
    eager.load_state_dict(model.state_dict())
    torch.stack([eager.loss(x) for x in one_word]).mean().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        if name.startswith("internal."):
            assert q.grad is None and torch.equal(p.grad, torch.zeros_like(p))
        else:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_shards_partition_the_global_batch():
    batch = list(range(7))
    parts = [shard(batch, Context(rank, 3)) for rank in range(3)]
    assert sorted(x for p in parts for x in p) == batch
    assert parts[0] == [0, 3, 6]


def _sleeps(rank, world_size, port):
    time.sleep(60)


def _fails(rank, world_size, port):
    if rank == 1:
        raise ValueError("rank 1 broke")
    time.sleep(60)   # rank 0 would wait for it; spawn must stop it


def test_spawned_workers_are_stopped_at_the_timeout():
    start = time.monotonic()
    with pytest.raises(DistributedError, match="still running after 3 s"):
        spawn(_sleeps, 2, timeout_s=3)
    assert time.monotonic() - start < 30


def test_a_failing_worker_is_reported_and_the_others_stopped():
    start = time.monotonic()
    with pytest.raises(DistributedError, match="rank 1 broke"):
        spawn(_fails, 2, timeout_s=50)
    assert time.monotonic() - start < 45


def test_throughput_alternates_the_order_and_keeps_each_fastest_round(monkeypatch):
    from phalanx.train import workers

    calls, times = [], iter([4.0, 3.0, 2.5, 5.0])     # round 1: 1 then 2 processes; round 2: 2 then 1

    def fake_run_steps(configs, world_size, steps, warmup, timeout_s):
        calls.append(world_size)
        return [{"seconds": next(times)}]

    monkeypatch.setattr(workers, "run_steps", fake_run_steps)
    config = TrainConfig(model="tagger", epochs=1, hidden=8, lr=0.1, batch_size=10)
    rows = workers.measure_throughput(config, (1, 2), steps=2, rounds=2)
    assert calls == [1, 2, 2, 1]
    assert [r["seconds"] for r in rows] == [4.0, 2.5] and rows[1]["rounds_s"] == [3.0, 2.5]
    assert rows[0]["sentences_per_s"] == 20 / 4.0 and rows[1]["speedup"] == 4.0 / 2.5
