"""The recorder: turns cell calls and torch ops on lazy values into graph nodes.

One Recorder is active during a phalanx run (``_ACTIVE``, a module global because the hot path
reads it on every cell call). ``record_cell`` is that hot path: a flat loop over the arguments,
one dict lookup for the signature, one append per column. Everything slow (shape inference,
finding the parameters a cell reads, validating outputs) happens once per new signature, in
``_new_signature``.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import CellCallError, PhalanxError, UnsupportedOpError
from ..ir.aval import AVal, aval, aval_of
from ..ir.graph import DataflowGraph
from ..ir.signature import ArgKind, Signature, SignatureTable

_ACTIVE: "Recorder | None" = None

# NOTE: [Phase depth] depth restarts per program phase (ACRoBat): a node in phase p gets depth
# (p << PHASE_SHIFT) + its depth inside the phase, so the same decoder step of every instance has
# one depth however long each encoder was, depth still grows along every edge, and phases of
# higher rank run after lower ones. DataflowGraph.freeze() renumbers depths densely.
PHASE_SHIFT = 32

# Key markers for Python-number operands of cells (their aval alone would collide with LAZY ones).
_INT_KEY, _FLOAT_KEY, _BOOL_KEY = object(), object(), object()


def active() -> "Recorder | None":
    return _ACTIVE


def active_or_error() -> "Recorder":
    """The active recorder. Lazy values from a finished run are caught where they are recorded
    (their ``graph`` is not the active one)."""
    rec = _ACTIVE
    if rec is None:
        raise PhalanxError("a lazy value was used outside the phalanx run that created it")
    return rec


class _Shared:
    """A tensor baked into a signature (a parameter): hashed and compared by identity, and kept
    alive by the key so its id cannot be reused by another tensor."""

    __slots__ = ("tensor",)

    def __init__(self, tensor):
        self.tensor = tensor

    def __hash__(self):
        return id(self.tensor)

    def __eq__(self, other):
        return type(other) is _Shared and other.tensor is self.tensor


class _Operand:
    """Placeholder for a per-instance operand inside an argument template."""

    __slots__ = ()


_OPERAND = _Operand()


def _is_shared_tensor(t: torch.Tensor) -> bool:
    # Parameters and other grad-requiring leaves are model state shared by all instances: they are
    # broadcast to a batch, never stacked (ACRoBat's parameter reuse, decided by type at record time).
    return isinstance(t, torch.nn.Parameter) or (t.requires_grad and t.is_leaf)


def number_aval(x) -> AVal:
    if type(x) is bool:
        return aval((), torch.bool)
    if type(x) is int:
        return aval((), torch.int64)
    return aval((), torch.get_default_dtype())


def number_to_tensor(x) -> torch.Tensor:
    """The 0-d tensor a cell receives for a Python number, eagerly and batched alike."""
    return torch.tensor(x, dtype=number_aval(x).dtype)


def _static_key(obj, op_name: str):
    if isinstance(obj, slice):
        return ("slice", obj.start, obj.stop, obj.step)
    try:
        hash(obj)
    except TypeError:
        raise UnsupportedOpError(
            f"{op_name}: argument of type {type(obj).__name__} cannot be part of an op signature") from None
    return obj


class Recorder:
    """Records the instances of one phalanx run into a DataflowGraph."""

    def __init__(self, table: SignatureTable):
        self.table = table
        self.graph = DataflowGraph(table)
        self.inst = 0
        self.phase = 0
        self.phase_base = 0

    def begin_instance(self, inst: int, phase: int = 0) -> None:
        self.inst = inst
        self.set_phase(phase)

    def set_phase(self, phase: int) -> None:
        """Nodes recorded from now on belong to ``phase`` (frontend/phase.py, NOTE: [Phase depth])."""
        self.phase = phase
        self.phase_base = phase << PHASE_SHIFT
        self.graph.set_instance(self.inst, phase)

    # *** cells: the fast path ***
    def record_cell(self, cell, args: tuple, kwargs: dict):
        if kwargs:
            return self._record_general(cell, cell._phalanx_name, cell._phalanx_fn(), args, kwargs,
                                        numbers_are_operands=True)
        g = self.graph
        imms = g.imms
        arg_code = g.arg_code
        mark = len(arg_code)
        key = [cell]
        depth = 0
        for a in args:
            t = type(a)
            if t is LazyValue:
                if a.graph is not g:
                    # A value of an earlier fiber round: its concrete row (NOTE: [Values across rounds]).
                    a = _fibers.resolve_stale(a, cell._phalanx_name)
                    key.append(("tensor", aval_of(a)))
                    arg_code.append(-1 - len(imms))
                    imms.append(a)
                    continue
                key.append(a.aval)
                arg_code.append(a.vid)
                d = a.depth
                if d >= depth:
                    depth = d + 1
            elif t is int or t is float:
                key.append(_INT_KEY if t is int else _FLOAT_KEY)
                arg_code.append(-1 - len(imms))
                imms.append(a)
            elif t is torch.Tensor and not (a.requires_grad and a.is_leaf):
                # A per-instance tensor (an initial state, features); parameters take the general path.
                key.append(("tensor", aval_of(a)))
                arg_code.append(-1 - len(imms))
                imms.append(a)
            else:
                key = None
                break
        sig = self.table.by_key.get(tuple(key)) if key is not None else None
        if sig is None:
            # Not the fast path (new signature, or arguments it does not handle): undo and go general.
            del imms[len(imms) - sum(1 for c in arg_code[mark:] if c < 0):]
            del arg_code[mark:]
            return self._record_general(cell, cell._phalanx_name, cell._phalanx_fn(), args, kwargs,
                                        numbers_are_operands=True)
        if depth < self.phase_base:
            depth = self.phase_base
        # Inlined DataflowGraph.add_node: this is the per-node hot path.
        first = g.num_values
        g.num_values = first + sig.num_outputs
        g.node_sig.append(sig.sid)
        g.node_depth.append(depth)
        g.arg_start.append(len(arg_code))
        if sig.single:
            return LazyValue(first, sig.out_avals[0], depth, g)
        if sig.plain_tuple:
            outs = []
            for a in sig.out_avals:
                outs.append(LazyValue(first, a, depth, g))
                first += 1
            return tuple(outs)
        return sig.unflatten([LazyValue(first + k, a, depth, g) for k, a in enumerate(sig.out_avals)])

    # *** instance tensors ***
    def record_input(self, tensor: torch.Tensor) -> "LazyValue":
        """A tensor found in an instance becomes a lazy value: one ``input`` node that stacks it."""
        key = (_INPUT, aval_of(tensor))
        sig = self.table.by_key.get(key)
        if sig is None:
            sig = self._new_signature(key, None, f"input {key[1]}", _identity, (_OPERAND,), {}, [tensor])
        g = self.graph
        first = g.add_node(sig, [-1 - len(g.imms)], self.phase_base)
        g.imms.append(tensor)
        return LazyValue(first, sig.out_avals[0], self.phase_base, g)

    def lazify(self, instance):
        """Replace the tensors in an instance (itself, or inside tuples / lists / dicts) by lazy values."""
        t = type(instance)
        if isinstance(instance, torch.Tensor):
            return self.record_input(instance)
        if t is tuple or t is list:
            for x in instance:
                if type(x) not in _SCALARS:
                    return t(self.lazify(x) for x in instance)
            return instance            # word ids, tags...: nothing to convert, nothing to copy
        if t is dict:
            return {k: self.lazify(v) for k, v in instance.items()}
        return instance

    # *** torch ops on lazy values ***
    def record_op(self, func, args: tuple, kwargs: dict):
        name = "op " + _func_name(func)
        return self._record_general(func, name, func, args, kwargs, numbers_are_operands=False)

    # *** the general path: nested arguments, kwargs, tensors, statics ***
    def _record_general(self, callee, name: str, fn: Callable, args: tuple, kwargs: dict,
                        numbers_are_operands: bool):
        g = self.graph
        operands: list = []          # per-instance operands: LazyValue | number | Tensor
        key_parts: list = []

        def encode(obj):
            t = type(obj)
            if t is LazyValue and obj.graph is not g:
                # A value of an earlier fiber round: its concrete row (NOTE: [Values across rounds]).
                obj = _fibers.resolve_stale(obj, name)
                t = torch.Tensor
            if t is LazyValue:
                operands.append(obj)
                key_parts.append(obj.aval)
                return _OPERAND
            if isinstance(obj, torch.Tensor):
                if _is_shared_tensor(obj):
                    key_parts.append(_Shared(obj))
                    return obj
                operands.append(obj)
                key_parts.append(("tensor", aval_of(obj)))
                return _OPERAND
            if t in (int, float, bool) and numbers_are_operands:
                operands.append(obj)
                key_parts.append(("number", number_aval(obj)))
                return _OPERAND
            if t is tuple or t is list:
                key_parts.append((t, len(obj)))
                return t(encode(x) for x in obj)
            if t is dict:
                key_parts.append((dict, tuple(obj)))
                return {k: encode(v) for k, v in obj.items()}
            key_parts.append(_static_key(obj, name))
            return obj

        template_args = encode(tuple(args))
        template_kwargs = encode(dict(kwargs))
        key = (callee, tuple(key_parts))
        sig = self.table.by_key.get(key)
        if sig is None:
            sig = self._new_signature(key, callee, name, fn, template_args, template_kwargs, operands)
        codes = []
        depth = 0
        imms = g.imms
        for op in operands:
            if type(op) is LazyValue:
                codes.append(op.vid)
                if op.depth >= depth:
                    depth = op.depth + 1
            else:
                codes.append(-1 - len(imms))
                imms.append(op)
        if depth < self.phase_base:
            depth = self.phase_base
        first = g.add_node(sig, codes, depth)
        return sig.unflatten([LazyValue(first + k, a, depth, g) for k, a in enumerate(sig.out_avals)])

    def _new_signature(self, key, callee, name, fn, template_args, template_kwargs, operands) -> Signature:
        kinds, avals, examples = [], [], []
        for op in operands:
            if type(op) is LazyValue:
                kinds.append(ArgKind.LAZY)
                avals.append(op.aval)
                examples.append(op.aval.zeros())
            elif isinstance(op, torch.Tensor):
                kinds.append(ArgKind.TENSOR)
                avals.append(aval_of(op))
                examples.append(op.detach())
            else:
                kinds.append(ArgKind.NUMBER)
                avals.append(number_aval(op))
                examples.append(number_to_tensor(op))
        per_instance = _bind_template(fn, template_args, template_kwargs)
        outputs = run_unrecorded(per_instance, examples, name, avals)
        flat, unflatten, flatten = _output_structure(outputs, name)
        leaves = _grad_leaves(flat)
        paths = self.table.paths
        shared = [p.tensor for p in key[1] if type(p) is _Shared] if type(key[1]) is tuple else []
        path = paths.get(id(callee)) or ",".join(paths.get(id(t), "?") for t in shared)
        sig = Signature(
            sid=len(self.table.sigs), name=name, fn=per_instance, in_kinds=tuple(kinds), path=path,
            in_avals=tuple(avals), out_avals=tuple(aval_of(t) for t in flat), unflatten=unflatten,
            flatten=flatten, grad_leaves=leaves, single=isinstance(outputs, torch.Tensor),
            plain_tuple=type(outputs) is tuple and unflatten is tuple,
            meta={"batching": getattr(callee, "_phalanx_batching", "auto")})
        self.table.sigs.append(sig)
        self.table.by_key[key] = sig
        if isinstance(key[1], tuple) and callee is not None and hasattr(callee, "_phalanx_fn") and not template_kwargs:
            # Also register the flat key of the cell fast path, so the next call skips this path.
            flat_key = [callee]
            for k, a in zip(kinds, avals, strict=True):
                flat_key.append(a if k is ArgKind.LAZY else _number_key(a) if k is ArgKind.NUMBER else ("tensor", a))
            if _flat_template(template_args, len(operands)):
                self.table.by_key.setdefault(tuple(flat_key), sig)
        return sig


_INPUT = object()
_SCALARS = frozenset((int, float, bool, str, type(None)))


def _identity(x):
    return x


def _number_key(a: AVal):
    if a.dtype is torch.bool:
        return _BOOL_KEY
    return _INT_KEY if a.dtype is torch.int64 else _FLOAT_KEY


def _flat_template(template_args, n: int) -> bool:
    return len(template_args) == n and all(x is _OPERAND for x in template_args)


_TORCH_NAMESPACES = {"torch": "torch", "torch._C._nn": "torch.nn.functional", "torch._C._linalg": "torch.linalg",
                     "torch._C._special": "torch.special", "torch._C._fft": "torch.fft"}


def _func_name(func) -> str:
    """A readable name for a torch callable: ``torch.cat``, ``Tensor.sum``, ``torch.nn.functional.linear``."""
    name = getattr(func, "__name__", None) or repr(func)
    qual = getattr(func, "__qualname__", "") or ""
    module = getattr(func, "__module__", None) or ""
    if qual.startswith(("_VariableFunctionsClass.", "_VariableFunctions.")):
        return f"torch.{name}"
    if qual.startswith(("Tensor.", "_TensorBase.", "TensorBase.")) or module == "torch._tensor":
        return f"Tensor.{name}"
    if module in _TORCH_NAMESPACES:
        return f"{_TORCH_NAMESPACES[module]}.{name}"
    return f"{module}.{qual or name}" if module else (qual or name)


def _bind_template(fn, template_args, template_kwargs) -> Callable:
    """The per-instance callable over operands only: statics and shared tensors are baked in."""
    if _flat_template(template_args, len(template_args)) and not template_kwargs:
        return fn

    def fill(obj, it):
        t = type(obj)
        if obj is _OPERAND:
            return next(it)
        if t is tuple or t is list:
            return t(fill(x, it) for x in obj)
        if t is dict:
            return {k: fill(v, it) for k, v in obj.items()}
        return obj

    def per_instance(*ops):
        it = iter(ops)
        return fn(*fill(template_args, it), **fill(template_kwargs, it))

    return per_instance


def run_unrecorded(fn, args, name: str, avals=None):
    """Run ``fn`` eagerly with recording switched off (shape inference, kernels), wrapping errors so
    they name the cell or op and the operand shapes."""
    global _ACTIVE
    saved, _ACTIVE = _ACTIVE, None
    try:
        with torch.enable_grad():
            return fn(*args)
    except PhalanxError:
        raise
    except Exception as e:
        shapes = ", ".join(map(repr, avals)) if avals is not None else "?"
        raise CellCallError(f"{name} cannot run on operands ({shapes}): {type(e).__name__}: {e}") from e
    finally:
        _ACTIVE = saved


def _output_structure(outputs, name: str):
    """Flattened output tensors plus functions to rebuild/flatten the user's structure."""
    if isinstance(outputs, torch.Tensor):
        return [outputs], (lambda vals: vals[0]), (lambda out: (out,))
    if type(outputs) is tuple and all(isinstance(o, torch.Tensor) for o in outputs):
        n = len(outputs)
        return list(outputs), tuple, (lambda out: out if len(out) == n else tuple(out))
    flat, spec = torch.utils._pytree.tree_flatten(outputs)
    bad = [type(x).__name__ for x in flat if not isinstance(x, torch.Tensor)]
    if bad or not flat:
        raise CellCallError(
            f"{name} returned {type(outputs).__name__} with non-tensor parts ({', '.join(bad) or 'no tensors'}); "
            f"a cell must return a tensor or a tuple/list/dict of tensors")
    return flat, (lambda vals: torch.utils._pytree.tree_unflatten(vals, spec)), \
        (lambda out: tuple(torch.utils._pytree.tree_leaves(out)))


def _grad_leaves(outputs) -> tuple[torch.Tensor, ...]:
    """Tensors requiring grad that the outputs depend on (a cell's parameters), by walking the
    autograd graph of the example call once per signature."""
    found: dict[int, torch.Tensor] = {}
    seen = set()
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    for o in outputs:
        if o.requires_grad and o.grad_fn is None:
            found[id(o)] = o
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None:
            found[id(var)] = var
        stack.extend(n for n, _ in node.next_functions)
    return tuple(found.values())


from ..runtime import fibers as _fibers  # noqa: E402
from .value import LazyValue  # noqa: E402  (value.py imports this module)
