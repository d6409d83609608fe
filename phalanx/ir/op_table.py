"""Op-type tables: what the plan stage reads of a flush's op types, as numpy arrays.

NOTE: [Op-type tables] the layout and the steps (memory/layout.py, runtime/steps.py) need per batch
facts of its op type: arity, number of outputs, each operand's kind, bytes per row and number
dtype. Read from the signatures, that is a Python pass per batch (or per operand list); as one
small table indexed by ``slot[sid]`` it is one fancy index per flush. Everything in it is fixed
when a signature is made (kinds, avals, and its ``stack_dim`` / ``ragged`` meta), so the table is
cached across flushes, keyed by the set of op types used (and their identities, so a signature
table that drops and reuses sids cannot serve a stale table).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .signature import ArgKind


@dataclass(frozen=True, eq=False)
class OpTypes:
    """What the plan stage needs of the op types of a flush, as arrays: per op type (``slot[sid]``)
    ``arity``, ``num_out`` and its operand positions' entries ``pos_start[t]:pos_start[t+1]``; per
    entry the operand ``pos``, ``kind`` (ArgKind) and ``lazy`` (kind is LAZY), ``nbytes`` per row and for numbers
    ``number_dtype`` (an index into ``dtypes``; -1 otherwise). ``stacked``: sids whose kernels
    read stacked operands (no whole reads); ``ragged``: whether any op type is ragged;
    ``single_output``: whether every one has exactly one output."""

    slot: np.ndarray
    arity: np.ndarray
    num_out: np.ndarray
    pos_start: np.ndarray
    pos: np.ndarray
    kind: np.ndarray
    lazy: np.ndarray
    nbytes: np.ndarray
    number_dtype: np.ndarray
    dtypes: tuple
    stacked: frozenset
    ragged: bool
    single_output: bool
    has_tensors: bool
    sigs: tuple         # kept: their ids in the cache key cannot be reused while it is cached


def op_type_table(all_sigs: list, sids) -> OpTypes:
    """The op-type table of a flush, cached per set of op types: most flushes of a run use the same
    few, so building it is a dict lookup (NOTE: [Op-type tables]). The layout and the steps of one
    flush ask with the same ``sids`` and ``all_sigs`` objects: the second ask is two identity checks."""
    global _LAST
    last = _LAST
    if last[0] is sids and last[1] is all_sigs:
        return last[2]
    table = _table(all_sigs, sids)
    _LAST = (sids, all_sigs, table)     # one assignment of a tuple: safe for concurrent flushes
    return table


def _table(all_sigs: list, sids) -> OpTypes:
    used = sorted(set(sids))
    sigs = tuple(all_sigs[sid] for sid in used)
    key = (tuple(used), tuple(map(id, sigs)))
    table = _TABLES.get(key)
    if table is not None:
        return table
    slot = np.zeros(max(used) + 1, dtype=np.int64)
    slot[used] = np.arange(len(used))
    kinds = [list(sig.in_kinds) for sig in sigs]
    kinds_flat = [k for ks in kinds for k in ks]
    pos_start = np.zeros(len(used) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in kinds], out=pos_start[1:])
    dtypes: dict = {}
    number_dtype = [dtypes.setdefault(a.dtype, len(dtypes)) if k is ArgKind.NUMBER else -1
                    for sig in sigs for k, a in zip(sig.in_kinds, sig.in_avals, strict=True)]
    table = OpTypes(
        slot=slot,
        arity=np.diff(pos_start),
        num_out=np.array([sig.num_outputs for sig in sigs], dtype=np.int64),
        pos_start=pos_start,
        pos=np.array([p for k in kinds for p in range(len(k))], dtype=np.int64),
        kind=np.array([int(x) for k in kinds for x in k], dtype=np.int64),
        lazy=np.array([x is ArgKind.LAZY for x in kinds_flat], dtype=bool),
        nbytes=np.array([a.nbytes for sig in sigs for a in sig.in_avals], dtype=np.int64),
        number_dtype=np.array(number_dtype, dtype=np.int64),
        dtypes=tuple(dtypes),
        stacked=frozenset(sid for sid, sig in zip(used, sigs, strict=True) if "stack_dim" in sig.meta),
        ragged=any("ragged" in sig.meta for sig in sigs),
        single_output=all(sig.num_outputs == 1 for sig in sigs),
        has_tensors=any(k is ArgKind.TENSOR for k in kinds_flat),
        sigs=sigs)
    if len(_TABLES) >= 16:       # small: it keeps its signatures (and their avals) alive
        _TABLES.clear()
    _TABLES[key] = table
    return table


_TABLES: dict = {}
_LAST: tuple = (None, None, None)     # (sids, all_sigs, table) of the last ask
