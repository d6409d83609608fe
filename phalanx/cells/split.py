"""Splitting a cell by dependence: the part that reads only some operands becomes its own program.

NOTE: [Split rule] For a set S of operand positions, a node of the per-row graph belongs to the
*prefix* when every operand it reads (transitively) is in S and it reads at least one. Nodes that
read no operand at all (constants, batch-size arithmetic) are recomputed wherever needed; shared
(hoisted) values are inputs of both parts. The prefix's outputs are its values that the rest reads
(or that are outputs of the cell); each must hold the batch in dimension 0, so it can live in an
arena row like any other value. The rest reads ``(*prefix outputs, *operands not in S)``.

Where the recorder should split (the lead's integration): when a cell's operands in S were all
recorded at a lower depth than its other operands (an LSTM step's input x is an embedding, its
h and c come from the previous step) and the prefix contains a GEMM (``worthwhile``), record the
prefix as its own node at the depth of S's producers, so all of them run in one large GEMM
(``W_ih x_t`` for every token of the mini-batch at once), and the rest at the cell's own depth.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..errors import CellTraceError
from ..ir.aval import AVal, aval

_ATEN = torch.ops.aten
GEMMS = (_ATEN.mm.default, _ATEN.addmm.default, _ATEN.bmm.default, _ATEN.baddbmm.default,
         _ATEN.embedding.default)


@dataclass
class SplitGraphs:
    prefix: fx.Graph
    rest: fx.Graph
    prefix_out_avals: tuple[AVal, ...]
    worthwhile: bool


def dependence(graph: fx.Graph, operand_nodes: list[fx.Node]) -> dict[fx.Node, frozenset[int]]:
    """For every node, the operand positions it reads transitively."""
    deps: dict[fx.Node, frozenset[int]] = {}
    position = {n: i for i, n in enumerate(operand_nodes)}
    for node in graph.nodes:
        if node.op == "placeholder":
            deps[node] = frozenset([position[node]]) if node in position else frozenset()
        elif node.op == "call_function":
            deps[node] = frozenset().union(*(deps[i] for i in node.all_input_nodes))
    return deps


def split_graph(what: str, graph: fx.Graph, num_leading: int, keep: frozenset[int]) -> SplitGraphs:
    """``graph``: placeholders ``(*leading, *operands)`` (leading = size, params, hoisted values)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    leading, operands = placeholders[:num_leading], placeholders[num_leading:]
    if not keep or not keep < frozenset(range(len(operands))):
        raise ValueError(f"split over {sorted(keep)}: must be a non-empty proper subset of 0..{len(operands) - 1}")
    deps = dependence(graph, operands)
    prefix = {n for n in graph.nodes if n.op == "call_function" and deps[n] and deps[n] <= keep}
    output = next(n for n in graph.nodes if n.op == "output")
    kept_ops = [operands[i] for i in sorted(keep)]
    # a kept operand the rest reads directly passes through the prefix unchanged
    crossing = [n for n in graph.nodes if (n in prefix or n in kept_ops)
                and any(u is output or (u not in prefix and deps.get(u)) for u in n.users)]
    for n in crossing:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor) or n.meta.get("bdim") != 0:
            raise CellTraceError(f"{what}: cannot split over operands {sorted(keep)}: value {n.name} crossing "
                                 f"the cut is not a tensor with rows in dimension 0")
    other_ops = [p for i, p in enumerate(operands) if i not in keep]

    pre = fx.Graph()
    env = {p: pre.placeholder(p.name) for p in [*leading, *kept_ops]}
    for node in graph.nodes:
        if node.op == "call_function" and (node in prefix or not deps[node]):
            env[node] = pre.node_copy(node, lambda n: env[n])
    pre.output(tuple(env[n] for n in crossing))
    pre.eliminate_dead_code()
    pre.lint()

    rest = fx.Graph()
    env = {p: rest.placeholder(p.name) for p in leading}
    for n in crossing:
        env[n] = rest.placeholder(f"prefix_{n.name}")
        env[n].meta["val"] = n.meta["val"]      # its shape: what in-place rules check (NOTE: [Consumed operands])
    for p in other_ops:
        env[p] = rest.placeholder(p.name)
    for node in graph.nodes:
        if node.op == "call_function" and node not in prefix:
            env[node] = rest.node_copy(node, lambda n: env[n])
        elif node.op == "output":
            rest.output(fx.node.map_arg(node.args[0], lambda n: env[n]))
    rest.eliminate_dead_code()
    rest.lint()
    avals = tuple(aval(n.meta["val"].shape[1:], n.meta["val"].dtype) for n in crossing)
    worthwhile = any(n.target in GEMMS or getattr(n.target, "__name__", "") == "row_sparse_embedding"
                     for n in prefix)
    return SplitGraphs(pre, rest, avals, worthwhile)
