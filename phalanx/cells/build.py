"""``compile_cell``: trace -> batchify -> (sparse embeddings) -> taint -> merge -> hoist -> program."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import CellTraceError
from ..frontend.swap_gate import GATE
from ..ir.aval import AVal, aval_of
from ..ir.signature import ArgKind
from . import hoist as hoisting
from .merge import accumulate_gemms, eliminate_common_subexpressions, fuse_bias_adds, merge_matmuls
from .options import CellOptions
from .simplify import drop_shape_round_trips, fuse_gate_activations
from .program import CellProgram, HoistCache, ParamReader, graph_program
from .sparse import rewrite_embeddings
from .split import dependence, split_graph
from .unit_dims import drop_unit_dims
from .trace import CAPTURED_HINT, TracedCell, explicit_tensors, trace_cell


def compile_cell(fn: Callable, module: nn.Module | None, in_avals: Iterable[AVal], in_kinds: Iterable[ArgKind] = (),
                 options: CellOptions = CellOptions(), name: str | None = None,
                 device: torch.device | None = None) -> CellProgram:
    """The batched program of ``fn`` (one instance's cell call) on operands of ``in_avals``.

    ``module``: the cell module whose parameters and buffers ``fn`` reads (they become explicit
    inputs, read at every call). ``None`` for a function cell. Either way, a tensor read from a
    closure or a global could not be passed explicitly: ``CellTraceError``.
    ``in_kinds`` (LAZY / NUMBER / TENSOR) do not change the program: every operand arrives batched.
    """
    in_avals = tuple(in_avals)
    name = name or getattr(module, "_phalanx_name", None) or f"cell {getattr(fn, '__name__', 'fn')}"
    names, _ = explicit_tensors(module)
    reader = ParamReader(module, tuple(names))

    def build() -> CellProgram:
        if not options.trace:
            return _vmap_program(name, fn, module, in_avals, options, reader)
        traced = trace_cell(name, fn, module, in_avals, device)
        _refuse_captured_tensors(name, traced)
        return _build(traced, options, reader)

    program = build()
    program.retrace = build
    return program


def _refuse_captured_tensors(name: str, traced: TracedCell) -> None:
    """A tensor the cell reads that is not its parameter or buffer (a closure or global) would be
    baked into the program, stale after any update: refuse it."""
    for node in traced.graph.nodes:
        if node.op == "get_attr":
            raise CellTraceError(f"{name}: {CAPTURED_HINT}")


def _build(traced: TracedCell, options: CellOptions, reader: ParamReader) -> CellProgram:
    graph = traced.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    num_params = len(traced.param_names)
    params = placeholders[1:1 + num_params]
    info: dict = {"trace_sizes": traced.info["trace_sizes"]}
    if options.sparse_grads:
        info["sparse_embeddings"] = rewrite_embeddings(graph, params)
    eliminate_common_subexpressions(graph)
    info["round_trips"] = drop_shape_round_trips(graph)
    shared = hoisting.shared_nodes(graph, params)
    hoisting.move_shared_first(graph, shared)
    if options.merge:
        info["fused_bias"] = fuse_bias_adds(graph, shared)
        info["merged"] = merge_matmuls(graph, shared)
        deps = dependence(graph, placeholders[1 + num_params:])
        info["accumulated"] = accumulate_gemms(graph, shared, {n: tuple(sorted(d)) for n, d in deps.items()})
    hoist = None
    if options.hoist:
        outputs = hoisting.boundary(graph, shared, params)
        hoist = HoistCache(graph_program(hoisting.hoist_graph(graph, params, outputs, shared)))
        graph = hoisting.main_graph(graph, outputs, shared, 1 + num_params)
        info["hoisted"] = len(outputs)
    graph.eliminate_dead_code()
    info["unit_dims"] = drop_unit_dims(graph)       # NOTE: [Unit dimensions]
    if options.merge:
        info["fused_gates"] = fuse_gate_activations(graph)     # NOTE: [Fused gate activations]
    info["ops"] = sum(1 for n in graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload))
    program = CellProgram(traced.name, "traced", options, traced.in_avals, traced.out_avals, traced.out_spec,
                          reader, hoist, graph_program(graph), info, graph, 1 + num_params + info.get("hoisted", 0))
    if options.compile:
        program.compile()
    return program


@dataclass
class CellSplit:
    """``prefix(operands in keep) -> prefix outputs``; ``rest(*prefix outputs, *other operands)``
    returns the cell's outputs. See NOTE: [Split rule] in split.py."""

    keep: tuple[int, ...]
    prefix: CellProgram
    rest: CellProgram
    worthwhile: bool


def split_program(program: CellProgram, keep: Iterable[int]) -> CellSplit:
    """Cut a traced program into a prefix over the operands ``keep`` and the rest."""
    if program.mode != "traced":
        raise CellTraceError(f"{program.name}: only a traced program can be split")
    keep = frozenset(keep)
    parts = split_graph(program.name, program.graph, program.num_leading, keep)
    kept = tuple(sorted(keep))
    others = tuple(a for i, a in enumerate(program.in_avals) if i not in keep)
    _, flat_spec = tree_flatten(tuple(range(len(parts.prefix_out_avals))))
    prefix = CellProgram(f"{program.name}[prefix {list(kept)}]", "traced", program.options,
                         tuple(program.in_avals[i] for i in kept), parts.prefix_out_avals, flat_spec,
                         program.params, program.hoist, graph_program(parts.prefix), dict(program.info),
                         parts.prefix, program.num_leading)
    rest = CellProgram(f"{program.name}[rest]", "traced", program.options, (*parts.prefix_out_avals, *others),
                       program.out_avals, program.out_spec, program.params, program.hoist,
                       graph_program(parts.rest), dict(program.info), parts.rest, program.num_leading)
    for part in (prefix, rest):
        part.info["ops"] = sum(1 for n in part.graph.nodes if n.op == "call_function")
    return CellSplit(kept, prefix, rest, parts.worthwhile)


def auto_split(program: CellProgram, lower: Iterable[int]) -> CellSplit | None:
    """The split the recorder should use when the operands ``lower`` were recorded at a lower depth
    than the others: ``None`` when splitting is off, impossible, or would move no GEMM."""
    if not program.options.split or program.mode != "traced":
        return None
    try:
        split = split_program(program, lower)
    except (CellTraceError, ValueError):
        return None
    return split if split.worthwhile else None


def _vmap_program(name, fn, module, in_avals, options, reader) -> CellProgram:
    """``trace=False``: ``torch.func.vmap`` of the per-instance aten graph at every call (batching
    rules applied per call; no hoisting, merging or splitting)."""
    names = reader.names
    holder: dict = {}
    if module is not None:
        from .trace import _CellCall
        wrapper = _CellCall(module, fn)

        def call(*flat):
            params, operands = flat[:len(names)], flat[len(names):]
            with GATE.swapping():       # NOTE: [Swapped parameters]
                out = torch.func.functional_call(wrapper, {"cell." + n: p for n, p in zip(names, params, strict=True)},
                                                 tuple(operands))
            leaves, holder["spec"] = tree_flatten(out)
            return tuple(leaves)
    else:
        def call(*flat):
            leaves, holder["spec"] = tree_flatten(fn(*flat))
            return tuple(leaves)

    from .trace import _trace
    example = _trace(call, [*(t.detach() for t in reader()), *(a.zeros() for a in in_avals)],
                     f"{name} on operands ({', '.join(map(repr, in_avals))})")
    out_nodes = next(n for n in reversed(example.graph.nodes) if n.op == "output").args[0]
    out_avals = tuple(aval_of(n.meta["val"]) for n in out_nodes)
    # vmap the per-instance aten graph: composite ops without a batching rule (lstm_cell) are
    # decomposed there, so this works for every traceable cell
    vmapped = torch.func.vmap(example, in_dims=(None,) * len(names) + (0,) * len(in_avals))

    def main(size, *flat):
        return vmapped(*flat)

    return CellProgram(name, "vmap", options, in_avals, out_avals, holder["spec"], reader, None,
                       main, {})


__all__ = ["compile_cell", "split_program", "auto_split", "CellSplit"]
