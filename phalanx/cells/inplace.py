"""In-place pointwise ops for inference: a program graph whose elementwise ops overwrite a temporary
of their own instead of allocating a result, where nothing can tell the difference.

NOTE: [In-place inference] Under no_grad a batched cell's tail (an LSTM's gate activations and
state update: a dozen sigmoid / tanh / mul / add over [rows, hidden]) allocates a fresh tensor per
op; ``sigmoid_`` / ``mul_`` on the program's own temporaries compute the same values without the
allocations and with less memory traffic. The same op, but not always the same bits: on a strided
piece of a temporary (a gate chunk) an in-place op can take ATen's non-vectorized loop where the
out-of-place op ran the vectorized one on a contiguous result, so a GRUCell's program differs from
its autograd twin by an ulp (2.98e-8 measured); within float tolerance, as every batched kernel. An op
``f(a, ...)`` becomes ``f_(a, ...)`` when

- ``a`` is a region of memory the program allocated itself (a result of a non-view op, or a view
  of one through plain views and splits; never a placeholder: operands, parameters, hoisted values
  and the batch size are not the program's to write), with the result's shape and dtype (no
  broadcasting into ``a``, no type promotion) and no ``expand`` on the way (overlapping memory);
- no other argument of the op overlaps ``a``'s region except ``a`` itself;
- nothing after the op (including the graph's output) reads an alias of the region made before it:
  those readers expect the old values. Readers of the op's own result see the new ones, as before.
  A view (a split's ``getitem``) reads nothing itself: what reads it is checked through its region,
  so one gate's piece taken after another gate's ``sigmoid_`` does not block it.

NOTE: [Consumed operands] an operand whose rows nobody reads after this batch (a split cell's
input part, read only by its own rest: an LSTM step's slice of the hoisted input projections) may
be handed to the program as its own memory: the executor's inference loop asks for that
(``consume``), and the step's GEMM then accumulates straight into those rows (``addmm_``) instead
of copying them into a fresh result first. Every other caller (the per-instance function, error
localization, training) gets the program that never writes an operand.

Regions are tracked through views by schema alias annotations (plus the ``unsafe_*`` family, views
without one); a split's pieces are disjoint sub-regions, so ``sigmoid_`` of one gate chunk leaves
the others readable. Training keeps the functional graph (autograd saves tensors these would
overwrite).
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from .sparse import row_sparse_embedding

_ATEN = torch.ops.aten
# Views whose schema carries no alias annotation.
_UNANNOTATED_VIEWS = {_ATEN._unsafe_view.default, _ATEN.unsafe_split.Tensor, _ATEN.unsafe_split_with_sizes.default,
                      _ATEN.unsafe_chunk.default}
_SPLITS = {_ATEN.unsafe_split.Tensor, _ATEN.unsafe_split_with_sizes.default, _ATEN.unsafe_chunk.default,
           _ATEN.split.Tensor, _ATEN.split_with_sizes.default, _ATEN.chunk.default}
# Views through which a region may still be written (no overlap is created).
_WRITABLE_VIEWS = {_ATEN.view.default, _ATEN._unsafe_view.default, _ATEN.reshape.default, _ATEN.unsqueeze.default,
                   _ATEN.squeeze.dim, _ATEN.squeeze.dims, _ATEN.squeeze.default, _ATEN.slice.Tensor,
                   _ATEN.select.int, _ATEN.t.default, _ATEN.transpose.int, _ATEN.permute.default,
                   _ATEN.alias.default, *_SPLITS}
# Elementwise ops whose in-place variant computes the same values into the first argument.
_UNARY = {getattr(_ATEN, name).default: getattr(_ATEN, name + "_").default
          for name in ("sigmoid", "tanh", "relu", "exp", "neg", "sin", "cos", "log", "sqrt", "rsqrt", "abs",
                       "reciprocal", "erf", "expm1", "log1p", "sign", "floor", "ceil", "trunc", "round")}
_BINARY = {_ATEN.mul.Tensor: _ATEN.mul_.Tensor, _ATEN.add.Tensor: _ATEN.add_.Tensor,
           _ATEN.sub.Tensor: _ATEN.sub_.Tensor, _ATEN.div.Tensor: _ATEN.div_.Tensor,
           _ATEN.mul.Scalar: _ATEN.mul_.Scalar, _ATEN.add.Scalar: _ATEN.add_.Scalar,
           # a GEMM accumulating into a temporary of the program (NOTE: [Accumulated GEMMs])
           _ATEN.addmm.default: _ATEN.addmm_.default}
# The in-place results are their target seen again: writable as it was.
_WRITABLE_VIEWS |= {*_UNARY.values(), *_BINARY.values()}
_COMMUTATIVE = {_ATEN.mul.Tensor, _ATEN.add.Tensor}
_KWARGS_OK = {_ATEN.add.Tensor, _ATEN.sub.Tensor, _ATEN.addmm.default}    # alpha / beta: same for both forms


def _is_view(node: fx.Node) -> bool:
    target = node.target
    if target in _UNANNOTATED_VIEWS:
        return True
    schema = getattr(target, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def _regions(graph: fx.Graph, owned: frozenset = frozenset()) -> dict[fx.Node, tuple]:
    """node -> (root, path, writable): two values share memory when they have the same root and one
    path is a prefix of the other (a split's pieces extend the path with their index). Placeholders
    are roots that are never writable, except the ``owned`` ones (NOTE: [Consumed operands]); an
    unknown view keeps its base's region, read-only."""
    region: dict[fx.Node, tuple] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            region[node] = (node, (), node.name in owned)
        elif node.op != "call_function":
            continue
        elif node.target is operator.getitem:
            base = node.args[0]
            root, path, writable = region.get(base, (base, (), False))
            if isinstance(base, fx.Node) and base.target in _SPLITS:
                region[node] = (root, (*path, node.args[1]), writable)
            elif isinstance(base, fx.Node) and base.op == "call_function" and _is_view(base):
                region[node] = (root, path, False)
            else:       # one result of a multi-result op: its own memory
                region[node] = (base, (node.args[1],), True)
        elif isinstance(node.target, torch._ops.OpOverload) and _is_view(node):
            base = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            root, path, writable = region.get(base, (node, (), False))
            region[node] = (root, path, writable and node.target in _WRITABLE_VIEWS)
        else:
            region[node] = (node, (), isinstance(node.target, torch._ops.OpOverload))
    return region


def _overlap(a: tuple, b: tuple) -> bool:
    if a[0] is not b[0]:
        return False
    n = min(len(a[1]), len(b[1]))
    return a[1][:n] == b[1][:n]


def _same_meta(a: fx.Node, out: fx.Node) -> bool:
    va, vo = a.meta.get("val"), out.meta.get("val")
    return isinstance(va, torch.Tensor) and isinstance(vo, torch.Tensor) and va.shape == vo.shape \
        and va.dtype == vo.dtype


def copy_graph(graph: fx.Graph) -> fx.Graph:
    """A copy of ``graph`` to rewrite, each node with its own copy of the metadata."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        env[node] = new.node_copy(node, lambda n: env[n])
        env[node].meta = dict(node.meta)
    return new


def inplace_graph(graph: fx.Graph, owned: frozenset = frozenset()) -> tuple[fx.Graph, int]:
    """A copy of ``graph`` with eligible elementwise ops in place (NOTE: [In-place inference]) and how
    many were rewritten. ``owned``: names of placeholders (operands) the caller hands over to be
    overwritten (NOTE: [Consumed operands]). Regions are computed once; an accepted op's own memory is then remapped
    onto its target's region (``remap``), and the reads of each root are kept together, so a
    candidate checks only the reads of its own memory (near-linear in the graph)."""
    new = copy_graph(graph)
    nodes = list(new.nodes)
    region = _regions(new, owned)
    reads: dict = {}            # root -> [(reader position, value read)]
    for i, node in enumerate(nodes):
        if node.op == "call_function" and (node.target is operator.getitem or _is_view(node)):
            continue            # a view reads no values; what reads it is checked through its region
        for value in node.all_input_nodes:
            reads.setdefault(region[value][0], []).append((i, value))
    remap: dict = {}            # root of an accepted op -> (root, path) of the memory it wrote

    def resolve(r):
        root, path, writable = r
        while root in remap:
            root, prefix = remap[root]
            path = prefix + path
        return root, path, writable

    rewritten = 0
    for i, node in enumerate(nodes):
        if node.op != "call_function" or node.kwargs and node.target not in _KWARGS_OK:
            continue
        inplace = _UNARY.get(node.target) or _BINARY.get(node.target)
        if inplace is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        candidates = [0, 1] if node.target in _COMMUTATIVE and not node.kwargs and len(node.args) == 2 else [0]
        for k in candidates:
            target = node.args[k]
            if not isinstance(target, fx.Node) or target not in region:
                continue
            r = resolve(region[target])
            if not _writable(r, target, node, i, region, reads.get(r[0], ()), resolve):
                continue
            node.target, node.args = inplace, (target, *[a for j, a in enumerate(node.args) if j != k])
            remap[node] = (r[0], r[1])        # the op's result is that memory now
            reads.setdefault(r[0], []).extend(reads.pop(node, ()))
            rewritten += 1
            break
    new.lint()
    return new, rewritten


def _writable(r: tuple, target: fx.Node, node: fx.Node, position: int, region: dict, reads, resolve) -> bool:
    if r[0] is None or not r[2] or not _same_meta(target, node):
        return False
    for other in node.all_input_nodes:
        if other is not target and _overlap(resolve(region[other]), r):
            return False
    for at, value in reads:
        # the op's own result (and views of it) carry the new values, which is what they expect
        if at > position and value is not node and not _derived_from(value, node) \
                and _overlap(resolve(region[value]), r):
            return False
    return True


def _derived_from(value: fx.Node, node: fx.Node) -> bool:
    """Is ``value`` ``node`` seen through views only?"""
    while isinstance(value, fx.Node) and value is not node:
        if value.op != "call_function" or not (value.target is operator.getitem or _is_view(value)):
            return False
        value = value.args[0]
    return value is node


# NOTE: [Direct calls] an fx program calls ``torch.ops.aten.<op>.<overload>`` objects: each call goes
# through a Python ``OpOverload.__call__`` and the boxed, schema-driven argument parser, several
# microseconds per op, which is most of a small batch's time (an LSTM step's tail is ~20 ops).
# The no_grad program calls the same kernels through torch's generated bindings instead
# (``torch.sigmoid_``, ``x.view(...)``); only overloads listed here, whose binding takes the same
# arguments and reaches the same kernel; everything else keeps its OpOverload.
_FUNCTIONS = {
    _ATEN.addmm.default: torch.addmm, _ATEN.mm.default: torch.mm, _ATEN.bmm.default: torch.bmm,
    _ATEN.mul.Tensor: torch.mul, _ATEN.add.Tensor: torch.add, _ATEN.sub.Tensor: torch.sub,
    _ATEN.div.Tensor: torch.div, _ATEN.unsqueeze.default: torch.unsqueeze, _ATEN.squeeze.dims: torch.squeeze,
    _ATEN.squeeze.dim: torch.squeeze, _ATEN.unsafe_split.Tensor: torch.unsafe_split, _ATEN.cat.default: torch.cat,
    _ATEN.t.default: torch.t, _ATEN.index_select.default: torch.index_select, _ATEN.select.int: torch.select,
    # the same pieces; the unsafe form only skips autograd's view bookkeeping (torch.split itself is
    # a Python wrapper), and this program runs without autograd
    _ATEN.split.Tensor: torch.unsafe_split, _ATEN.split_with_sizes.default: torch.unsafe_split_with_sizes,
    _ATEN.embedding.default: torch.embedding,
    **{getattr(_ATEN, name).default: getattr(torch, name)
       for name in ("sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_", "exp", "exp_", "neg", "neg_")},
}
_METHODS = {
    _ATEN.view.default: "view", _ATEN._unsafe_view.default: "reshape", _ATEN.expand.default: "expand",
    _ATEN.mul_.Tensor: "mul_", _ATEN.add_.Tensor: "add_", _ATEN.sub_.Tensor: "sub_", _ATEN.div_.Tensor: "div_",
    _ATEN.mul_.Scalar: "mul_", _ATEN.add_.Scalar: "add_", _ATEN.mul.Scalar: "mul", _ATEN.add.Scalar: "add",
    _ATEN.addmm_.default: "addmm_",
}


def direct_calls(graph: fx.Graph) -> int:
    """Rewrite listed OpOverload calls of ``graph`` to torch's bindings (NOTE: [Direct calls])."""
    done = 0
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _FUNCTIONS:
            node.target = _FUNCTIONS[node.target]
        elif node.target in _METHODS:
            node.op, node.target = "call_method", _METHODS[node.target]
        else:
            continue
        done += 1
    graph.lint()
    return done


# NOTE: [Direct outputs] a batch's outputs are copied into their arena rows after the program made
# them (an LSTM's input projections for every token: megabytes; its h and c every step). Where an
# output is the result of an op with an ``out=`` form, seen through order-keeping views only
# (``squeeze`` / ``unsqueeze`` / ``view``) and computed once for that output alone, the no_grad
# program takes a buffer for it (after the operands) and computes the op into it with ``out=``: the
# executor passes the output's arena rows (reshaped to the op's result only where its shape
# differs). The ops: GEMMs, ``cat``, ``index_select``, an embedding lookup of one index per row
# (its forward is ``index_select`` of the weight) and the elementwise ops of the in-place rewrite,
# in either form. An op the rewrite made in place (``a.mul_(b)``, an LSTM's
# ``h = o * tanh(c)`` into its gate buffer) prefers the caller's buffer: ``torch.mul(a, b,
# out=rows)`` computes the same values with the same kernel, and leaves ``a`` as it was, which is
# safe because the rewrite already proved that nothing after the op reads ``a``'s region except
# through the op's result, and every such reader now reads the buffer. Same values, no copy and no
# Python write per output (measured: the same kernel time as the in-place form, the executor's
# ``cat`` into the arena saved). An output no op of the program computes (an operand or a
# parameter seen through views) keeps the copy.
_OUT_FORMS = {torch.addmm, torch.mm, torch.bmm, torch.cat, torch.index_select,
              torch.mul, torch.add, torch.sub, torch.div,
              torch.sigmoid, torch.tanh, torch.exp, torch.neg}      # (``torch.relu`` has no out= form)
# in-place forms (after the rewrite and direct calls) -> the function that writes ``out=`` instead
_FUNCTION_OUT = {torch.sigmoid_: torch.sigmoid, torch.tanh_: torch.tanh, torch.exp_: torch.exp, torch.neg_: torch.neg}
_METHOD_OUT = {"addmm_": torch.addmm, "mul_": torch.mul, "add_": torch.add, "sub_": torch.sub, "div_": torch.div,
               "mul": torch.mul, "add": torch.add}
_ORDER_VIEWS = {torch.squeeze, torch.unsqueeze}
_ORDER_METHODS = {"view", "reshape"}


def _embedding_rows(node: fx.Node) -> bool:
    """An embedding lookup of one index per row (also the row-sparse one of cells/sparse.py): its
    forward is ``index_select`` of the weight, which has an ``out=`` form (padding_idx,
    scale_grad_by_freq and sparse only change its gradient)."""
    if node.op != "call_function" or node.target not in (torch.embedding, row_sparse_embedding) or len(node.args) < 2:
        return False
    weight, indices = node.args[0], node.args[1]
    w, i = (getattr(n, "meta", {}).get("val") for n in (weight, indices))
    return isinstance(w, torch.Tensor) and isinstance(i, torch.Tensor) and w.dim() == 2 and i.dim() == 1


def _out_function(node: fx.Node):
    """The ``out=`` function computing ``node``'s values, or None."""
    if "out" in node.kwargs:
        return None
    if _embedding_rows(node):
        return torch.index_select
    if node.op == "call_function":
        return node.target if node.target in _OUT_FORMS else _FUNCTION_OUT.get(node.target)
    if node.op == "call_method":
        return _METHOD_OUT.get(node.target)
    return None


def _through_views(node) -> "fx.Node | None":
    """The op an output is, seen through order-keeping views (each read by nothing else)."""
    while isinstance(node, fx.Node) and ((node.op == "call_function" and node.target in _ORDER_VIEWS)
                                         or (node.op == "call_method" and node.target in _ORDER_METHODS)):
        node = node.args[0]
    return node if isinstance(node, fx.Node) else None


def outputs_into(graph: fx.Graph, out_avals: tuple) -> "tuple[bool, ...] | None":
    """Give ``graph`` (after ``direct_calls``) one buffer placeholder per eligible output (NOTE:
    [Direct outputs]); which outputs take one, or None (and ``graph`` unchanged) when none does."""
    output = next(n for n in graph.nodes if n.op == "output")
    outs = output.args[0]
    if not isinstance(outs, (tuple, list)) or len(outs) != len(out_avals):
        return None
    sources = [_through_views(o) for o in outs]
    direct = []
    for node, want in zip(sources, out_avals, strict=True):
        val = node.meta.get("val") if node is not None else None
        ok = (node is not None and _out_function(node) is not None and sum(s is node for s in sources) == 1
              and node.meta.get("bdim", 0) == 0 and isinstance(val, torch.Tensor) and val.dim() >= 1
              and val.dtype == want.dtype and val.shape[1:].numel() == want.numel)
        direct.append(ok)
    if not any(direct):
        return None
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    buffers = {}
    for k in reversed(range(len(outs))):
        if direct[k]:
            with graph.inserting_after(last):
                buffers[k] = graph.placeholder(f"into_{k}")
    for k, buffer in buffers.items():
        node = sources[k]
        target = buffer
        if tuple(node.meta["val"].shape[1:]) != tuple(out_avals[k].shape):
            with graph.inserting_before(node):
                target = graph.call_method("view", (buffer, [-1, *node.meta["val"].shape[1:]]))
        fn = _out_function(node)
        if _embedding_rows(node):
            node.args = (node.args[0], 0, node.args[1])
        node.op, node.target, node.kwargs = "call_function", fn, {**node.kwargs, "out": target}
    graph.lint()
    return tuple(direct)
