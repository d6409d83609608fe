"""Op-type groups: batches of twin op types (one traced program, different parameters) run as ONE
batch in inference.

NOTE: [Op-type groups] two cells of one class with their own weights (a BiLSTM's forward and
backward step, the layers of a stack, any k cells of one structure) trace to one program graph
(NOTE: [Shared traces] in aot.py) and differ only in the parameter prefix of the call
(``program(size, *params, *hoisted, *operands, *buffers)``). At one depth their batches are
independent, so they may run as one batch over the members' rows concatenated, member by member
(segment i: the ``sizes[i]`` rows after the segments before it):

- an op reading a parameter or hoisted value (a GEMM with the member's weight, a per-member bias)
  runs once per member on its segments, writing into its segment of one buffer (``out=``, or in
  place on a segment of a joined tensor), so what follows still sees one tensor;
- every other op (the gate chain: split, sigmoid, tanh, mul, add) runs ONCE over all rows;
- an operand whose members' rows are adjacent in one arena is one slice (joined); otherwise each
  member's own read (split), and an op reading it runs per member (an LSTM's ``f * c`` when a
  sentence ended just before: two ``mul_`` calls, still no copy);
- outputs are computed straight into one slice of their arena covering every member's rows
  (NOTE: [Direct outputs]); the layout puts a run's output blocks output by output, member by
  member (memory/layout.py), so they are adjacent.

Sound because a batched program is ``vmap`` of the per-row function: an op that reads no
parameter acts row by row, so running it over the concatenation equals running it per member. A
per-member op slices a joined value only where the traced value has the batch in dimension 0
(its fake value's leading size is the trace's batch size and no other dimension is); otherwise the
program is not grouped. The grouped program is generated from the same no_grad variant a direct
step runs (cells/inplace.py), once per (consume, joined operands, members), as straight-line code.
Only inference flushes group (training runs each batch with its own backward).
"""
from __future__ import annotations

import operator

import torch
from torch import fx

_JOINED, _SPLIT, _MEMBER, _SIZE = range(4)


def group_key(program) -> "tuple | None":
    """Programs with equal keys compute the same function of (parameters, operands): the same graph
    code, operand and output avals, parameter dtypes and shapes and options. None: never grouped."""
    options = program.options
    if (program.graph is None or program.mode != "traced" or program.compiled is not None
            or not getattr(options, "group", False) or not options.inplace):
        return None
    key = program.info.get("group_key")
    if key is None:
        code = program.graph.python_code("self").src
        key = program.info["group_key"] = (code, program.num_leading, program.in_avals, program.out_avals, options)
    return (*key, program.param_key)


def grouped_program(program, consume: bool, joined: tuple, members: int):
    """``run(total, sizes, prefixes, operands, buffers, scratch)`` for ``members`` twins of ``program``:
    operand p is one tensor over every member's rows where ``joined[p]``, else a list of per-member
    tensors; ``prefixes[i]``: member i's ``direct_call`` prefix; ``buffers``: one tensor per output
    over every member's rows; ``scratch(site, rows, shape, dtype, device)``: an uninitialized tensor for
    a temporary written member by member (``Scratch``). None where the program cannot be grouped
    (see the NOTE)."""
    cache = program.info.setdefault("grouped", {})
    key = (consume, joined, members)
    if key not in cache:
        variant, direct = program._variant(consume and bool(program.consumable), True)
        graph = getattr(getattr(variant, "__self__", None), "graph", None)
        cache[key] = None
        if graph is not None and direct is not None and all(direct):
            try:
                cache[key] = _generate(graph, program.num_leading, len(program.in_avals), joined, members)
            except _Refused:
                pass
    return cache[key]


class _Refused(Exception):
    pass


class Scratch:
    """Temporaries of grouped programs for one flush, kept between its batches: a fresh large tensor
    is fresh pages, faulted in at its first write (NOTE: [Arena pool] in runtime/executor.py), every
    batch again. A temporary dies with its program call (the outputs are computed into the arena
    rows), and batches run one after another, so each allocation site reuses one buffer."""

    def __init__(self):
        self.buffers: dict = {}

    def __call__(self, site: int, rows: int, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        key = (site, shape, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or len(buf) < rows:
            buf = self.buffers[key] = torch.empty((rows, *shape), dtype=dtype, device=device)
        return buf[:rows]


def _batch_size(placeholders: list) -> int:
    for node in placeholders:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim():
            return int(val.shape[0])
    raise _Refused


def _row_value(node, batch: int) -> bool:
    """Does ``node``'s traced value carry the batch in dimension 0, and only there?"""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dim() >= 1 and val.shape[0] == batch and batch not in val.shape[1:]


def _has_out(target) -> bool:
    name = getattr(target, "__name__", None)
    packet = getattr(torch.ops.aten, name, None) if name else None
    return packet is not None and "out" in packet.overloads() and getattr(torch, name, None) is target


def _in_place(node) -> bool:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return isinstance(name, str) and name.endswith("_") and not name.endswith("__")


def _generate(graph: fx.Graph, num_leading: int, arity: int, joined: tuple, members: int):
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) < num_leading + arity or len(joined) != arity:
        raise _Refused
    batch = _batch_size(placeholders[num_leading:num_leading + arity])
    kind: dict = {}
    # operands and output buffers carry the batch in dimension 0 by the call convention
    rows = set(placeholders[num_leading:])
    expr: dict = {}     # node -> Python expression (joined / other) or list of per-member expressions
    names: dict = {"torch": torch, "operator": operator}
    lines: list[str] = []
    segments: dict = {}     # joined expression -> the name of its per-member pieces (one split)

    def segment(joined_expr: str, member: int) -> str:
        name = segments.get(joined_expr)
        if name is None:
            name = segments[joined_expr] = f"s{len(segments)}"
            lines.append(f"{name} = {joined_expr}.split_with_sizes(sizes)")
        return f"{name}[{member}]"
    sites = 0       # temporaries written member by member: each its own scratch buffer

    for j, node in enumerate(placeholders):
        if j == 0:
            kind[node], expr[node] = _SIZE, "total"
        elif j < num_leading:
            kind[node], expr[node] = _MEMBER, [f"prefixes[{i}][{j - 1}]" for i in range(members)]
        elif j < num_leading + arity:
            p = j - num_leading
            if joined[p]:
                kind[node], expr[node] = _JOINED, f"operands[{p}]"
            else:
                kind[node], expr[node] = _SPLIT, [f"operands[{p}][{i}]" for i in range(members)]
        else:
            kind[node], expr[node] = _JOINED, f"buffers[{j - num_leading - arity}]"

    def target_name(target) -> str:
        name = f"_f{len(names)}"
        names[name] = target
        return name

    def render(a, member: "int | None"):
        if isinstance(a, fx.Node):
            k = kind[a]
            if k == _SIZE:
                return "total" if member is None else f"sizes[{member}]"
            if k in (_MEMBER, _SPLIT):
                return expr[a][member]
            if member is not None and k == _JOINED:
                if a not in rows and not _row_value(a, batch):
                    raise _Refused
                return segment(expr[a], member)
            return expr[a]
        if isinstance(a, (list, tuple)):
            inner = ", ".join(render(x, member) for x in a)
            return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
        if isinstance(a, (int, float, bool, str, type(None))):
            return repr(a)
        if isinstance(a, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
            return target_name(a)
        raise _Refused

    def call(node, member: "int | None", out: "str | None" = None) -> str:
        args = [render(a, member) for a in node.args]
        kwargs = [f"{k}={render(v, member) if k != 'out' or out is None else out}" for k, v in node.kwargs.items()]
        if out is not None and "out" not in node.kwargs:
            kwargs.append(f"out={out}")
        if node.op == "call_method":
            return f"{args[0]}.{node.target}({', '.join(args[1:] + kwargs)})"
        return f"{target_name(node.target)}({', '.join(args + kwargs)})"

    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            break
        if node.op not in ("call_function", "call_method"):
            raise _Refused
        inputs = node.all_input_nodes
        per_member = any(kind[n] in (_MEMBER, _SPLIT) for n in inputs)
        name = f"v{len(lines)}"
        if not per_member:
            lines.append(f"{name} = {call(node, None)}")
            kind[node], expr[node] = (_JOINED, name)
            continue
        first = node.args[0] if node.args else None
        out = node.kwargs.get("out")
        if isinstance(out, fx.Node) and kind[out] == _JOINED:
            # written into its segments of a joined buffer: the result is that buffer
            if out not in rows and not _row_value(out, batch):
                raise _Refused
            for i in range(members):
                lines.append(call(node, i, segment(expr[out], i)))
            kind[node], expr[node] = _JOINED, expr[out]
        elif _in_place(node) and isinstance(first, fx.Node) and kind[first] == _JOINED:
            for i in range(members):
                lines.append(call(node, i))
            kind[node], expr[node] = _JOINED, expr[first]
        elif node.op == "call_function" and not _in_place(node) and _row_value(node, batch) and _has_out(node.target):
            val = node.meta["val"]
            lines.append(f"{name} = scratch({sites}, total, {tuple(val.shape[1:])!r}, {target_name(val.dtype)}, "
                         f"buffers[0].device)")
            sites += 1
            for i in range(members):
                lines.append(call(node, i, segment(name, i)))
            kind[node], expr[node] = _JOINED, name
        else:
            for i in range(members):
                lines.append(f"{name}_{i} = {call(node, i)}")
            kind[node], expr[node] = _SPLIT, [f"{name}_{i}" for i in range(members)]
    if not any(n.op == "placeholder" for n in placeholders[num_leading + arity:]):
        raise _Refused
    body = "\n    ".join(lines) if lines else "pass"
    source = f"def run(total, sizes, prefixes, operands, buffers, scratch):\n    {body}\n"
    code = compile(source, "<phalanx op-type group>", "exec")
    exec(code, names)       # noqa: S102  (our own generated straight-line code)
    run = names["run"]
    run.source = source
    return run
