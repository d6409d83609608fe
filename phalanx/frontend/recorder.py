"""The recorder: turns cell calls and torch ops on lazy values into graph nodes.

One Recorder is active per thread during a phalanx run (``_SLOT.rec``: a thread-local, so eager
calls of the same model on other threads stay eager; the hot path reads it on every cell call). ``record_cell`` is that hot path: a flat loop over the arguments,
one dict lookup for the signature, one append per column. Everything slow (shape inference,
finding the parameters a cell reads, validating outputs) happens once per new signature, in
``_new_signature``.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from ..errors import CellCallError, DataDependentError, PhalanxError, ResultStructureError, UnsupportedOpError
from ..ir.aval import AVal, aval, aval_of
from ..ir.columns import FLOAT_KEY, INT_KEY, TENSOR_KEY, RecorderSlot, is_stale, plain_items
from ..ir.graph import DataflowGraph
from ..ir.signature import ArgKind, Signature, SignatureTable
from ..rules import shifted_call, stacked_dim
from .capture import run_capturing
from .input_split import INPUT_DEPTH, attach_program, split_signatures
from .warm import caches_for

# This thread's active Recorder (``rec``) and, while a Batcher call runs its instances as fibers, its
# runtime/fibers.Hub (``hub``): per thread like a threading.local; natively read by the cell call
# fast path without an attribute lookup (NOTE: [Native recorder slot] in ir/_columns.c). A
# Recorder's ``graph`` is fixed at construction (the slot caches it when ``rec`` is set).
_SLOT = RecorderSlot()


class _Substitution(threading.local):
    # id(parameter) -> the tensor a flush's kernels read instead (runtime/params.py sets it).
    aliases: "dict[int, torch.Tensor] | None" = None


SUBSTITUTION = _Substitution()

# NOTE: [Phase depth] depth restarts per program phase (ACRoBat): a node in phase p gets depth
# (p << PHASE_SHIFT) + its depth inside the phase, so the same decoder step of every instance has
# one depth however long each encoder was, depth still grows along every edge, and phases of
# higher rank run after lower ones. DataflowGraph.freeze() renumbers depths densely.
PHASE_SHIFT = 32

# Key markers for Python-number operands of cells (their aval alone would collide with LAZY ones);
# the int and float ones are shared with the native fast path (ir/columns.py).
_INT_KEY, _FLOAT_KEY, _BOOL_KEY = INT_KEY, FLOAT_KEY, object()


def active() -> "Recorder | None":
    return _SLOT.rec


def force_value(value, what: str) -> torch.Tensor:
    """A lazy value's data, for a suspension point (``bool``, ``item``...): the fibers hub suspends
    the instance until its round is flushed (runtime/fibers.py). Without a hub (``Batcher.record``,
    policy training) there is no value to wait for."""
    hub = _SLOT.hub
    if hub is None:
        raise _no_value(value, what)
    return hub.force(value, what)


def force_item(value):
    """``value.item()``: as ``force_value``, but the Python number (a decoder's next word is one per
    step; the hub reads a round's 0-d values as one Python list)."""
    hub = _SLOT.hub
    if hub is None:
        raise _no_value(value, ".item()")
    return hub.item(value)


def _no_value(value, what: str) -> DataDependentError:
    return DataDependentError(
        f"{what} on {value!r} needs its value, which does not exist while recording; run the instances "
        f"with a Batcher call (fibers), keep the decision inside a cell, or run this code outside phalanx")


def resolve_stale(value, name: str) -> torch.Tensor:
    """A lazy value of an earlier fiber round, as the concrete tensor a later round reads."""
    hub = _SLOT.hub
    if hub is None:
        raise PhalanxError(f"{name}: got a lazy value from a finished phalanx run")
    return hub.resolve_stale(value, name)


def check_stale(g, value, name: str) -> None:
    """``value`` (not of graph ``g``) must be a lazy value of an earlier round of the run recording
    ``g``: then it is recorded as itself, an immediate the hub resolves to its concrete row when ``g``
    is flushed (NOTE: [Values across rounds] in runtime/fibers.py), as the native fast path does."""
    if not is_stale(g, value):
        raise PhalanxError(f"{name}: got a lazy value from a finished phalanx run")


def active_or_error() -> "Recorder":
    """The active recorder. Lazy values from a finished run are caught where they are recorded
    (their ``graph`` is not the active one)."""
    rec = _SLOT.rec
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
    # Parameters are model state shared by all instances: broadcast to a batch, never stacked
    # (ACRoBat's parameter reuse, decided by type at record time). Any other tensor, even a leaf that
    # requires grad, is per-instance data: keying op types by its identity would make one op type
    # per tensor (unbounded tables, batches of one).
    return isinstance(t, torch.nn.Parameter)


def number_aval(x) -> AVal:
    if type(x) is bool:
        return aval((), torch.bool)
    if type(x) is int:
        return aval((), torch.int64)
    return aval((), torch.get_default_dtype())


def number_to_tensor(x, device=None) -> torch.Tensor:
    """The 0-d tensor a cell receives for a Python number, eagerly and batched alike."""
    return torch.tensor(x, dtype=number_aval(x).dtype, device=device)


def _static_key(obj, op_name: str):
    t = type(obj)
    # Numbers keyed with their type, floats exactly: 1, 1.0 and True are equal as dict keys but give
    # ops of other dtypes; -0.0 == 0.0 and nan != nan as keys, but not as arguments.
    if t is float:
        return (float, obj.hex())
    if t is int or t is bool:
        return (t, obj)
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

    def __init__(self, table: SignatureTable, device: "torch.device | None" = None, run: Any = None):
        self.table = table
        self.graph = DataflowGraph(table, device)
        self.graph.run = run              # the fibers run (a token): values of its earlier rounds may be read
        # The fast path of a cell call (frontend/cell.py): native when built (NOTE: [Native columns]).
        self.append_call = self.graph.append_call
        # Per cell and op type: what the previous Recorder of this table learned on the Python path
        # (frontend/warm.py, NOTE: [Warm recorder caches]); the fast entries go into the new graph.
        self.caches = caches = caches_for(table, self.graph.device)
        self.last_sig = caches.last_sig           # cell -> the signature of its last all-lazy call (split cells)
        self.splits = caches.splits               # (signature, kept operands) -> (prefix, rest, others) | None
        self.split_masks = caches.split_masks     # signature -> {kept-operands bit mask: native split parts | None}
        self.ragged_calls = caches.ragged_calls   # cell -> its last ragged op type and pattern (frontend/ragged.py)
        if caches.fast_calls:
            self.graph.fast_calls.update(caches.fast_calls)
        self.inst = 0
        self.phase = 0
        self.phase_base = 0

    def begin_instance(self, inst: int, phase: int = 0) -> None:
        self.inst = inst
        self.set_phase(phase)

    def set_phase(self, phase: int) -> None:
        """Nodes recorded from now on belong to ``phase`` (frontend/phase.py, NOTE: [Phase depth])."""
        self.phase = phase
        self.phase_base = self.graph.phase_base = phase << PHASE_SHIFT
        self.graph.set_instance(self.inst, phase)

    # *** cells ***
    def record_cell(self, cell, args: tuple, kwargs: dict):
        """A cell call that ``append_call`` (the fast path, ir/columns.py) declined: the first call of
        the cell with this table (NOTE: [Warm recorder caches]), other avals, kwargs, tensors, a new
        split mask (and every split in the Python twin). Resolves the op type and registers the cell's fast entry, so the next call like
        it takes the fast path."""
        if kwargs:
            return self._record_general(cell, cell._phalanx_name, cell._phalanx_fn(), args, kwargs,
                                        numbers_are_operands=True)
        hit = self.ragged_calls.get(cell)
        if hit is not None:         # NOTE: [Ragged fast path] in frontend/ragged.py
            out = ragged.record_known_call(self, hit, args)
            if out is not None:
                return out
        g = self.graph
        arg_code = g.arg_code
        # A split cell's last signature, when every argument is a lazy value of the same avals.
        sig = self.last_sig.get(cell)
        if sig is not None and len(args) == len(sig.in_avals):
            mark = len(arg_code)
            depth = 0
            for a, av in zip(args, sig.in_avals):
                if type(a) is not LazyValue or a.aval is not av or a.graph is not g:
                    del arg_code[mark:]
                    break
                arg_code.append(a.vid)
                d = a.depth
                if d >= depth:
                    depth = d + 1
            else:
                return self._record_split(g, sig, mark, args, depth)
        imms = g.imms
        mark = len(arg_code)
        key = [cell]
        depth = 0
        for a in args:
            t = type(a)
            if t is LazyValue:
                if a.graph is not g:
                    # A value of an earlier fiber round: a tensor operand of the lazy value's aval, recorded
                    # as itself and resolved to its row at the flush (NOTE: [Values across rounds]).
                    check_stale(g, a, cell._phalanx_name)
                    key.append((TENSOR_KEY, a.aval))
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
            elif t is torch.Tensor:
                # A per-instance tensor (an initial state, features); Parameters (another type) take
                # the general path, where they become part of the op type.
                key.append((TENSOR_KEY, aval_of(a)))
                arg_code.append(-1 - len(imms))
                imms.append(a)
            else:
                key = None
                break
        sig = self.table.by_key.get(tuple(key)) if key is not None else None
        if sig is None:
            # A new signature, or arguments only the general path handles: undo and go general.
            del imms[len(imms) - sum(1 for c in arg_code[mark:] if c < 0):]
            del arg_code[mark:]
            nodes = len(g.node_sig)
            out = self._record_general(cell, cell._phalanx_name, cell._phalanx_fn(), args, kwargs,
                                       numbers_are_operands=True)
            if len(g.node_sig) == nodes + 1:
                sig = self.table.sigs[g.node_sig[-1]]
                if sig.callee is cell and not sig.splittable:
                    self._register_fast(g, cell, sig)
            return out
        self._register_fast(g, cell, sig)
        if sig.splittable:
            if sig.all_lazy:
                self.last_sig[cell] = sig
            return self._record_split(g, sig, mark, args, depth)
        return self._append_node(g, sig, depth)

    def _register_fast(self, g, cell, sig: Signature) -> None:
        """Let ``append_call`` record the cell's next calls like this one (ir/columns.py).

        NOTE: [Fast entry chains] a cell may be called with several argument patterns in one graph:
        an RNN step reads a plain tensor h0 at each chain's first step and lazy states after it, a
        decoder step alternates stale and fresh operands. Each op type of the cell keeps its entry,
        newest first, in a chain of at most ``_FAST_ENTRIES`` (``next``, the entry's last item), so
        alternating patterns stay native; with one entry, the tagger sent two calls per chain and
        direction (a quarter of its chain steps at 16 words a sentence) through this Python path."""
        entry = sig.fast_entry
        if entry is None:
            return
        # The split of each kept-operands mask is decided once, by _record_split (split_masks).
        split = (INPUT_DEPTH, self.split_masks.setdefault(sig, {})) if sig.splittable else None
        older = []
        old = g.fast_calls.get(cell)
        while old is not None and len(older) < _FAST_ENTRIES - 1:
            if old[0] != sig.sid:
                older.append((*old[:4], old[4] if len(old) > 4 else None))
            old = old[5] if len(old) > 5 else None
        chained = None
        for e in reversed(older):
            chained = (*e, chained)
        g.fast_calls[cell] = self.caches.fast_calls[cell] = (*entry, split, chained)
        self.caches.watch(sig)

    def _record_split(self, g, sig: Signature, mark: int, args: tuple, depth: int):
        """NOTE: [Input split] the part of an ahead-of-time cell that reads only *input-like*
        operands (per-instance data, or lazy values recorded at most ``INPUT_DEPTH`` levels into the
        instance's phase: embeddings, their dropout or activation) while another operand is deeper
        (a recurrent state) becomes its own node right after those inputs, so every instance's
        input part runs in one large GEMM (``W_ih x_t`` for all tokens at once, as hand-written
        LSTMs hoist it; a lattice node's embedding and input projection of its character); the
        rest stays at the cell's depth. Only where the input part holds a GEMM (cells/split.py,
        NOTE: [Split rule]); ``CellOptions(split=False)`` turns it off.

        The first steps of a chain (depth <= ``INPUT_DEPTH + 1`` into the phase) read a state that
        is itself still shallow: there the operands one level below the call are the recurrent ones
        and only shallower ones are input-like, so step 2 and 3 of a chain split too (their input
        part joins every other step's, at the inputs' depth); the first step, with no lazy state,
        does not."""
        # Shallower than every recurrent operand (depth - 1) and at most INPUT_DEPTH into the phase.
        limit = min(self.phase_base + INPUT_DEPTH, depth - 2)
        if limit < self.phase_base:
            return self._append_node(g, sig, depth)    # the phase's first level: nothing recurrent
        keep = []
        deep = False
        for i, a in enumerate(args):
            if type(a) is LazyValue and a.graph is g and a.depth > limit:
                deep = True
            else:
                keep.append(i)       # an input-like lazy value, or per-instance data (a number, a tensor)
        if not keep or not deep:
            return self._append_node(g, sig, depth)
        keep = tuple(keep)
        parts = self.splits.get((sig, keep), _NO_SPLIT)
        if parts is _NO_SPLIT:
            # Training flags are fixed during a call; kept across calls while they hold (frontend/warm.py).
            flags = tuple(m.training for m in sig.modules)
            parts = self.splits[(sig, keep)] = split_signatures(self.table, sig, flags, keep)
            self.caches.flags[sig] = flags
            self.caches.watch(sig, *(parts[:2] if parts is not None else ()))
        masks = self.split_masks.get(sig)
        if masks is not None:
            # What the native fast path records for this mask from now on: set here, as the cell's
            # fast entry may have been registered after its first split (a new op type's first call).
            bit = sum(1 << i for i in keep)
            if bit not in masks:
                prefix, rest, others = parts if parts is not None else (None, None, None)
                masks[bit] = None if parts is None else (
                    prefix.sid, prefix.out_avals, keep, rest.sid, rest.out_avals, rest.single, others)
        if parts is None:
            return self._append_node(g, sig, depth)
        prefix, rest, others = parts
        arg_code = g.arg_code
        codes = arg_code[mark:]
        del arg_code[mark:]
        prefix_depth = 0
        for i in keep:
            arg_code.append(codes[i])
            a = args[i]
            if type(a) is LazyValue and a.graph is g and a.depth >= prefix_depth:
                prefix_depth = a.depth + 1
        first = g.num_values
        self._append_node(g, prefix, prefix_depth)
        arg_code.extend(range(first, first + prefix.num_outputs))
        for i in others:
            arg_code.append(codes[i])
        return self._append_node(g, rest, depth)

    def _append_node(self, g, sig: Signature, depth: int):
        if depth < self.phase_base:
            depth = self.phase_base
        # Inlined DataflowGraph.add_node: this is the per-node hot path.
        first = g.num_values
        g.num_values = first + sig.num_outputs
        g.node_sig.append(sig.sid)
        g.node_depth.append(depth)
        g.arg_start.append(len(g.arg_code))
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
        self.check_device(tensor, "a tensor in the instance")
        key = (_INPUT, aval_of(tensor))
        sig = self.table.by_key.get(key)
        if sig is None:
            sig = self._new_signature(key, None, f"input {key[1]}", _identity, (_OPERAND,), {}, [tensor])
        g = self.graph
        first = g.add_node(sig, [-1 - len(g.imms)], self.phase_base)
        g.imms.append(tensor)
        return LazyValue(first, sig.out_avals[0], self.phase_base, g)

    def lazify(self, instance):
        """Replace the tensors in an instance (itself, or inside tuples / lists / dicts) by lazy values.

        Iterative (an explicit stack), so instances nested thousands of levels deep do not hit the
        recursion limit; containers without tensors are returned as they are, uncopied."""
        t = type(instance)
        if t is not tuple and t is not list and t is not dict:
            return self.record_input(instance) if isinstance(instance, torch.Tensor) else instance
        # The common instances, a flat container of non-tensors ((tree, label)) or of plain lists
        # ((word ids, tag ids)), need no walk: plain containers are found by C-level loops
        # (``plain_items``), not a Python isinstance per word (~15% of the tagger's recording).
        for x in (instance.values() if t is dict else instance):
            tx = type(x)
            if tx is tuple or tx is list or tx is dict:
                if not plain_items(x.values() if tx is dict else x):
                    break
            elif tx not in _PLAIN and isinstance(x, torch.Tensor):
                break
        else:
            return instance
        # Frames: [container, its items, converted items]; children are converted in order.
        stack = [[instance, _items(instance), []]]
        result = None
        while stack:
            container, items, done = frame = stack[-1]
            if len(done) < len(items):
                x = items[len(done)]
                tx = type(x)
                if tx in _PLAIN:
                    done.append(x)
                elif isinstance(x, torch.Tensor):
                    done.append(self.record_input(x))
                elif (tx is tuple or tx is list or tx is dict) and x and not plain_items(x.values() if tx is dict else x):
                    stack.append([x, _items(x), []])
                else:
                    done.append(x)
                continue
            stack.pop()
            if all(a is b for a, b in zip(done, items, strict=True)):
                built = container       # nothing inside changed: keep the user's object
            elif type(container) is dict:
                built = dict(zip(container.keys(), done, strict=True))
            else:
                built = type(container)(done)
            if stack:
                stack[-1][2].append(built)
            else:
                result = built
            del frame
        return result

    def check_device(self, tensor: torch.Tensor, what: str) -> None:
        if tensor.device != self.graph.device:
            raise PhalanxError(f"{what} is on {tensor.device} but the model is on {self.graph.device}; "
                               f"move the instance's tensors to {self.graph.device} (or the model to {tensor.device})")

    # *** torch ops on lazy values ***
    def record_op(self, func, args: tuple, kwargs: dict):
        g = self.graph
        if func is torch.stack:
            # NOTE: [Ragged operands] (frontend/ragged.py): recorded when used, as one op type for any k.
            stacked = ragged.try_stack(self, args, kwargs)
            if stacked is not None:
                return stacked
        # NOTE: [Op fast key] the common op call (positional lazy values, of this graph or stale ones
        # of an earlier fiber round, flat lists of them, static numbers / None / strings / slices,
        # and flat tuples / lists of static ints such as ``F.pad``'s widths) is keyed by a flat tuple
        # built in one loop; the general path's encoder (a recursive walk, ~3x the cost) runs only
        # on the first call of each such key, which then maps to the op type the general path found.
        # Keyword arguments may be statics (``dim=-1``); their names are part of the key, in order.
        fast_key = None
        parts = [_OP_FAST, func]
        for k, v in kwargs.items() if parts is not None else ():
            t = type(v)
            if t is float:
                parts.append((k, float, v.hex()))
            elif t is int or t is bool or t is str or v is None:
                parts.append((k, t, v))
            else:
                parts = None
                break
        if parts is not None:
            for a in args:
                t = type(a)
                if t is LazyValue:
                    if a.graph is g:
                        parts.append(a.aval)
                    elif is_stale(g, a):
                        parts.append((TENSOR_KEY, a.aval))
                    else:
                        break
                elif t is float:
                    parts.append((float, a.hex()))
                elif t is int or t is bool or t is str or a is None:
                    parts.append((t, a))
                elif t is slice:
                    parts.append((slice, a.start, a.stop, a.step))
                elif t is list or t is tuple:
                    part = _sequence_key(g, t, a)
                    if part is None:
                        break
                    parts.append(part)
                else:
                    break
            else:
                fast_key = tuple(parts)
                sig = self.table.by_key.get(fast_key)
                if sig is not None:
                    return self._append_op(g, sig, args)
        try:
            name = _OP_NAMES.get(func)
        except TypeError:               # an unhashable callable: name it every time
            name = "op " + _func_name(func)
        if name is None:
            name = _OP_NAMES[func] = "op " + _func_name(func)
        nodes = len(g.node_sig)
        out = self._record_general(func, name, func, args, kwargs, numbers_are_operands=False)
        if fast_key is not None and len(g.node_sig) == nodes + 1:
            sig = self.table.sigs[g.node_sig[-1]]
            if sig.callee is func and fast_key not in self.table.by_key:
                self.table.by_key[fast_key] = sig
                sig.keys.append(fast_key)
        return out

    def _append_op(self, g, sig: Signature, args: tuple):
        """An op call whose op type its fast key found (NOTE: [Op fast key]): operands in the order
        the general path's encoder finds them; stale values are immediates, static ints nothing."""
        arg_code, imms = g.arg_code, g.imms
        depth = 0
        for a in args:
            for x in a if type(a) is list or type(a) is tuple else (a,):
                if type(x) is not LazyValue:
                    continue                # a static (the key holds it)
                if x.graph is g:
                    arg_code.append(x.vid)
                    if x.depth >= depth:
                        depth = x.depth + 1
                else:
                    arg_code.append(-1 - len(imms))
                    imms.append(x)
        return self._append_node(g, sig, depth)

    # *** the general path: nested arguments, kwargs, tensors, statics ***
    def _record_general(self, callee, name: str, fn: Callable, args: tuple, kwargs: dict,
                        numbers_are_operands: bool):
        g = self.graph
        if numbers_are_operands and not kwargs and any(type(a) is ragged.RaggedStack or type(a) is list for a in args):
            out = ragged.record_ragged_cell(self, callee, name, fn, args)     # NOTE: [Ragged operands]
            if out is not None:
                return out
        operands: list = []          # per-instance operands: LazyValue | number | Tensor
        key_parts: list = []

        def encode(obj):
            t = type(obj)
            if t is ragged.RaggedStack:
                obj = obj.materialize()
                t = LazyValue
            if t is LazyValue and obj.graph is not g:
                # A value of an earlier fiber round: a per-instance tensor operand of the lazy value's
                # aval, resolved to its row at the flush (NOTE: [Values across rounds]).
                check_stale(g, obj, name)
                key_parts.append((TENSOR_KEY, obj.aval))
                operands.append(obj)
                return _OPERAND
            if t is LazyValue:
                operands.append(obj)
                key_parts.append(obj.aval)
                return _OPERAND
            if isinstance(obj, torch.Tensor):
                if _is_shared_tensor(obj):
                    key_parts.append(_Shared(obj))
                    return obj
                self.check_device(obj, f"{name}: a tensor argument")
                operands.append(obj)
                key_parts.append((TENSOR_KEY, aval_of(obj)))
                return _OPERAND
            if t in (int, float, bool) and numbers_are_operands:
                operands.append(obj)
                key_parts.append(("number", number_aval(obj)))
                return _OPERAND
            if t is tuple or t is list:
                key_parts.append((t, len(obj)))
                for x in obj:
                    if type(x) is not LazyValue or x.graph is not g:
                        return t(encode(x) for x in obj)
                # A flat list of this graph's lazy values (a stack's members): no walk.
                operands.extend(obj)
                key_parts.extend([x.aval for x in obj])
                return t([_OPERAND] * len(obj))
            if t is dict:
                key_parts.append((dict, tuple(obj)))
                return {k: encode(v) for k, v in obj.items()}
            key_parts.append(_static_key(obj, name))
            return obj

        template_args = encode(tuple(args))
        template_kwargs = encode(dict(kwargs))
        del encode    # it refers to itself: a cycle per op that only the collector would free
        key = (callee, tuple(key_parts))
        sig = self.table.by_key.get(key)
        if sig is None:
            sig = self._new_signature(key, callee, name, fn, template_args, template_kwargs, operands)
        codes, depth = operand_codes(g, operands)
        if depth < self.phase_base:
            depth = self.phase_base
        if sig.splittable and not template_kwargs and _flat_template(template_args, len(operands)):
            mark = len(g.arg_code)
            g.arg_code.extend(codes)
            return self._record_split(g, sig, mark, operands, depth)
        first = g.add_node(sig, codes, depth)
        return sig.unflatten([LazyValue(first + k, a, depth, g) for k, a in enumerate(sig.out_avals)])

    def _new_signature(self, key, callee, name, fn, template_args, template_kwargs, operands) -> Signature:
        g = self.graph
        kinds, avals, examples = operand_facts(operands, g.device, g)
        per_instance = _bind_template(fn, template_args, template_kwargs)
        meta = {"batching": getattr(callee, "_phalanx_batching", "auto")}
        shifted = shifted_call(fn, template_args, template_kwargs) if callee is fn else None
        if shifted is not None:
            meta["shifted"] = _bind_template(*shifted, force=True)   # rules/dims.py: a batched form
        outputs, captured = run_unrecorded(per_instance, examples, name, avals, capture=True)
        flat, unflatten, flatten = _output_structure(outputs, name)
        if shifted is not None and isinstance(outputs, torch.Tensor):
            meta["stack_dim"] = stacked_dim(*shifted, outputs.dim())
        paths = self.table.paths
        shared = [p.tensor for p in key[1] if type(p) is _Shared] if type(key[1]) is tuple else []
        path = paths.get(id(callee)) or ",".join(paths.get(id(t), "?") for t in shared)
        modules = tuple(callee.modules()) if isinstance(callee, torch.nn.Module) else ()
        own = {id(t) for m in modules for t in (*m._parameters.values(), *m._buffers.values())}
        is_cell = callee is not None and hasattr(callee, "_phalanx_fn")
        sig = Signature(
            sid=len(self.table.sigs), name=name, fn=per_instance, in_kinds=tuple(kinds), path=path,
            in_avals=tuple(avals), out_avals=tuple(aval_of(t) for t in flat), unflatten=unflatten,
            flatten=flatten, captured=captured, callee=callee, modules=modules,
            rediscover=is_cell and any(id(t) not in own for t in captured),
            single=isinstance(outputs, torch.Tensor), plain_tuple=type(outputs) is tuple and unflatten is tuple,
            meta=meta)
        if is_cell and self.table.cells is not None and meta["batching"] == "auto":
            attach_program(sig, callee, self.table.cells, g.device)
        keys = [key]
        if isinstance(key[1], tuple) and is_cell and not template_kwargs and _flat_template(template_args, len(operands)):
            # Also register the flat key of the cell fast path, so the next call skips this path.
            flat_key = [callee]
            for k, a in zip(kinds, avals, strict=True):
                flat_key.append(a if k is ArgKind.LAZY else _number_key(a) if k is ArgKind.NUMBER else (TENSOR_KEY, a))
            keys.append(tuple(flat_key))
            if (sig.single or sig.plain_tuple) and _BOOL_KEY not in flat_key:
                sig.fast_pattern = tuple(flat_key[1:])
        self.table.add(sig, *keys)
        return sig


def operand_facts(operands, device, graph=None) -> tuple[list, list, list]:
    """Kind, aval and an example tensor (zeros for lazy values) of each operand of a new op type. A
    lazy value not of ``graph`` (a stale one, of an earlier fiber round) is a tensor operand."""
    kinds, avals, examples = [], [], []
    for op in operands:
        if type(op) is LazyValue:
            kinds.append(ArgKind.LAZY if graph is None or op.graph is graph else ArgKind.TENSOR)
            avals.append(op.aval)
            examples.append(op.aval.zeros(device))
        elif isinstance(op, torch.Tensor):
            kinds.append(ArgKind.TENSOR)
            avals.append(aval_of(op))
            examples.append(op.detach())
        else:
            kinds.append(ArgKind.NUMBER)
            avals.append(number_aval(op))
            examples.append(number_to_tensor(op, device))
    return kinds, avals, examples


def operand_codes(g, operands) -> tuple[list[int], int]:
    """Operand codes of a node (value ids; immediates appended to ``g.imms``, stale lazy values among
    them) and its depth before the phase floor: 1 + the deepest lazy operand of ``g``, 0 without one
    (NOTE: [Inline depth])."""
    codes = []
    depth = 0
    imms = g.imms
    for op in operands:
        if type(op) is LazyValue and op.graph is g:
            codes.append(op.vid)
            if op.depth >= depth:
                depth = op.depth + 1
        else:
            codes.append(-1 - len(imms))
            imms.append(op)
    return codes, depth


def example_operands(sig: Signature, device=None) -> list:
    """Zero operands of the signature's kinds and shapes (shape inference, rediscovery)."""
    return [a.zeros(device) for a in sig.in_avals]


def rediscover_captured(sig: Signature, device=None) -> None:
    """Find again the tensors a function cell reads from its closure (they may have been rebound)."""
    _, sig.captured = run_unrecorded(sig.fn, example_operands(sig, device), sig.name, sig.in_avals, capture=True)


_INPUT = object()
_NO_SPLIT = object()
_FAST_ENTRIES = 4         # op types per cell the native fast path tries (NOTE: [Fast entry chains])
_OP_FAST = object()       # first item of an op's fast key (NOTE: [Op fast key])


# Types lazify never looks into: the leaves of plain instance data (word ids, labels, names); the
# same as ``plain_items`` (ir/columns.py) accepts.
_PLAIN = frozenset((int, float, bool, str, bytes, complex, type(None)))


def _items(container) -> list:
    return list(container.values()) if type(container) is dict else list(container)


def _identity(x):
    return x


def _number_key(a: AVal):
    if a.dtype is torch.bool:
        return _BOOL_KEY
    return _INT_KEY if a.dtype is torch.int64 else _FLOAT_KEY


def _sequence_key(g, t: type, seq):
    """The op fast key's part for a tuple / list argument (NOTE: [Op fast key]): the avals of lazy
    values (``(TENSOR_KEY, aval)`` for stale ones), or the ints of a static int sequence; None for
    anything else (the general path)."""
    part = [t]
    if seq and type(seq[0]) is int:
        for x in seq:
            if type(x) is not int:
                return None
        part.append(int)
        part.extend(seq)
        return tuple(part)
    for x in seq:
        if type(x) is not LazyValue:
            return None
        if x.graph is g:
            part.append(x.aval)
        elif is_stale(g, x):
            part.append((TENSOR_KEY, x.aval))
        else:
            return None
    return tuple(part)


def _flat_template(template_args, n: int) -> bool:
    return len(template_args) == n and all(x is _OPERAND for x in template_args)


# torch callable -> its readable op name (computed once: record_op runs for every op on a lazy value).
_OP_NAMES: dict = {}

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


def _bind_template(fn, template_args, template_kwargs, force: bool = False) -> Callable:
    """The per-instance callable over operands only: statics and shared tensors are baked in."""
    if not force and _flat_template(template_args, len(template_args)) and not template_kwargs:
        return fn

    def fill(obj, it):
        t = type(obj)
        if obj is _OPERAND:
            return next(it)
        if t is tuple or t is list:
            return t(fill(x, it) for x in obj)
        if t is dict:
            return {k: fill(v, it) for k, v in obj.items()}
        if isinstance(obj, torch.Tensor):           # a shared parameter
            aliases = SUBSTITUTION.aliases
            return aliases.get(id(obj), obj) if aliases else obj
        return obj

    def per_instance(*ops):
        it = iter(ops)
        return fn(*fill(template_args, it), **fill(template_kwargs, it))

    return per_instance


def run_unrecorded(fn, args, name: str, avals=None, capture: bool = False):
    """Run ``fn`` eagerly with recording switched off (shape inference, kernels), wrapping errors so
    they name the cell or op and the operand shapes. With ``capture``, returns ``(result, captured
    tensors)`` (NOTE: [Captured tensors]); shape inference runs without autograd, in any grad mode."""
    slot = _SLOT
    saved, slot.rec = slot.rec, None
    try:
        if capture:
            with torch.inference_mode(False), torch.no_grad():
                return run_capturing(fn, list(args))
        return fn(*args)
    except PhalanxError:
        raise
    except Exception as e:
        shapes = ", ".join(map(repr, avals)) if avals is not None else "?"
        raise CellCallError(f"{name} cannot run on operands ({shapes}): {type(e).__name__}: {e}") from e
    finally:
        slot.rec = saved


def _output_structure(outputs, name: str):
    """Flattened output tensors plus functions to rebuild/flatten the user's structure."""
    if isinstance(outputs, torch.Tensor):
        return [outputs], (lambda vals: vals[0]), (lambda out: (out,))
    if type(outputs) is tuple and all(isinstance(o, torch.Tensor) for o in outputs):
        n = len(outputs)

        def flatten_tuple(out):
            if type(out) is not tuple or len(out) != n:
                raise ResultStructureError(f"{name} returned {_describe(out)} here but a tuple of {n} tensors "
                                           f"when first recorded; a cell must return the same structure every time")
            return out

        return list(outputs), tuple, flatten_tuple
    flat, spec = torch.utils._pytree.tree_flatten(outputs)
    bad = [type(x).__name__ for x in flat if not isinstance(x, torch.Tensor)]
    if bad or not flat:
        raise CellCallError(
            f"{name} returned {type(outputs).__name__} with non-tensor parts ({', '.join(bad) or 'no tensors'}); "
            f"a cell must return a tensor or a tuple/list/dict of tensors")

    def flatten_tree(out):
        leaves, got = torch.utils._pytree.tree_flatten(out)
        if got != spec:
            raise ResultStructureError(f"{name} returned {_describe(out)} here but {_describe(outputs)} when first "
                                       f"recorded; a cell must return the same structure every time")
        return tuple(leaves)

    return flat, (lambda vals: torch.utils._pytree.tree_unflatten(vals, spec)), flatten_tree


def _describe(out) -> str:
    if isinstance(out, torch.Tensor):
        return "a tensor"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return type(out).__name__


from .value import LazyValue  # noqa: E402  (value.py imports this module)
from . import ragged  # noqa: E402  (ragged.py imports this module's names)
