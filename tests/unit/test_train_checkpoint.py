"""Checkpoints: a resumed run is bit-identical to the uninterrupted one; bad files fail clearly."""
import os
import random

import numpy as np
import pytest
import torch

from phalanx.train import CheckpointError, TrainConfig, Trainer
from phalanx.train import checkpoint as ckpt
from phalanx.train.loop import seed_everything
from phalanx.train.tasks import TASKS


@pytest.fixture(scope="module")
def tasks():
    return {name: make(24) for name, make in TASKS.items()}


def _config(model, out, policy="depth", hidden=8):
    return TrainConfig(model=model, epochs=2, hidden=hidden, lr=0.01, batch_size=4, seed=3, policy=policy,
                       out=str(out), eval_every=5)


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


@pytest.mark.parametrize("model,policy", [("tagger", "fsm"), ("treelstm", "depth")])
def test_resumed_run_is_bit_identical_to_the_uninterrupted_one(tmp_path, tasks, model, policy):
    task = tasks[model]
    straight = Trainer(task, _config(model, tmp_path / "a", policy))
    initial = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.train_steps()
    total = straight.global_step
    assert total == 2 * (len(task.train) // 4) == 12
    draws = _draws()

    first = Trainer(task, _config(model, tmp_path / "b", policy))
    first.train_steps(7)                       # past an epoch end and an evaluation
    path = str(tmp_path / "mid.pt")
    first.save(path)
    del first
    seed_everything(12345)                      # a new process state: every RNG elsewhere
    resumed = Trainer(task, _config(model, tmp_path / "c", policy), resume=path)
    assert (resumed.epoch, resumed.step_in_epoch, resumed.global_step) == (1, 1, 7)
    resumed.train_steps()
    assert resumed.global_step == total

    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert any(not torch.equal(v, straight.model.state_dict()[k]) for k, v in initial.items())  # it trained
    assert resumed.history.loss == straight.history.loss
    assert resumed.history.dev_accuracy == straight.history.dev_accuracy
    assert _draws() == draws                    # python, numpy and torch RNGs continue identically
    for group_a, group_b in zip(straight.optimizer.state_dict()["state"].values(),
                                resumed.optimizer.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(group_a[k], group_b[k]) for k in group_a)


def test_fsm_policy_is_stored_as_json_and_restored_not_retrained(tmp_path, tasks):
    trainer = Trainer(tasks["tagger"], _config("tagger", tmp_path, "fsm"))
    trainer.train_steps(2)
    path = str(tmp_path / "ckpt.pt")
    trainer.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["policy_json"] and os.path.exists(tmp_path / "policy.fsm.json")
    resumed = Trainer(tasks["tagger"], _config("tagger", tmp_path, "fsm"), resume=path)
    assert resumed.policy.table == trainer.policy.table
    assert resumed.policy.type_names == trainer.policy.type_names


def test_rng_states_round_trip_through_tensors():
    seed_everything(7)
    random.random(), np.random.rand(3), torch.rand(2), np.random.randn()   # numpy caches a gaussian
    state = ckpt.capture_rng()
    expected = (random.random(), np.random.randn(4).tolist(), torch.rand(3).tolist())
    seed_everything(99)
    ckpt.restore_rng(state)
    assert (random.random(), np.random.randn(4).tolist(), torch.rand(3).tolist()) == expected


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tasks):
    out = tmp_path_factory.mktemp("saved")
    trainer = Trainer(tasks["tagger"], _config("tagger", out))
    trainer.train_steps(1)
    path = out / "good.pt"
    trainer.save(str(path))
    return path


def test_truncated_checkpoint_names_the_file(tmp_path, tasks, saved):
    cut = tmp_path / "cut.pt"
    data = saved.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{cut}.*corrupt or truncated"):
        Trainer(tasks["tagger"], _config("tagger", tmp_path), resume=str(cut))


def test_garbage_and_missing_files_name_the_file(tmp_path, tasks):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match=str(garbage)):
        Trainer(tasks["tagger"], _config("tagger", tmp_path), resume=str(garbage))
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        ckpt.load(tmp_path / "nope.pt")


class _Arbitrary:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"format": ckpt.FORMAT, "thing": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        ckpt.load(path)


def test_a_plain_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=f"{path} is not a phalanx training checkpoint"):
        ckpt.load(path)


def test_checkpoint_of_another_model_or_hidden_size_names_the_file(tmp_path, tasks, saved):
    with pytest.raises(CheckpointError, match=f"{saved} is for another model.*model 'tagger' .*'treelstm'"):
        Trainer(tasks["treelstm"], _config("treelstm", tmp_path), resume=str(saved))
    with pytest.raises(CheckpointError, match=f"{saved} is for another model.*hidden 8 .*16"):
        Trainer(tasks["tagger"], _config("tagger", tmp_path, hidden=16), resume=str(saved))


def test_missing_weights_name_the_file(tmp_path, tasks, saved):
    payload = torch.load(saved, weights_only=True)
    del payload["model_state"]["scorer.out.weight"]
    broken = tmp_path / "broken.pt"
    ckpt.save(broken, {k: v for k, v in payload.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match=f"{broken} does not fit this model"):
        Trainer(tasks["tagger"], _config("tagger", tmp_path), resume=str(broken))
