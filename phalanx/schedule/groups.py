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

from ..cells.aot import program_of
from ..cells.group import group_key
from ..ir.graph import GraphArrays
from .base import Schedule


def group_runs(graph: GraphArrays, schedule: Schedule, order: np.ndarray,
               start: np.ndarray) -> tuple[tuple[int, int], ...]:
    """``(first batch, members)`` per run of two or more twin batches at one depth, in schedule order
    (``order``, ``start``: the batches concatenated and each one's start, as the layout has them)."""
    if len(schedule) < 2 or torch.is_grad_enabled():
        return ()
    group = op_type_groups(graph, graph.used_sids.tolist())
    if group is None:
        return ()
    heads = start[:-1]
    if (start[1:] == heads).any():
        return ()       # an empty batch (never made by a policy): no groups
    depth = graph.node_depth[order]
    level = np.maximum.reduceat(depth, heads)
    # A batch's code: (group, depth) when it is at one depth and has a group, else a code of its own.
    code = group[np.array(schedule.sids, dtype=np.int64)] * (int(level.max()) + 1) + level
    code[(np.minimum.reduceat(depth, heads) != level) | (code < 0)] = -1
    joins = (code[1:] == code[:-1]) & (code[1:] >= 0)     # batch b + 1 joins batch b's run
    if not joins.any():
        return ()
    padded = np.zeros(len(joins) + 2, dtype=bool)
    padded[1:-1] = joins
    edges = (padded[1:] != padded[:-1]).nonzero()[0]        # where runs of joins start and end
    heads, ends = edges[::2], edges[1::2]
    return tuple(zip(heads.tolist(), (ends - heads + 1).tolist(), strict=True))


def op_type_groups(graph: GraphArrays, used) -> "np.ndarray | None":
    """Per op type (indexed by sid, up to the largest of ``used``): the first op type of ``used``
    with its group key, or -1 (never grouped); None when no two op types of ``used`` share a key.
    Kept on the graph for the flush's next stage (the schedule asks, then the layout)."""
    used = tuple(used)
    cached = graph.__dict__.get("_op_type_groups")
    if cached is not None and cached[0] == used:
        return cached[1]
    group = np.full(max(used) + 1, -1, dtype=np.int64)
    first: dict = {}
    for sid in used:
        key = _key(graph.sigs[sid])
        if key is not None:
            group[sid] = first.setdefault(key, sid)
    found = None if len(first) == int(np.count_nonzero(group >= 0)) else group
    graph.__dict__["_op_type_groups"] = (used, found)
    return found


def twin_rank(graph: GraphArrays) -> "np.ndarray | None":
    """A renumbering of the op types (sid -> rank) that keeps every group's op types consecutive,
    for a policy that orders the batches of one depth by op type (the depth policy) to put twins
    next to each other (``group_runs`` finds adjacent runs only); None where nothing would group."""
    if torch.is_grad_enabled() or graph.num_nodes == 0:
        return None
    used = graph.used_sids.tolist()
    group = op_type_groups(graph, used)
    if group is None:
        return None
    ranked = sorted(used, key=lambda sid: (int(group[sid]) if group[sid] >= 0 else sid, sid))
    rank = np.zeros(len(group), dtype=np.int64)
    rank[ranked] = np.arange(len(ranked))
    return rank


def _key(sig) -> "tuple | None":
    if "ragged" in sig.meta or "stack_dim" in sig.meta:
        return None
    program = program_of(sig, tuple(m.training for m in sig.modules))
    return group_key(program) if program is not None else None
