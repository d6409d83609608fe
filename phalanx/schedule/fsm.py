"""The FSM policy (ED-Batch): a learned table from a frontier *encoding* to the op type to run.

An encoding uses only op types, never node ids, so one table serves every graph of a model:

- ``"sort"`` (E_sort, the default): the frontier's types ordered by descending ready count (ties
  by type name);
- ``"base"`` (E_base): the set of frontier types;
- ``"max"`` (E_max): E_base plus the type with the most ready nodes.

Types are named by stable text (``Signature.describe()``), not by sid, so a table learned on some
graphs applies to other graphs of the same model and survives ``save``/``load``. A state missing
from the table falls back to the type with the LARGEST ready count (the greedy choice; ED-Batch's
reference code took the smallest). ``hits`` / ``fallbacks`` count table lookups of the last
``schedule`` call; ``total_hits`` / ``total_fallbacks`` accumulate.

Training (tabular Q-learning) lives in ``fsm_train.py`` and is imported only when a policy is
trained. A policy built without a table ``needs_training``: the Batcher trains it on the graph of
its first call (``fit``).

**Example:**

>>> policy = FSMPolicy.train(model, [trees[:64], trees[64:128]])   # sample mini-batches
>>> policy.save("treelstm.fsm.json")
>>> batcher = phalanx.Batcher(model, policy=FSMPolicy.load("treelstm.fsm.json"))
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import torch

from ..errors import PhalanxError, PolicyMismatchError
from ..ir.graph import GraphArrays
from .base import Frontier, Policy, Schedule

ENCODINGS = ("sort", "base", "max")
FILE_FORMAT = "phalanx-fsm-policy"
FILE_VERSION = 1
UNKNOWN_TYPES = ("error", "fallback")

StateKey = tuple[int, ...]


def stable_type_names(graph: GraphArrays) -> list[str]:
    """A name per sid of ``graph.sigs`` that is the same in every graph and process of one model.

    It is ``describe()``; distinct op types with the same description (e.g. two instances of one
    cell class) get ``#1``, ``#2``... in sid order, i.e. first-recorded order."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for sig in graph.sigs:
        text = sig.describe()
        k = seen.get(text, 0)
        seen[text] = k + 1
        names.append(text if k == 0 else f"{text}#{k}")
    return names


def encode(encoding: str, ordered: Sequence[int]) -> StateKey:
    """State key of a frontier whose type ids, by descending ready count (ties by id), are
    ``ordered``. Type ids are ranks in the policy's sorted type names, so id order is name order."""
    if encoding == "sort":
        return tuple(ordered)
    if encoding == "base":
        return tuple(sorted(ordered))
    # "max": the set, then the type with the most ready nodes (always last, so keys never collide).
    return (*sorted(ordered), ordered[0])


def decode_types(encoding: str, key: StateKey) -> tuple[int, ...]:
    """The frontier types (the available actions) of a state key."""
    return key[:-1] if encoding == "max" else key


class TypeView:
    """How one graph's sids map to a policy's type ids (``gid``). A type the policy has never seen
    gets a negative id of its own, so states containing it are simply absent from the table."""

    __slots__ = ("graph", "gid", "sid_of_gid", "unknown")

    def __init__(self, graph: GraphArrays, type_index: dict[str, int]):
        names = stable_type_names(graph)
        self.graph = graph
        self.gid = [type_index.get(name, -1 - sid) for sid, name in enumerate(names)]
        self.sid_of_gid = {g: sid for sid, g in enumerate(self.gid)}
        self.unknown = sorted(names[int(s)] for s in graph.used_sids if self.gid[int(s)] < 0)

    def ordered(self, frontier: Frontier) -> list[int]:
        """Ready sids by descending ready count, ties by type id (= type name)."""
        counts = frontier.ready_counts()
        gid = self.gid
        return sorted(frontier.ready_sids(), key=lambda s: (-counts[s], gid[s]))


class FSMPolicy(Policy):
    """A frontier-encoding -> action table (see module docstring).

    **Arguments:**
    - ``table``: ``{state key: action type id}`` over ``type_names``; None for an untrained policy.
    - ``type_names``: the sorted stable names of the types the table was learned on (its
      fingerprint); type id ``i`` is ``type_names[i]``.
    - ``encoding``: ``"sort"`` (default), ``"base"`` or ``"max"``.
    - ``unknown_types``: what ``schedule`` does with a graph holding op types outside the
      fingerprint: ``"error"`` raises PolicyMismatchError, ``"fallback"`` schedules those states
      greedily. Default: ``"error"`` for a policy given or loaded with a table (it claims to be
      for one model), ``"fallback"`` for a self-training one (it saw only its first graph).
    - ``metadata``: training facts (episodes, best ratio, seed...), saved with the table.
    """

    name = "fsm"

    def __init__(self, table: dict[StateKey, int] | None = None, *, type_names: Sequence[str] = (),
                 encoding: str = "sort", unknown_types: str | None = None, metadata: dict | None = None):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if list(type_names) != sorted(set(type_names)):
            raise ValueError("type_names must be sorted and unique")
        if unknown_types is None:
            unknown_types = "fallback" if table is None else "error"
        if unknown_types not in UNKNOWN_TYPES:
            raise ValueError(f"unknown_types must be one of {UNKNOWN_TYPES}, got {unknown_types!r}")
        self.encoding = encoding
        self.type_names = list(type_names)
        self.type_index = {name: i for i, name in enumerate(self.type_names)}
        self.table = table
        self.unknown_types = unknown_types
        self.metadata = dict(metadata or {})
        self.hits = self.fallbacks = 0
        self.total_hits = self.total_fallbacks = 0
        self._view: TypeView | None = None

    @property
    def needs_training(self) -> bool:
        """True until a table is learned or given."""
        return self.table is None

    @property
    def fingerprint(self) -> list[str]:
        """Sorted stable names of the op types this policy knows."""
        return list(self.type_names)

    # *** inference ***
    def view(self, graph: GraphArrays) -> TypeView:
        """The sid -> type id map of ``graph`` (cached while ``schedule`` runs on it)."""
        if self._view is None or self._view.graph is not graph:
            self._view = TypeView(graph, self.type_index)
        return self._view

    def schedule(self, graph: GraphArrays) -> Schedule:
        view = self.view(graph)
        if view.unknown and self.unknown_types == "error" and self.table is not None:
            raise PolicyMismatchError(
                f"fsm policy was trained on other op types: this graph has {len(view.unknown)} op type(s) "
                f"outside its fingerprint ({len(self.type_names)} types): {', '.join(view.unknown[:5])}"
                f"{' ...' if len(view.unknown) > 5 else ''}. Retrain on sample graphs of this model, or "
                f"pass unknown_types='fallback' to schedule those states greedily")
        self.hits = self.fallbacks = 0
        try:
            result = super().schedule(graph)
        finally:
            self._view = None   # do not keep the graph (and its per-instance tensors) alive
        self.total_hits += self.hits
        self.total_fallbacks += self.fallbacks
        return result

    def choose(self, frontier: Frontier) -> int:
        view = self.view(frontier.graph)
        ordered = view.ordered(frontier)
        if self.table:
            action = self.table.get(encode(self.encoding, [view.gid[s] for s in ordered]))
            if action is not None:
                self.hits += 1
                return view.sid_of_gid[action]
        self.fallbacks += 1
        return ordered[0]

    # *** training ***
    def fit(self, graphs: Sequence[GraphArrays], **options) -> "FSMPolicy":
        """Learn a fresh table from ``graphs`` (replacing any table); keeps this policy's encoding.
        ``options`` go to ``fsm_train.train_table`` (seed, max_episodes, progress...). Returns self."""
        from .fsm_train import train_table

        if not any(g.num_nodes for g in graphs):
            return self   # nothing to learn from; stays untrained (needs_training)
        result = train_table(graphs, encoding=self.encoding, **options)
        self.type_names = result.type_names
        self.type_index = {name: i for i, name in enumerate(self.type_names)}
        self.table = result.table
        self.metadata = result.metadata()
        self._view = None
        return self

    @classmethod
    def train_on_graphs(cls, graphs: Sequence[GraphArrays], *, encoding: str = "sort", seed: int = 0,
                        max_episodes: int = 1000, progress: bool = False, **options) -> "FSMPolicy":
        """A policy learned on the sample ``graphs`` (see ``fsm_train.train_table``)."""
        return cls(encoding=encoding, unknown_types="error").fit(
            graphs, seed=seed, max_episodes=max_episodes, progress=progress, **options)

    @classmethod
    def train(cls, fn_or_batcher: Any, sample_instances_list: Iterable[Iterable[Any]], *, encoding: str = "sort",
              seed: int = 0, max_episodes: int = 1000, progress: bool = False, cells: Any = False,
              **options) -> "FSMPolicy":
        """A policy learned on sample mini-batches of a model.

        ``fn_or_batcher``: the per-instance function (or a ``Batcher`` of it, whose op types are
        then shared). ``sample_instances_list``: a list of mini-batches (each a list of instances);
        each is recorded, without executing, into one training graph. ``cells``: as the Batcher's
        that will run the policy (its op types depend on it: NOTE: [Input split])."""
        record = getattr(fn_or_batcher, "record", None)
        if record is None:
            from ..cells.options import CellOptions
            from ..frontend.recording import model_of, record_instances
            from ..ir.signature import SignatureTable

            fn = fn_or_batcher
            root = model_of(fn)
            table = SignatureTable(root, cells=CellOptions.resolve(cells))

            def record(instances):
                return record_instances(fn, list(instances), table)[0].graph.freeze()

        graphs = [record(instances) for instances in sample_instances_list]
        return cls.train_on_graphs(graphs, encoding=encoding, seed=seed, max_episodes=max_episodes,
                                   progress=progress, **options)

    # *** persistence ***
    def to_json(self) -> dict:
        if self.table is None:
            raise PhalanxError("cannot save an untrained fsm policy; train it first (FSMPolicy.train)")
        names = self.type_names
        rows = [[[names[g] for g in key], names[action]] for key, action in self.table.items()]
        rows.sort()
        return {"format": FILE_FORMAT, "version": FILE_VERSION, "encoding": self.encoding,
                "fingerprint": list(names), "table": rows, "training": self.metadata}

    def save(self, path: "str | os.PathLike") -> None:
        """Write the policy as JSON (format version, encoding, fingerprint, table, training facts)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")

    @classmethod
    def from_json(cls, data: dict, *, source: str = "<json>", unknown_types: str = "error") -> "FSMPolicy":
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise PolicyMismatchError(f"{source} is not a phalanx fsm policy file (format {FILE_FORMAT!r} expected)")
        if data.get("version") != FILE_VERSION:
            raise PolicyMismatchError(
                f"{source} has fsm policy format version {data.get('version')!r}; this phalanx reads version "
                f"{FILE_VERSION}. Retrain the policy (FSMPolicy.train) and save it again")
        names = sorted(set(data["fingerprint"]))
        index = {name: i for i, name in enumerate(names)}
        table: dict[StateKey, int] = {}
        for state, action in data["table"]:
            missing = [n for n in [*state, action] if n not in index]
            if missing:
                raise PolicyMismatchError(f"{source}: table entry names op type {missing[0]!r} outside the fingerprint")
            table[tuple(index[n] for n in state)] = index[action]
        return cls(table, type_names=names, encoding=data["encoding"], unknown_types=unknown_types,
                   metadata=data.get("training", {}))

    @classmethod
    def load(cls, path: "str | os.PathLike", *, unknown_types: str = "error") -> "FSMPolicy":
        """Read a policy written by ``save``. Using it on a graph with op types outside its
        fingerprint raises PolicyMismatchError (unless ``unknown_types="fallback"``)."""
        source = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise PolicyMismatchError(f"{source}: no such fsm policy file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PolicyMismatchError(f"{source} is not a phalanx fsm policy file: it is empty, truncated or corrupt "
                                      f"({type(e).__name__}: {e}); train and save it again") from e
        try:
            return cls.from_json(data, source=source, unknown_types=unknown_types)
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyMismatchError(f"{source} is a damaged phalanx fsm policy file ({type(e).__name__}: {e}); "
                                      f"train and save it again") from e

    def __repr__(self) -> str:
        state = "untrained" if self.table is None else f"{len(self.table)} states over {len(self.type_names)} types"
        return f"FSMPolicy(encoding={self.encoding!r}, {state})"

