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
import weakref
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
    - ``captured``: tensors ``fn`` reads besides its operands (parameters, buffers, closed-over
      tensors), found once per signature (NOTE: [Captured tensors] in frontend/capture.py). Which of
      them require grad is read at every flush, never cached.
    - ``callee``: the cell or torch function; ``modules``: the cell's modules, whose ``training``
      flags select the kernel (a dropout cell batches differently in train and eval mode).
    - ``rediscover``: ``fn`` reads tensors outside its own module (a function cell's closure), which
      may be rebound between calls: captured tensors are found again at every flush that uses it.
    - ``kernels``: batched callables per training-flags tuple, built on first execution
      (runtime/kernels.py); ``kernel`` is the last one used.
    """

    sid: int
    name: str
    fn: Callable[..., Any]
    in_kinds: tuple[ArgKind, ...]
    in_avals: tuple[AVal, ...]
    out_avals: tuple[AVal, ...]
    unflatten: Callable[[list], Any]
    flatten: Callable[[Any], tuple]
    captured: tuple[torch.Tensor, ...] = ()
    callee: Any = None
    modules: tuple = ()
    rediscover: bool = False
    path: str = ""              # where the callee / its parameters live in the model ("fwd", "out.weight")
    single: bool = False        # fn returns one bare tensor (the recorder's fast return path)
    plain_tuple: bool = False   # fn returns a flat tuple of tensors (the second fast path)
    kernel: Any = None
    kernels: dict = field(default_factory=dict)
    keys: list = field(default_factory=list)   # its keys in SignatureTable.by_key
    last_call: int = 0          # the table's call counter when it was last used (for eviction)
    splittable: bool = False    # an ahead-of-time cell the recorder may split (NOTE: [Input split])
    # Per argument, the interned aval of a lazy one or INT_KEY / FLOAT_KEY (ir/columns.py): a cell op
    # type the native fast path may record (``fast_entry``), or None.
    fast_pattern: Any = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.num_outputs = len(self.out_avals)
        self.all_lazy = all(k is ArgKind.LAZY for k in self.in_kinds)   # eligible for the last-signature cache

    @property
    def fast_entry(self) -> "tuple | None":
        """``(sid, pattern, out_avals, single)``: what ``Columns.fast_calls`` holds for the cell."""
        return None if self.fast_pattern is None else (self.sid, self.fast_pattern, self.out_avals, self.single)

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
    and shape inference are reused across calls.

    NOTE: [What an op type may cache] a signature caches what follows from its key and the model's
    *structure*: output shapes and structure, captured tensors, kernels. The structure is checked at
    the start of every call (``begin_call``): the identity, dtype, device and shape of every
    parameter and buffer of the root model and of every cell module, the module tree, and every
    other captured tensor. Any change (a replaced layer or Parameter, ``load_state_dict(assign=True)``,
    ``.double()``, ``.to()``) drops the whole table; the next call re-derives it. What may change
    freely between calls is read at every flush instead: parameter values (optimizer steps),
    ``requires_grad`` (freeze / unfreeze), grad mode, hooks, and ``training`` flags (kernels are
    kept per flags tuple). The table is bounded: past ``max_signatures`` the least recently used
    half is evicted at the start of a call, so a stream of new shapes or static numbers cannot grow
    it (or the cost of a call) forever.
    """

    def __init__(self, root: Any = None, max_signatures: int = 4096, cells: Any = None):
        self.by_key: dict[Any, Signature] = {}
        # CellOptions of the ahead-of-time cell analysis (phalanx/cells), or None: probe-checked kernels.
        self.cells = cells
        self.sigs: list[Signature] = []
        self.max_signatures = max_signatures
        self.calls = 0
        self._root = weakref.ref(root) if isinstance(root, torch.nn.Module) else None
        self._token: list | None = None
        # id(module or parameter) -> its dotted name in the model, so two instances of one cell
        # class (a forward and a backward LSTM) have distinct, process-stable descriptions.
        self.paths: dict[int, str] = {}
        self._refresh_paths()
        self.recorder_caches = None     # what the last Recorder learned (NOTE: [Warm recorder caches])

    @property
    def root(self):
        return self._root() if self._root is not None else None

    def __len__(self) -> int:
        return len(self.sigs)

    def fingerprint(self, sids=None) -> list[str]:
        chosen = self.sigs if sids is None else [self.sigs[s] for s in sids]
        return sorted(s.describe() for s in chosen)

    def add(self, sig: Signature, *keys) -> None:
        self.sigs.append(sig)
        for key in keys:
            if key not in self.by_key:
                self.by_key[key] = sig
                sig.keys.append(key)

    def clear(self) -> None:
        self.by_key.clear()
        self.sigs.clear()

    # *** validation and eviction, once per call ***
    def modules(self) -> list:
        """The root model's modules and every cell module seen, each once."""
        found: dict[int, torch.nn.Module] = {}
        root = self.root
        if root is not None:
            for m in root.modules():
                found[id(m)] = m
        for sig in self.sigs:
            for m in sig.modules:
                found.setdefault(id(m), m)
        return list(found.values())

    def _state_token(self) -> list:
        token: list = []
        for m in self.modules():
            token.append(id(m))
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is not None:
                    token.append((id(t), t.dtype, t.device, t.shape))
        for sig in self.sigs:
            for t in sig.captured:
                token.append((id(t), t.dtype, t.device, t.shape))
        return token

    def begin_call(self) -> None:
        """Drop everything derived from a model structure that changed since the last call, and
        evict the least recently used half when the table is over its bound."""
        self.calls += 1
        if self._token is not None and self._state_token() != self._token:
            self.clear()
            self._refresh_paths()
        if len(self.sigs) > self.max_signatures:
            kept = sorted(self.sigs, key=lambda s: s.last_call, reverse=True)[:self.max_signatures // 2]
            kept.sort(key=lambda s: s.sid)
            self.clear()
            for sid, sig in enumerate(kept):
                sig.sid = sid
                self.sigs.append(sig)
                for key in sig.keys:
                    self.by_key[key] = sig

    def end_call(self, used_sids) -> None:
        """Remember the structure the table was derived from, and which signatures were used."""
        for sid in used_sids:
            self.sigs[sid].last_call = self.calls
        self._token = self._state_token()

    def _refresh_paths(self) -> None:
        self.paths.clear()
        root = self.root
        if root is not None:
            self.paths.update((id(m), name) for name, m in root.named_modules() if name)
            self.paths.update((id(p), name) for name, p in root.named_parameters())
