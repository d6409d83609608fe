"""Tracing: a cell written for ONE instance -> an aten fx graph of its batched form.

Two traces, both with fake tensors (no data, no FLOPs):

1. ``per-instance``: ``make_fx(functionalize(cell))`` on example operands, with the cell's
   parameters and buffers as explicit placeholders (``torch.func.functional_call``), so the program
   reads the current tensors at every call and never bakes one. CompositeImplicit ops
   (``nn.LSTMCell``'s ``lstm_cell``, ``linear``) decompose into aten ops that all have vmap rules.
   Python control flow on tensor data cannot be traced: it raises ``CellDataDependentError``.
2. ``batched``: ``make_fx(functionalize(vmap(per-instance graph)))``: every aten op goes through
   its exact vmap batching rule once, at trace time, so calls pay no vmap cost.

NOTE: [Batch size by interpolation] fake-tensor traces have concrete sizes, so the batched graph
mentions the batch size B as int literals (``view(x, [B, 8])``, ``[B * 4]``). We trace at three
batch sizes B0 < B1 < B2 (primes no dimension of the cell equals) and require the graphs to be
identical except for int literals; every literal that differs must be affine in B (``a * B + c``,
solved from B0 and B1, checked at B2) and becomes an expression of the ``size`` placeholder. Any
other difference (another op, another node count) means the graph depends on B itself and tracing
fails with a clear error instead of guessing.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
from torch.utils._pytree import tree_flatten

from ..errors import CellDataDependentError, CellTraceError
from ..frontend.swap_gate import GATE
from ..ir.aval import AVal, aval_of

_TRACE_SIZES = (1009, 1013, 1019)
CAPTURED_HINT = ("reads a tensor from its closure or a global that is not a parameter or buffer of the "
                 "cell module; make it one (nn.Parameter / register_buffer) so it is passed at every call")
_FIBERS_HINT = ("this cell branches on tensor data (or reads a value with .item() / a boolean mask), "
                "so no single batched program is right for every row; move the decision out of the "
                "cell (fibers, see DESIGN.md) or write it with tensor ops such as torch.where")


class _CellCall(nn.Module):
    """Holds the cell so ``functional_call`` can swap its tensors; calls the per-instance ``fn``
    (``nn.Module.__call__`` of the cell), never the recording ``__call__``."""

    def __init__(self, cell: nn.Module, fn: Callable):
        super().__init__()
        self.cell = cell
        self.fn = fn

    def forward(self, *operands):
        return self.fn(*operands)


@dataclass
class TracedCell:
    """``graph``: flat placeholders ``(size, *params, *operands)``, output a flat tuple; each node's
    ``meta['bdim']`` is the dimension that holds the batch (None: the same for every row)."""

    name: str
    param_names: tuple[str, ...]
    param_avals: tuple[AVal, ...]
    in_avals: tuple[AVal, ...]
    out_avals: tuple[AVal, ...]
    out_spec: Any
    graph: fx.Graph
    per_instance: fx.GraphModule
    info: dict = field(default_factory=dict)


def explicit_tensors(module: nn.Module | None) -> tuple[list[str], list[torch.Tensor]]:
    """The parameters and buffers a module cell reads, by dotted name (shared ones once)."""
    if module is None:
        return [], []
    named = [*module.named_parameters(), *module.named_buffers()]
    return [n for n, _ in named], [t for _, t in named]


def _flat_call(fn: Callable, module: nn.Module | None, names: list[str], holder: dict):
    wrapper = _CellCall(module, fn) if module is not None else None

    def call(*flat):
        params, operands = flat[:len(names)], flat[len(names):]
        if wrapper is None:
            out = fn(*operands)
        else:
            with GATE.swapping():       # NOTE: [Swapped parameters]
                out = torch.func.functional_call(wrapper, {"cell." + n: p for n, p in zip(names, params, strict=True)},
                                                 tuple(operands))
        leaves, spec = tree_flatten(out)
        if not all(isinstance(x, torch.Tensor) for x in leaves):
            raise CellTraceError(f"returns {out!r}, not a structure of tensors")
        holder["spec"] = spec
        return tuple(leaves)
    return call


def _is_data_dependent(e: BaseException) -> bool:
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
    if isinstance(e, (DataDependentOutputException, DynamicOutputShapeException, GuardOnDataDependentSymNode)):
        return True
    text = str(e)
    return "data-dependent" in text or "data dependent" in text


def _trace(f: Callable, args: list, what: str) -> fx.GraphModule:
    from ..frontend import recorder
    slot = recorder._SLOT
    saved, slot.rec = slot.rec, None
    try:
        gm = make_fx(torch.func.functionalize(f), tracing_mode="fake")(*args)
    except (CellTraceError, CellDataDependentError) as e:
        raise type(e)(f"{what}: {e}") from e
    except Exception as e:
        if _is_data_dependent(e):
            raise CellDataDependentError(f"{what}: {_FIBERS_HINT} ({type(e).__name__})") from e
        if "convert all Tensors to FakeTensors" in str(e):
            raise CellTraceError(f"{what}: {CAPTURED_HINT}") from e
        first = str(e).splitlines()[0] if str(e) else ""
        raise CellTraceError(f"{what}: cannot be traced ahead of time: {type(e).__name__}: {first}") from e
    finally:
        slot.rec = saved
    gm.graph.eliminate_dead_code()
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if val is not None and free_unbacked_symbols(val):
            raise CellDataDependentError(f"{what}: {_FIBERS_HINT} (node {node.format_node()})")
    gm.recompile()
    return gm


def _pick_sizes(dims: set[int]) -> tuple[int, ...]:
    sizes, candidate = [], _TRACE_SIZES[0]
    while len(sizes) < 3:
        if candidate not in dims and all(candidate % p for p in range(2, int(candidate ** 0.5) + 1)):
            sizes.append(candidate)
        candidate += 1
    return tuple(sizes)


def trace_cell(name: str, fn: Callable, module: nn.Module | None, in_avals: tuple[AVal, ...],
               device: torch.device | None = None) -> TracedCell:
    """``device``: where the operands will live (default: the cell's parameters' device), so tensors
    the cell creates (``torch.zeros(...)``) are traced on the device it runs on."""
    names, tensors = explicit_tensors(module)
    if device is None and tensors:
        device = tensors[0].device
    what = f"{name} on operands ({', '.join(map(repr, in_avals))})"
    holder: dict = {}
    call = _flat_call(fn, module, names, holder)
    examples = [a.zeros(device) for a in in_avals]     # distinct tensors: make_fx dedups identical inputs
    params = [t.detach() for t in tensors]
    per_instance = _trace(call, [*params, *examples], what)
    spec = holder["spec"]
    out_nodes = _outputs(per_instance.graph)
    out_avals = tuple(aval_of(n.meta["val"]) for n in out_nodes)

    dims = {d for a in (*in_avals, *out_avals, *map(aval_of, params)) for d in a.shape}
    sizes = _pick_sizes(dims)
    in_dims = (None,) * len(params) + (0,) * len(in_avals)
    batched = []
    for size in sizes:
        operands = [torch.empty((size, *a.shape), dtype=a.dtype, device=device) for a in in_avals]
        if not in_avals:
            batched.append(None)
            continue
        vf = torch.func.vmap(per_instance, in_dims=in_dims)
        batched.append(_trace(lambda *flat: tuple(vf(*flat)), [*params, *operands], what))
    if not in_avals:
        graph = _expand_graph(per_instance.graph, len(params))
    else:
        graph = _generalize(what, [g.graph for g in batched], sizes)
    return TracedCell(name, tuple(names), tuple(map(aval_of, params)), tuple(in_avals), out_avals, spec,
                      graph, per_instance, {"trace_sizes": sizes})


def _outputs(graph: fx.Graph) -> list[fx.Node]:
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    return list(out.args[0])


def _expand_graph(graph: fx.Graph, num_params: int) -> fx.Graph:
    """A cell without operands: compute once, broadcast to ``size`` rows."""
    new = fx.Graph()
    size = new.placeholder("size")
    env = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = new.placeholder(node.name)
            env[node].meta = dict(node.meta, bdim=None)
        elif node.op == "output":
            outs = []
            for o in node.args[0]:
                v = o.meta["val"]
                e = new.call_function(torch.ops.aten.expand.default, (env[o], [size, *v.shape]))
                e.meta = {"val": v, "bdim": 0}
                outs.append(e)
            new.output(tuple(outs))
        else:
            env[node] = new.node_copy(node, lambda n: env[n])
            env[node].meta["bdim"] = None
    return new


def _batch_dim(vals: list) -> int | None:
    if not isinstance(vals[0], torch.Tensor):
        return None
    differ = [d for d, s in enumerate(vals[0].shape) if s != vals[1].shape[d]]
    return differ[0] if len(differ) == 1 else None


def _generalize(what: str, graphs: list[fx.Graph], sizes: tuple[int, ...]) -> fx.Graph:
    """NOTE: [Batch size by interpolation]."""
    nodes = [list(g.nodes) for g in graphs]
    if len({len(n) for n in nodes}) != 1:
        raise CellTraceError(f"{what}: its batched graph changes with the batch size (node counts "
                             f"{[len(n) for n in nodes]} at sizes {sizes}); not batchable ahead of time")
    new = fx.Graph()
    size = new.placeholder("size")
    size.meta = {"bdim": None}
    env: dict[fx.Node, fx.Node] = {}
    exprs: dict[tuple[int, int], fx.Node] = {}
    b0, b1, b2 = sizes
    first_compute = None

    def size_expr(a: int, c: int) -> fx.Node:
        if (a, c) not in exprs:
            with new.inserting_before(first_compute):
                e = size if a == 1 else new.call_function(operator.mul, (size, a))
                if c:
                    e = new.call_function(operator.add, (e, c))
            exprs[(a, c)] = e
        return exprs[(a, c)]

    def merge(x0, x1, x2):
        if isinstance(x0, fx.Node):
            if not (isinstance(x1, fx.Node) and x0.name == x1.name == x2.name):
                raise CellTraceError(f"{what}: its batched graph changes with the batch size")
            return env[x0]
        if isinstance(x0, (list, tuple)):
            if not (type(x0) is type(x1) is type(x2) and len(x0) == len(x1) == len(x2)):
                raise CellTraceError(f"{what}: its batched graph changes with the batch size")
            return type(x0)(merge(*t) for t in zip(x0, x1, x2, strict=True))
        if isinstance(x0, dict):
            return {k: merge(x0[k], x1[k], x2[k]) for k in x0}
        if x0 == x1 == x2 or type(x0) is bool or not isinstance(x0, int):
            if x0 != x1 or x1 != x2:
                raise CellTraceError(f"{what}: argument {x0!r} of its batched graph changes with the batch size")
            return x0
        a, rem = divmod(x1 - x0, b1 - b0)
        c = x0 - a * b0
        if rem or a * b2 + c != x2:
            raise CellTraceError(f"{what}: a size in its batched graph ({x0}, {x1}, {x2} at batch sizes "
                                 f"{sizes}) is not affine in the batch size")
        return size_expr(a, c)

    for n0, n1, n2 in zip(*nodes, strict=True):
        if (n0.op, n0.target) != (n1.op, n1.target) or (n0.op, n0.target) != (n2.op, n2.target):
            raise CellTraceError(f"{what}: its batched graph changes with the batch size ({n0.format_node()} "
                                 f"vs {n1.format_node()})")
        if n0.op == "placeholder":
            env[n0] = new.placeholder(n0.name)
        elif n0.op == "output":
            new.output(merge(n0.args[0], n1.args[0], n2.args[0]))
            continue
        else:
            if first_compute is None:
                first_compute = new.call_function(operator.getitem, ((0,), 0))   # anchor, removed below
            args = merge(n0.args, n1.args, n2.args)
            kwargs = merge(n0.kwargs, n1.kwargs, n2.kwargs)
            env[n0] = new.create_node(n0.op, n0.target, args, kwargs, n0.name)
        vals = [n.meta.get("val") for n in (n0, n1)]
        env[n0].meta = {"val": n0.meta.get("val"), "bdim": _batch_dim(vals) if vals[0] is not None else None}
    if first_compute is not None:
        new.erase_node(first_compute)
    new.lint()
    return new


__all__ = ["TracedCell", "trace_cell", "explicit_tensors"]
