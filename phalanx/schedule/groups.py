"""Runs of twin batches in a schedule (NOTE: [Op-type groups] in cells/group.py).

``group_runs`` finds runs of adjacent batches whose op types run one traced program with different
parameters (``cells.group.group_key``) and whose nodes all sit at ONE recorded depth: depth grows
along every edge (NOTE: [Inline depth]), so no node of the run reads another and the run may
execute as one batch. The layout then puts the run's output blocks output by output, member by
member (memory/layout.py), and the executor runs the run as one batch (runtime/executor.py).
Only for inference flushes: training runs every batch with its own backward.
"""
from __future__ import annotations

import numpy as np
import torch

from ..ir.graph import GraphArrays
from .base import Schedule


def group_runs(graph: GraphArrays, schedule: Schedule) -> tuple[tuple[int, int], ...]:
    """``(first batch, members)`` per run of two or more twin batches at one depth, in schedule order."""
    if len(schedule) < 2 or torch.is_grad_enabled():
        return ()
    keys = {}
    for sid in set(schedule.sids):
        keys[sid] = _key(graph.sigs[sid])
    if len({k for k in keys.values() if k is not None}) == len([k for k in keys.values() if k is not None]):
        return ()       # no two op types share a key
    runs, depth = [], graph.node_depth
    b, num = 0, len(schedule)
    sids, batches = schedule.sids, schedule.batches
    while b < num:
        key = keys[sids[b]]
        end = b + 1
        if key is not None and _one_depth(depth, batches[b]):
            level = depth[batches[b][0]]
            while (end < num and keys[sids[end]] == key and sids[end] not in sids[b:end]
                   and _one_depth(depth, batches[end]) and depth[batches[end][0]] == level):
                end += 1
        if end - b > 1:
            runs.append((b, end - b))
        b = end
    return tuple(runs)


def _one_depth(depth: np.ndarray, nodes: np.ndarray) -> bool:
    d = depth[nodes]
    return len(d) > 0 and d.min() == d.max()


def _key(sig) -> "tuple | None":
    from ..cells.group import group_key

    meta = sig.meta
    if "ragged" in meta or "stack_dim" in meta:
        return None
    if "kernel" in meta:
        program = getattr(meta["kernel"], "program", None)
    elif "aot" in meta:
        program = meta["aot"].programs.get(tuple(m.training for m in sig.modules))
    else:
        return None
    return group_key(program) if program is not None else None
