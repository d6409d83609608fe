"""Training checkpoints that resume a run exactly, loaded with ``torch.load(weights_only=True)``.

A checkpoint is one dict of tensors, numbers, strings, lists and dicts (nothing pickled as an
object, so loading cannot run code):

- ``format`` / ``version``; ``model`` (task name) and ``config`` (hidden size, vocabulary size,
  classes, batch size, lr, seed, policy...): what the weights and the run belong to;
- ``model_state`` and ``optimizer_state`` (``state_dict``s);
- ``policy_json``: the learned fsm policy as its own JSON text (``FSMPolicy.to_json``), or None;
- ``epoch``, ``step_in_epoch`` (batches of ``order`` already trained), ``global_step`` and
  ``order``: the permutation of the training examples for ``epoch`` (data order);
- ``rng``: every random state (python ``random``, numpy's global generator, torch CPU) as tensors;
- ``history`` (the learning curve so far) and ``best_dev``.

NOTE: [Exact resume] the remaining steps of a resumed run see the same weights, optimizer moments,
batches in the same order, the same batching policy table and the same random states as the
uninterrupted run, and the training Batcher assigns op-type ids in the same order
(``loop.Trainer`` records a fixed sample first), so schedules and the order in which batched
backward sums parameter gradients agree: parameters come out bit-identical
(tests/unit/test_train_checkpoint.py).
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from ..errors import PhalanxError

FORMAT = "phalanx-train-checkpoint"
VERSION = 1
# Config entries that must match for a checkpoint to load into a run (the rest may change on resume,
# e.g. more epochs).
SHAPE_KEYS = ("model", "hidden", "vocab_size", "num_classes")


class CheckpointError(PhalanxError):
    """A checkpoint file is unreadable, corrupt, truncated, or for another model / configuration;
    the message names the file."""


# *** random states as tensors ***

def capture_rng() -> dict[str, Any]:
    """Python, numpy (global) and torch CPU random states, as tensors and numbers."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = rng["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(rng["torch"])


# *** save / load ***

def save(path: "str | os.PathLike", payload: dict[str, Any]) -> None:
    """Write ``payload`` (format and version added) atomically: a crash never leaves half a file
    under ``path``."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load(path: "str | os.PathLike", expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``. ``expect``: config values it must match
    (``SHAPE_KEYS`` that are present). Any problem raises CheckpointError naming ``path``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # truncated zip, random bytes, a pickled object weights_only refuses...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a phalanx training checkpoint "
                              f"(format {FORMAT!r} expected)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has version {payload.get('version')!r}; this phalanx reads "
                              f"version {VERSION}")
    missing = [k for k in ("config", "model_state", "optimizer_state", "epoch", "step_in_epoch", "global_step",
                           "order", "rng", "history") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if expect:
        config = payload["config"]
        wrong = [f"{k} {config.get(k)!r} (this run: {expect[k]!r})" for k in SHAPE_KEYS
                 if k in expect and config.get(k) != expect[k]]
        if wrong:
            raise CheckpointError(f"checkpoint {path} is for another model or configuration: {'; '.join(wrong)}")
    return payload


def load_model_state(path: "str | os.PathLike", module: torch.nn.Module, state: dict) -> None:
    """``module.load_state_dict(state)``, with a mismatch named after the checkpoint file."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {os.fspath(path)} does not fit this model: "
                              f"{str(e).splitlines()[0]}") from e


def load_optimizer_state(path: "str | os.PathLike", optimizer: torch.optim.Optimizer, state: dict) -> None:
    try:
        optimizer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {os.fspath(path)}: optimizer state does not fit this run: "
                              f"{str(e).splitlines()[0]}") from e
