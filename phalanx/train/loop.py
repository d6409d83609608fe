"""The training loop behind ``phalanx train MODEL``: Adam over phalanx-batched per-instance losses,
a progress bar with loss and throughput, periodic dev accuracy, best and last checkpoints, final
test accuracy next to the majority-class baseline, and a learning-curve PNG.

Data order: epoch ``e`` visits the training examples in ``randperm`` order from a generator seeded
with ``(seed, e)``, in full batches of ``batch_size`` (the last partial batch is dropped, so every
world size sees the same global batches). Each rank trains on its shard of every global batch
(distributed.py).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import PhalanxError
from ..schedule.fsm import FSMPolicy
from . import checkpoint as ckpt
from .distributed import Context, ShardLoss, all_reduce_mean, shard, wrap
from .tasks import Task, predictions

# Built-in defaults: a few minutes on a 2-core CPU, well above the majority baseline.
DEFAULTS: dict[str, dict[str, Any]] = {
    "tagger": {"epochs": 6, "hidden": 64, "lr": 0.005, "batch_size": 32},
    "treelstm": {"epochs": 8, "hidden": 64, "lr": 0.005, "batch_size": 32},
}
FSM_SAMPLES = 4         # training mini-batches an fsm policy learns its table on
EVAL_CHUNK = 256        # examples per evaluation call


@dataclass
class TrainConfig:
    model: str
    epochs: int
    hidden: int
    lr: float
    batch_size: int
    seed: int = 0
    policy: str = "fsm"
    out: str = "runs/train"
    eval_every: int = 0            # steps between dev evaluations; 0: at the end of every epoch
    max_steps: int | None = None   # stop early (a last checkpoint is written): quick checks, tests
    max_sentences: int | None = None
    threads: int = 1

    @classmethod
    def with_defaults(cls, model: str, **given) -> "TrainConfig":
        if model not in DEFAULTS:
            raise PhalanxError(f"unknown model {model!r}; expected one of {sorted(DEFAULTS)}")
        values = {**DEFAULTS[model], **{k: v for k, v in given.items() if v is not None}}
        return cls(model=model, **values)

    def check(self) -> None:
        for name in ("epochs", "hidden", "batch_size"):
            if getattr(self, name) < 1:
                raise PhalanxError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise PhalanxError(f"--lr must be > 0, got {self.lr}")
        if self.policy not in ("depth", "agenda", "fsm"):
            raise PhalanxError(f"--policy must be depth, agenda or fsm, got {self.policy!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


@dataclass
class History:
    """The learning curve: the global mean loss of every step, dev accuracy at every evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    dev_step: list[int] = field(default_factory=list)
    dev_accuracy: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Trainer:
    """One training run (one rank of it). ``run()`` trains to the end; ``train_steps(n)`` trains
    ``n`` steps; ``save(path)`` / ``resume(path)`` checkpoint it (checkpoint.py)."""

    def __init__(self, task: Task, config: TrainConfig, ctx: Context = Context(), resume: str | None = None):
        config.check()
        if config.batch_size < ctx.world_size:
            raise PhalanxError(f"--batch-size {config.batch_size} is smaller than the {ctx.world_size} ranks")
        self.task, self.config, self.ctx = task, config, ctx
        payload = ckpt.load(resume, self.shape()) if resume else None
        seed_everything(config.seed)
        self.model = task.build_model(config.hidden)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.policy = self._policy(payload)
        self.shard_loss = ShardLoss(self.model, self.policy)
        self.shard_loss.warm_up(task.train[:config.batch_size])
        self.step_module = wrap(self.shard_loss, ctx)
        self.eval_batcher = None   # made on first use (its first call runs under no_grad)
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.order = epoch_order(len(task.train), config.seed, 0)
        self.history = History()
        self.best_dev = -1.0
        if payload is not None:
            self._restore(resume, payload)

    # *** configuration ***
    def shape(self) -> dict[str, Any]:
        return {"model": self.task.name, "hidden": self.config.hidden, "vocab_size": len(self.task.vocab),
                "num_classes": self.task.num_classes}

    def _policy(self, payload):
        if self.config.policy != "fsm":
            return self.config.policy
        if payload is not None and payload.get("policy_json"):
            return FSMPolicy.from_json(json.loads(payload["policy_json"]), source="checkpoint fsm policy",
                                       unknown_types="fallback")
        # Learned once, before training, on the first shard-sized training batches in file order:
        # every rank learns the same table, and a checkpoint carries it.
        size = max(1, self.config.batch_size // self.ctx.world_size)
        samples = [self.task.train[i * size:(i + 1) * size] for i in range(FSM_SAMPLES)]
        policy = FSMPolicy.train(self.model.loss, [s for s in samples if s], seed=self.config.seed)
        policy.unknown_types = "fallback"
        return policy

    # *** data ***
    @property
    def steps_per_epoch(self) -> int:
        return len(self.task.train) // self.config.batch_size

    def _global_batch(self, index: int) -> list:
        b = self.config.batch_size
        return [self.task.train[i] for i in self.order[index * b:(index + 1) * b].tolist()]

    # *** training ***
    def step(self, batch: list) -> float:
        """One optimizer step on a global batch; returns its global mean loss."""
        scale = self.ctx.world_size / self.task.loss_terms(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.step_module(shard(batch, self.ctx), scale)
        loss.backward()
        self.optimizer.step()
        return all_reduce_mean(float(loss.detach()), self.ctx)

    def finished(self) -> bool:
        return self.epoch >= self.config.epochs or (
            self.config.max_steps is not None and self.global_step >= self.config.max_steps)

    def train_steps(self, count: int | None = None, on_step: Callable | None = None,
                    on_eval: Callable | None = None, evaluate: bool = True) -> None:
        """Train ``count`` steps (None: to the end), evaluating dev and checkpointing on schedule
        (``evaluate=False``: never, e.g. while measuring throughput)."""
        done = 0
        while not self.finished() and (count is None or done < count):
            batch = self._global_batch(self.step_in_epoch)
            loss = self.step(batch)
            self.step_in_epoch += 1
            self.global_step += 1
            done += 1
            self.history.step.append(self.global_step)
            self.history.loss.append(loss)
            if on_step:
                on_step(self, batch, loss)
            epoch_end = self.step_in_epoch >= self.steps_per_epoch
            if epoch_end:
                self.epoch += 1
                self.step_in_epoch = 0
                self.order = epoch_order(len(self.task.train), self.config.seed, self.epoch)
            every = self.config.eval_every
            if evaluate and ((every and self.global_step % every == 0) or (not every and epoch_end)):
                self.evaluate_dev(on_eval)

    def evaluate_dev(self, on_eval: Callable | None = None) -> float | None:
        """Dev accuracy, best / last checkpoints. Only rank 0 evaluates and writes (the others go on
        to the next step and wait for it in DDP's all-reduce); other ranks return None."""
        if not self.ctx.is_main:
            return None
        accuracy = self.accuracy(self.task.dev)
        self.history.dev_step.append(self.global_step)
        self.history.dev_accuracy.append(accuracy)
        improved = accuracy > self.best_dev
        if improved:
            self.best_dev = accuracy
        if improved:
            self.save(os.path.join(self.config.out, "best.pt"))
        self.save(os.path.join(self.config.out, "last.pt"))
        if on_eval:
            on_eval(self, accuracy, improved)
        return accuracy

    def accuracy(self, examples: list) -> float:
        """Fraction of labels predicted right (tokens for the tagger, sentences for the TreeLSTM)."""
        if self.eval_batcher is None:
            from ..api import Batcher

            model = self.model
            eval_policy = "depth" if self.config.policy == "fsm" else self.config.policy
            self.eval_batcher = Batcher(lambda example: model(example[0]), policy=eval_policy)
        correct = total = 0
        with torch.no_grad():
            for lo in range(0, len(examples), EVAL_CHUNK):
                chunk = examples[lo:lo + EVAL_CHUNK]
                for example, result in zip(chunk, self.eval_batcher(chunk), strict=True):
                    gold = self.task.labels(example)
                    correct += sum(p == y for p, y in zip(predictions(result), gold, strict=True))
                    total += len(gold)
        return correct / total if total else 0.0

    # *** checkpoints ***
    def state(self) -> dict[str, Any]:
        policy_json = json.dumps(self.policy.to_json()) if isinstance(self.policy, FSMPolicy) else None
        return {
            "config": {**self.shape(), **{k: v for k, v in asdict(self.config).items() if k != "model"}},
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "policy_json": policy_json,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "order": self.order.clone(),
            "rng": ckpt.capture_rng(),
            "history": self.history.to_dict(),
            "best_dev": self.best_dev,
            "world_size": self.ctx.world_size,
        }

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        ckpt.save(path, self.state())
        if isinstance(self.policy, FSMPolicy):
            self.policy.save(os.path.join(os.path.dirname(path) or ".", "policy.fsm.json"))

    def _restore(self, path: str, payload: dict) -> None:
        ckpt.load_model_state(path, self.model, payload["model_state"])
        ckpt.load_optimizer_state(path, self.optimizer, payload["optimizer_state"])
        self.epoch, self.step_in_epoch = int(payload["epoch"]), int(payload["step_in_epoch"])
        self.global_step = int(payload["global_step"])
        order = payload["order"]
        if not isinstance(order, torch.Tensor) or order.numel() != len(self.task.train):
            raise ckpt.CheckpointError(f"checkpoint {path}: its data order covers "
                                       f"{getattr(order, 'numel', lambda: '?')()} examples, this run has "
                                       f"{len(self.task.train)}")
        self.order = order.clone()
        self.history = History(**payload["history"])
        self.best_dev = float(payload.get("best_dev", -1.0))
        ckpt.restore_rng(payload["rng"])

    def load_weights(self, path: str) -> None:
        """Model weights of another checkpoint of this run (the best one, for the test accuracy)."""
        payload = ckpt.load(path, self.shape())
        ckpt.load_model_state(path, self.model, payload["model_state"])
