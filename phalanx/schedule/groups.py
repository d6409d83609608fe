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


def concatenated(batches) -> tuple[np.ndarray, np.ndarray]:
    order = np.concatenate(batches)
    start = np.zeros(len(batches) + 1, dtype=np.int64)
    np.add.accumulate(np.fromiter(map(len, batches), dtype=np.int64, count=len(batches)), out=start[1:])
    return order, start


def group_runs(graph: GraphArrays, schedule: Schedule, order: "np.ndarray | None" = None,
               start: "np.ndarray | None" = None) -> tuple[tuple[int, int], ...]:
    """``(first batch, members)`` per run of two or more twin batches at one depth, in schedule order
    (``order``, ``start``: the batches concatenated and their starts, when the caller has them)."""
    if len(schedule) < 2 or torch.is_grad_enabled():
        return ()
    # Each op type's group: the first op type of its key, or -1 (never grouped).
    used = sorted(set(schedule.sids))
    group = np.full(max(used) + 1, -1, dtype=np.int64)
    first: dict = {}
    for sid in used:
        key = _key(graph.sigs[sid])
        if key is not None:
            group[sid] = first.setdefault(key, sid)
    if len(first) == int(np.count_nonzero(group >= 0)):
        return ()       # no two op types share a key
    if order is None:
        order, start = concatenated(schedule.batches)
    gid = group[np.array(schedule.sids, dtype=np.int64)]
    sizes = start[1:] - start[:-1]
    if not sizes.all():
        return ()       # an empty batch (never made by a policy): no groups
    depth = graph.node_depth[order]
    low, high = np.minimum.reduceat(depth, start[:-1]), np.maximum.reduceat(depth, start[:-1])
    # Batch b joins the run of batch b - 1: same group, both at one depth, the same one.
    joins = (gid[1:] >= 0) & (gid[1:] == gid[:-1]) & (low[1:] == high[1:]) & (low[:-1] == high[:-1]) & \
        (low[1:] == low[:-1])
    if not joins.any():
        return ()
    edges = np.diff(np.concatenate(([0], joins.astype(np.int8), [0])))
    heads, ends = (edges == 1).nonzero()[0], (edges == -1).nonzero()[0]
    return tuple(zip(heads.tolist(), (ends - heads + 1).tolist(), strict=True))


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
