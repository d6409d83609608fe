"""Op types ("signatures"): what makes two recorded nodes batchable together.

A Signature is the callee (a cell or a torch op with its static arguments and shared parameters)
plus the abstract values of its per-instance operands. Two nodes with the same Signature run as one
batched kernel. Signatures are interned per SignatureTable to small ints (``sid``), which is what
the graph and the schedulers see.

Per-instance operands come in three kinds (``ArgKind``): LAZY (a value recorded earlier in this run,
read from an arena), NUMBER (a Python number passed to a cell, stacked into a 1-D tensor per batch)
and TENSOR (a concrete per-instance tensor, stacked per batch). Shared parameters and static
arguments are not operands: they are baked into ``fn`` and broadcast to the whole batch.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .aval import AVal


class ArgKind(enum.IntEnum):
    LAZY = 0     # read from an arena row
    NUMBER = 1   # Python number, per instance; torch.tensor(list) per batch
    TENSOR = 2   # concrete per-instance tensor; torch.stack(list) per batch


@dataclass(eq=False)
class Signature:
    """One op type. ``fn`` takes the per-instance operands in order and returns ONE instance's result.

    **Fields:**
    - ``sid``: index in its SignatureTable.
    - ``name``: what users see in errors and printouts (``cell TreeLSTMCell``, ``op torch.tanh``).
    - ``in_kinds`` / ``in_avals``: kind and (shape, dtype) of each per-instance operand.
    - ``out_avals``: the flattened outputs of one call; ``unflatten`` rebuilds the user structure.
    - ``grad_leaves``: tensors requiring grad that ``fn`` reads besides its operands (the cell's
      parameters), found once by walking the autograd graph of an example call.
    - ``kernel``: the batched callable, built on first execution (see runtime/kernels.py).
    """

    sid: int
    name: str
    fn: Callable[..., Any]
    in_kinds: tuple[ArgKind, ...]
    in_avals: tuple[AVal, ...]
    out_avals: tuple[AVal, ...]
    unflatten: Callable[[list], Any]
    flatten: Callable[[Any], tuple]
    grad_leaves: tuple[torch.Tensor, ...] = ()
    path: str = ""              # where the callee / its parameters live in the model ("fwd", "out.weight")
    single: bool = False        # fn returns one bare tensor (the recorder's fast return path)
    plain_tuple: bool = False   # fn returns a flat tuple of tensors (the second fast path)
    kernel: Any = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.num_outputs = len(self.out_avals)

    def describe(self) -> str:
        """Stable text of this type, the same in every process (used to fingerprint saved policies)."""
        ins = ",".join(f"{k.name.lower()}:{a}" for k, a in zip(self.in_kinds, self.in_avals, strict=True))
        outs = ",".join(map(repr, self.out_avals))
        at = f"@{self.path}" if self.path else ""
        return f"{self.name}{at}({ins})->({outs})"

    def __repr__(self) -> str:
        return f"<sig {self.sid} {self.describe()}>"


class SignatureTable:
    """Interns signatures by their recording key. Owned by one Batcher, so kernels, batching probes
    and shape inference are reused across calls."""

    def __init__(self, root: Any = None):
        self.by_key: dict[Any, Signature] = {}
        self.sigs: list[Signature] = []
        # id(module or parameter) -> its dotted name in the model, so two instances of one cell
        # class (a forward and a backward LSTM) have distinct, process-stable descriptions.
        self.paths: dict[int, str] = {}
        if isinstance(root, torch.nn.Module):
            self.paths.update((id(m), name) for name, m in root.named_modules() if name)
            self.paths.update((id(p), name) for name, p in root.named_parameters())

    def __len__(self) -> int:
        return len(self.sigs)

    def fingerprint(self, sids=None) -> list[str]:
        chosen = self.sigs if sids is None else [self.sigs[s] for s in sids]
        return sorted(s.describe() for s in chosen)
