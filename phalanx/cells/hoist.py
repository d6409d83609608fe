"""Taint analysis and hoisting: which values of a batched cell graph are the same for every row.

A node is *shared* when it reads only parameters, buffers, constants and other shared nodes (never
an operand, never the batch size) and is deterministic. Shared nodes (``t(W)``, a concatenated
weight) are computed once per parameter version by a separate hoist graph instead of inside every
batch; the main graph receives them as inputs. Only tensors cross from the hoist graph to the main
graph; a shared non-tensor (a list from ``split``) that the main graph reads stays in the main graph.
"""
from __future__ import annotations

import torch
from torch import fx

_ATEN = torch.ops.aten


def _deterministic(node: fx.Node) -> bool:
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded not in tags


def shared_nodes(graph: fx.Graph, params: list[fx.Node]) -> set[fx.Node]:
    shared = set(params)
    for node in graph.nodes:
        if node.op == "call_function" and _deterministic(node) and all(i in shared for i in node.all_input_nodes):
            shared.add(node)
    return shared


def move_shared_first(graph: fx.Graph, shared: set[fx.Node]) -> None:
    """Move shared computations right after the placeholders (they read only placeholders and each
    other, so their relative order is kept and the graph stays topological). Later passes can then
    insert a node reading any shared value anywhere."""
    anchor = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for node in list(graph.nodes):
        if node in shared and node.op == "call_function":
            anchor.append(node)
            anchor = node


def boundary(graph: fx.Graph, shared: set[fx.Node], params: list[fx.Node]) -> list[fx.Node]:
    """Shared non-parameter tensors read by the per-row part: the hoist graph's outputs. Shared
    non-tensors read by the per-row part are moved out of ``shared`` (with what only they need)."""
    while True:
        demote = [n for n in graph.nodes if n in shared and n.op == "call_function"
                  and not isinstance(n.meta.get("val"), torch.Tensor)
                  and any(u not in shared for u in n.users)]
        if not demote:
            break
        shared.difference_update(demote)
    param_set = set(params)
    return [n for n in graph.nodes if n in shared and n not in param_set
            and any(u not in shared for u in n.users)]


def hoist_graph(graph: fx.Graph, params: list[fx.Node], outputs: list[fx.Node], shared: set[fx.Node]) -> fx.Graph:
    """A graph ``(*params) -> tuple(outputs)`` computing the hoisted values."""
    new = fx.Graph()
    env = {p: new.placeholder(p.name) for p in params}
    needed = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    for node in graph.nodes:
        if node in needed and node.op == "call_function":
            env[node] = new.node_copy(node, lambda n: env[n])
    new.output(tuple(env[o] for o in outputs))
    new.lint()
    return new


def main_graph(graph: fx.Graph, hoisted: list[fx.Node], shared: set[fx.Node], num_leading: int) -> fx.Graph:
    """The per-row graph: placeholders ``(size, *params, *hoisted, *operands)``; shared nodes other
    than the hoisted ones are dropped (the hoist graph computes them)."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for p in placeholders[:num_leading]:
        env[p] = new.placeholder(p.name)
        env[p].meta = dict(p.meta)
    for h in hoisted:
        env[h] = new.placeholder(f"hoisted_{h.name}")
        env[h].meta = dict(h.meta)
    for p in placeholders[num_leading:]:
        env[p] = new.placeholder(p.name)
        env[p].meta = dict(p.meta)
    hoisted_set = set(hoisted)
    for node in graph.nodes:
        if node.op == "placeholder" or node in hoisted_set:
            continue
        if node.op == "output":
            new.output(fx.node.map_arg(node.args[0], lambda n: env[n]))
        elif node not in shared:
            env[node] = new.node_copy(node, lambda n: env[n])
    new.eliminate_dead_code()
    new.lint()
    return new
