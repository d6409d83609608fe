"""Data-parallel training on ``torch.distributed``: every rank batches its own shard of each global
mini-batch with its own Batcher; DistributedDataParallel averages the gradients.

``ShardLoss`` is the module DDP wraps: its forward runs the rank's examples through a phalanx
Batcher over the per-instance ``model.loss`` and returns the rank's summed loss, scaled by
``world_size / loss terms in the GLOBAL batch``. DDP averages gradients over ranks, so the result is
the gradient of the global mean loss: 2 ranks x half a batch == 1 process x the whole batch.
phalanx's batched backward hands parameter gradients to autograd like any other op (one
``autograd.Function`` per flush), so DDP's reducer hooks fire on them and its all-reduce applies
unchanged; each rank's Batcher keeps its own op types, kernels and policy.

Launch with torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):

    torchrun --nproc-per-node 2 -m phalanx.cli train tagger

``spawn`` starts local workers without torchrun (tests and the throughput measurement), always
bounded by a timeout.
"""
from __future__ import annotations

import datetime
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..api import Batcher
from ..errors import PhalanxError
from .tasks import flat_losses


class DistributedError(PhalanxError):
    """A distributed run could not start, or a worker failed or ran past its time limit."""


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU tensors (phalanx executes on CPU today)."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device = torch.device("cpu")) -> Context:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); a plain
    process is rank 0 of 1 and starts no group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), timeout=datetime.timedelta(minutes=10))
    return Context(dist.get_rank(), dist.get_world_size())


def init_local(rank: int, world_size: int, port: int, timeout_s: float = 120.0) -> Context:
    """Join a gloo group on 127.0.0.1:``port`` (workers started by ``spawn``)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return Context(rank, world_size)


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Sequence[Any], ctx: Context) -> list:
    """This rank's part of a global mini-batch: every ``world_size``-th example from ``rank``."""
    return list(batch[ctx.rank::ctx.world_size])


class ShardLoss(nn.Module):
    """``forward(examples, scale)`` -> ``scale * sum of every per-instance loss term`` of
    ``model.loss`` over ``examples``, run as batched kernels by one Batcher (this rank's).

    NOTE: [Every parameter gets a gradient] a shard may not run every cell (a TreeLSTM shard of
    one-word sentences never runs the internal cell). DDP then waits for a gradient that never
    comes, and Adam would treat "no gradient" (skip) differently from "zero gradient" (step with
    its moments). So the loss adds ``0 * (one element of every parameter)``: an unused parameter
    gets an exact zero gradient on every rank and in single-process runs alike, and DDP needs no
    ``find_unused_parameters`` graph walk.
    """

    def __init__(self, model: nn.Module, policy: Any = "depth"):
        super().__init__()
        self.model = model
        self.batcher = Batcher(model.loss, policy=policy)

    def warm_up(self, examples: Sequence[Any]) -> None:
        """Record (without running) ``examples`` so op types get ids in a fixed order, whatever
        the first trained batch is (NOTE: [Exact resume] in checkpoint.py)."""
        self.batcher.record(examples)

    def forward(self, examples: Sequence[Any], scale: float) -> torch.Tensor:
        terms = flat_losses(self.batcher(examples))
        if not terms:
            raise PhalanxError("a rank got an empty shard: the global batch must hold at least world_size examples")
        touch = torch.stack([p.reshape(-1)[0] for p in self.parameters() if p.requires_grad]).sum() * 0.0
        return torch.stack([t.reshape(()) for t in terms]).sum() * scale + touch


def wrap(module: nn.Module, ctx: Context) -> nn.Module:
    """DDP around ``module`` in a distributed run (broadcasts rank 0's weights), else ``module``."""
    if not ctx.distributed:
        return module
    return nn.parallel.DistributedDataParallel(module)


def all_reduce_mean(value: float, ctx: Context) -> float:
    """Mean of a number over ranks (for logging the global loss)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker: Callable[..., None], world_size: int, args: tuple = (), timeout_s: float = 300.0) -> None:
    """Run ``worker(rank, world_size, port, *args)`` in ``world_size`` fresh processes (spawn start
    method) on a free local port. Returns when all exit cleanly; a failing worker or one still
    running after ``timeout_s`` terminates the rest and raises DistributedError."""
    import torch.multiprocessing as mp

    port = free_port()
    context = mp.start_processes(worker, args=(world_size, port, *args), nprocs=world_size, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise DistributedError(f"distributed workers still running after {timeout_s:.0f} s; terminated")
    except mp.ProcessRaisedException as e:
        raise DistributedError(f"a distributed worker failed: {str(e).strip().splitlines()[-1]}") from e
    except mp.ProcessExitedException as e:
        raise DistributedError(f"a distributed worker exited abnormally: {e}") from e
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()
        for p in context.processes:
            p.join(5)
