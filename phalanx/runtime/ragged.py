"""Batched kernels of ragged op types (frontend/ragged.py): a batch whose rows each have their own
number of members in a ragged argument.

NOTE: [Ragged kernels] a ragged argument of a batch arrives as ``values`` [N, *E] (every member
row of every node, in node order: ONE gather, whose backward is the executor's ordinary
``index_add_`` into the gradient arena) and ``offsets`` [B + 1] (``add_ragged_operands``, called by
``build_steps``). Then, chosen once per op type and training flags by comparing with the
per-instance function on probe rows of several arities (as runtime/kernels.py does, taint-checked):
- ``segment``: the cell's own code runs ONCE on the whole batch, the ragged argument being a
  ``RaggedRows`` (values + segment ids standing for [B, k_i, *E]): a sum or mean over the ragged
  dim is one ``index_add`` (a segment sum, divided by the counts for a mean), elementwise ops and
  ``F.linear`` apply to ``values``, a dense [B, 1, *E] operand is broadcast with one gather by
  segment id. This covers a lattice node's ``hs.mean(-2)`` and the child-sum TreeLSTM's per-child
  forget gates ``sigmoid(W_f x + U_f hs) * cs`` summed. Anything else raises inside the cell and
  the op type takes the other kernel; gradients follow from autograd (index_add's backward is a
  gather).
- ``grouped``: rows are split by arity, each group stacked to [n, k, *E] and run by the ordinary
  probe-checked kernel of that arity (native or vmap), the outputs put back in row order. As many
  kernel calls as distinct arities in the batch, but still one batch in the schedule.
Why not ``torch.nested`` jagged tensors (NJT): in torch 2.13 the backward of a sum over the
ragged dim is missing (``aten._nested_sum_backward``), each op on an NJT costs Python-level
dispatch, and the segment form above is the few ops a hand-batched lattice uses anyway
(``manual_lattice``). ``torch.segment_reduce`` has no ``index_add`` advantage on CPU for these
sizes and an extra lengths tensor, so sums are ``index_add``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BatchExecutionError
from ..ir.signature import ArgKind, Signature
from .hoisted import FlushInputs, HoistedRows, constants_of
from .kernels import _matches, data_dependent_error, kernel_for

_PROBE_ROWS = 6
_PROBE_SEED = 0x5EED


class RaggedUnsupported(Exception):
    """A cell did something to a RaggedRows that the segment kernel does not implement."""


def segment_sum(values: torch.Tensor, seg: torch.Tensor, size: int) -> torch.Tensor:
    return values.new_zeros((size, *values.shape[1:])).index_add(0, seg, values)


def offsets_info(offsets: torch.Tensor, num_values: int):
    """(segment id per value, count per row) of CSR ``offsets``; checks they cover the values.
    Offsets made by ``add_ragged_operands`` carry both, computed on the host with the plan
    (NOTE: [Host segments])."""
    known = getattr(offsets, "_phalanx_segments", None)
    if known is not None and known[0] == num_values:
        return known[1], known[3]
    counts = offsets[1:] - offsets[:-1]
    if int(offsets[-1]) != num_values:
        raise BatchExecutionError(f"ragged operand: offsets end at {int(offsets[-1])} but {num_values} values arrived")
    seg = torch.repeat_interleave(torch.arange(len(counts), device=offsets.device), counts)
    return seg, counts


class SegmentKernel:
    """``torch.stack(xs).sum(0)`` / ``.mean(0)`` for a batch: one segment sum (NOTE: [Ragged kernels])."""

    __slots__ = ("reduce",)

    def __init__(self, reduce: str):
        self.reduce = reduce

    @property
    def mode(self) -> str:
        return f"segment-{self.reduce}"

    def __call__(self, operands: list, size: int) -> tuple:
        values, offsets = operands
        seg, counts = offsets_info(offsets, len(values))
        counts = getattr(offsets, "_phalanx_segments", (None, None, counts))[2]
        out = segment_sum(values, seg, size)
        if self.reduce == "mean":
            # 0/0 = nan for an empty row, as torch.mean of an empty stack.
            out = out / _count_column(counts, out)
        return (out,)


class PaddedStackKernel:
    """``F.pad(torch.stack(xs), (0, .., 0, length - k), value=value)`` for a batch: every member row
    written to (its row, its position) of a [B, length, *E] tensor of ``value``: one index_put."""

    __slots__ = ("length", "value")
    mode = "padded-stack"

    def __init__(self, length: int, value: float):
        self.length, self.value = length, value

    def __call__(self, operands: list, size: int) -> tuple:
        values, offsets = operands
        seg, _ = offsets_info(offsets, len(values))
        within = torch.arange(len(values), device=values.device) - offsets[:-1].index_select(0, seg)
        out = values.new_full((size, self.length, *values.shape[1:]), self.value)
        return (out.index_put((seg, within), values),)


def _count_column(counts: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``counts`` as a [B, 1, ...] column of ``out``'s dtype, to divide a segment sum by."""
    if counts.dtype == out.dtype and counts.dim() == out.dim():
        return counts
    return counts.to(out.dtype).reshape(len(counts), *([1] * (out.dim() - 1)))


class RaggedRows:
    """[B, k_i, *E] as ``values`` [N, *E] and per-value segment ids, passed to a cell's own code
    by the ``segment`` kernel. Supports what lattice and child-sum cells do with their stacked
    children; everything else raises RaggedUnsupported (NOTE: [Ragged kernels])."""

    __slots__ = ("values", "seg", "counts", "size")

    def __init__(self, values, seg, counts, size):
        self.values, self.seg, self.counts, self.size = values, seg, counts, size

    @property
    def ndim(self) -> int:
        return self.values.dim() + 1

    def dim(self) -> int:
        return self.ndim

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def device(self):
        return self.values.device

    @property
    def shape(self):
        raise RaggedUnsupported("the shape of a ragged operand")

    def _like(self, values) -> "RaggedRows":
        if values.shape[0] != self.values.shape[0]:
            raise RaggedUnsupported("an op that changes the number of ragged rows")
        return RaggedRows(values, self.seg, self.counts, self.size)

    def _dense(self, t):
        """A non-ragged operand of an elementwise op, as rows aligned with ``values``."""
        if type(t) is HoistedRows:
            t = t.rows()
        if type(t) is RaggedRows:
            if t.seg is not self.seg and not torch.equal(t.seg, self.seg):
                raise RaggedUnsupported("two ragged operands with different segments")
            return t.values
        if not isinstance(t, torch.Tensor):
            if type(t) in (int, float, bool):
                return t
            raise RaggedUnsupported(f"an operand of type {type(t).__name__}")
        per_row = self.values.dim() - 1
        if t.dim() <= per_row:
            return t                                         # broadcasts over every row as over [B, k]
        if t.dim() == self.ndim and t.shape[1] == 1 and t.shape[0] in (1, self.size):
            t = t.squeeze(1)
            return t if t.shape[0] == 1 else t.index_select(0, self.seg)   # [B, 1, *E] -> one row per value
        raise RaggedUnsupported(f"a dense operand of shape {tuple(t.shape)}")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.stack and args and type(args[0]) is RaggedList and set(kwargs) <= {"dim"}:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim == 0:
                return list.__getitem__(args[0], 0)     # a list argument's rows, stacked: [B, k_i, *E]
            raise RaggedUnsupported(f"stack of a ragged list over dim {dim!r}")
        x = next((a for a in args if type(a) is RaggedRows), None)
        if x is None:
            raise RaggedUnsupported(f"{getattr(func, '__name__', func)} on a ragged list")
        if func in _REDUCE:
            return _reduce(_REDUCE[func], args, kwargs)
        if func in _UNARY and len(args) == 1 and not kwargs:
            return x._like(func(x.values))
        if func in _BINARY and len(args) == 2 and not kwargs:
            return x._like(func(x._dense(args[0]), x._dense(args[1])))
        if func is F.linear and type(args[0]) is RaggedRows:
            rest = [*args[1:], *kwargs.values()]
            if all(type(r) is not RaggedRows for r in rest) and set(kwargs) <= {"weight", "bias"}:
                return x._like(func(args[0].values, *args[1:], **kwargs))
        raise RaggedUnsupported(f"{getattr(func, '__name__', func)} on a ragged operand")

    def __getattr__(self, name: str):
        if name.startswith("__") or not hasattr(torch.Tensor, name):
            raise AttributeError(name)
        func = getattr(torch.Tensor, name)
        return lambda *args, **kwargs: RaggedRows.__torch_function__(func, (), (self, *args), kwargs)

    # The reductions a lattice or child-sum cell applies once per batch, without __getattr__.
    def sum(self, *args, **kwargs):
        return _reduce("sum", (self, *args), kwargs)

    def mean(self, *args, **kwargs):
        return _reduce("mean", (self, *args), kwargs)


def _reduce(reduce: str, args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0]
    if type(x) is not RaggedRows or len(args) > 3 or set(kwargs) - {"dim", "keepdim"}:
        raise RaggedUnsupported(f"{reduce} with these arguments")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if type(dim) in (tuple, list) and len(dim) == 1:
        dim = dim[0]
    # The ragged dim of the batched [B, k, *E] view: 1, or written batch-polymorphically -(len(E) + 1).
    if type(dim) is not int or keepdim is not False or dim % x.ndim != 1:
        raise RaggedUnsupported(f"{reduce} over dim {dim!r}")
    out = segment_sum(x.values, x.seg, x.size)
    if reduce == "mean":
        out = out / _count_column(x.counts, out)
    return out


def _both(name: str) -> list:
    return [f for f in (getattr(torch, name, None), getattr(torch.Tensor, name, None)) if f is not None]


_REDUCE = {f: r for r in ("sum", "mean") for f in _both(r)}
_UNARY = {f for n in ("sigmoid", "tanh", "relu", "exp", "neg", "abs", "sin", "cos", "log", "sqrt", "square",
                      "__neg__") for f in _both(n)} | {F.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh}
_BINARY = {f for n in ("add", "sub", "mul", "div", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
                       "__rmul__", "__truediv__", "__rtruediv__") for f in _both(n)}

for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__neg__"):
    setattr(RaggedRows, _name, (lambda f: lambda self, *a: RaggedRows.__torch_function__(f, (), (self, *a), {}))(
        getattr(torch.Tensor, _name)))


class RaggedList(list):
    """A list argument of a cell in the ``segment`` kernel: ``torch.stack(it)`` is its RaggedRows;
    its length and items differ per row, so any other use raises RaggedUnsupported."""

    def __init__(self, rows: RaggedRows):
        super().__init__([rows])

    def _refuse(self, *args):
        raise RaggedUnsupported("the length or items of a ragged list")

    __len__ = __iter__ = __getitem__ = __bool__ = __contains__ = __reversed__ = _refuse


def _has_buffers(modules) -> bool:
    return any(True for m in modules for _ in m.buffers(recurse=False))


class RaggedKernel:
    """The batched kernel of a ragged cell op type (NOTE: [Ragged kernels])."""

    def __init__(self, sig: Signature):
        self.sig = sig
        self.segment: dict = {}          # training flags -> the segment kernel matched the oracle
        self.by_arity: dict = {}         # k -> the ordinary signature of arity k (its own kernels)
        self.hoist: dict = {}            # training flags -> hoisting agreed on the first batch (NOTE: [Hoisted inputs])
        self.reduced: dict = {}          # training flags -> ReducedForm, or False (NOTE: [Reduced ragged programs])
        self.reduced_errors: dict = {}   # training flags -> why there is no reduced form (``phalanx explain``)

    @property
    def mode(self) -> str:
        if self.reduced and all(self.reduced.values()):
            return "ragged-reduced"
        return "ragged-" + ("segment" if all(self.segment.values()) and self.segment else "grouped")

    def __call__(self, operands: list, size: int) -> tuple:
        sig = self.sig
        n_fixed = len(sig.in_kinds)
        fixed, ragged = operands[:n_fixed], operands[n_fixed:]
        values, offsets = ragged[0::2], ragged[1::2]
        seg, counts = offsets_info(offsets[0], len(values[0]))
        flags = tuple(m.training for m in sig.modules)
        divisor = getattr(offsets[0], "_phalanx_segments", (None, None, counts))[2]
        hoist = getattr(offsets[0], "_phalanx_hoist", None)
        options = sig.meta.get("cell_options")
        if options is not None and options.reduce_ragged and (not any(flags) or not _has_buffers(sig.modules)):
            out = self._reduced(fixed, values, offsets[0], seg, counts, divisor, size, flags, hoist)
            if out is not None:
                return out
        return self._probed(fixed, values, offsets[0], seg, counts, divisor, size, flags, hoist)

    def begin_flush(self) -> None:
        """A training flush starts (executor ``_begin_flush``): the reduced programs' hoisted values
        are then computed once per flush."""
        for form in self.reduced.values():
            if form:
                form.program.begin_flush()

    def _probed(self, fixed, values, offsets, seg, counts, divisor, size, flags, hoist) -> tuple:
        """The segment kernel where it matched the per-instance function on probe rows, else the
        grouped one."""
        use_segment = self.segment.get(flags)
        if use_segment is None:
            use_segment = self.segment[flags] = self._probe(fixed, values, offsets, counts, size, flags)
        if use_segment:
            # Hoisting runs the first batch twice (plain and hoisted): only for modules in eval mode,
            # where a second run has no effect (no batch-norm statistics, no dropout draws).
            if hoist is not None and not any(flags) and self.hoist.get(flags, True) and not torch.is_grad_enabled():
                out = self._hoisted(fixed, values, seg, divisor, size, flags, hoist)
                if out is not None:
                    return out
            return self._segmented(fixed, values, seg, divisor, size)
        return self._grouped(fixed, values, offsets, counts, size, flags)

    def _reduced(self, fixed, values, offsets, seg, counts, divisor, size, flags, hoist) -> "tuple | None":
        """NOTE: [Reduced ragged programs] (cells/reduced.py): one segment sum per ragged argument,
        then the cell's traced program of the sums; None where the op type has no reduced form."""
        form = self.reduced.get(flags)
        if torch.is_grad_enabled():
            hoist = None        # NOTE: [Hoisted inputs] is for inference; in training the program runs whole
        if form is None:
            # The first batch: trace, and keep the form only if it agrees with the probed kernel's
            # result, which this batch returns. The check runs the batch a second time, without
            # autograd: never for modules in training mode that hold buffers (batch-norm statistics
            # would move twice); dropout draws differ, so such a cell keeps the probed kernel.
            from ..cells.reduced import reduced_form

            plain = self._probed(fixed, values, offsets, seg, counts, divisor, size, flags, hoist)
            try:
                form = reduced_form(self.sig, flags, self.sig.meta["cell_options"], values[0].device)
                with torch.no_grad():
                    got = self._run_reduced(form, fixed, values, seg, divisor, size, hoist)
                if not _matches(got, plain):
                    raise BatchExecutionError("its result differs from the probed kernel's on the first batch")
            except Exception as e:  # noqa: BLE001  (no reduced form: the segment kernel serves, reason kept)
                self.reduced_errors[flags] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                form = False
            self.reduced[flags] = form
            return plain
        if form is False:
            return None
        return self._run_reduced(form, fixed, values, seg, divisor, size, hoist)

    def _run_reduced(self, form, fixed, values, seg, divisor, size, hoist) -> tuple:
        totals = [segment_sum(v, seg, size) for v in values]
        divisors = [_count_column(divisor, t) for t in totals]
        split = form.split
        if split is None or hoist is None:
            return form.program([*fixed, *totals, *divisors], size)
        # The prefix (a node's input projection, say) over every row of the op type in this flush,
        # once: one GEMM instead of one per batch (NOTE: [Hoisted inputs] does the same for the
        # cell's own code).
        inputs, lo, hi = hoist
        key = ("reduced", id(self))
        found = inputs.results.get(key)
        if found is None:
            full = [inputs.numbers[p] for p in form.numbers]
            rest = split.rest
            from .distinct import on_distinct_numbers       # (distinct -> cells -> ragged at import)

            outs = on_distinct_numbers(split.prefix, full)          # NOTE: [Distinct rows]
            if outs is None:
                outs = split.prefix(full, len(full[0]))
            found = inputs.results[key] = (outs, rest.bind() or rest)
        prefix_outs, rest = found
        others = [f for i, f in enumerate(fixed) if i not in form.numbers]
        return rest([*(o[lo:hi] for o in prefix_outs), *others, *totals, *divisors], size)

    def _hoisted(self, fixed, values, seg, divisor, size, flags, hoist) -> "tuple | None":
        """The segment kernel with the op type's number operands as HoistedRows (NOTE: [Hoisted
        inputs]); None when this batch should run the plain segment kernel."""
        inputs, lo, hi = hoist
        if inputs.constants is None:
            inputs.constants = constants_of(self.sig.modules, self.sig.captured)
        ducked = list(fixed)
        for p, full in inputs.numbers.items():
            ducked[p] = HoistedRows(full, lo, hi, inputs)
        if flags not in self.hoist:           # the first batch: keep hoisting only if it agrees
            plain = self._segmented(fixed, values, seg, divisor, size)
            try:
                got = self._segmented(ducked, values, seg, divisor, size)
            except Exception:  # noqa: BLE001  (anything the hoisted run cannot do: the plain kernel serves)
                got = None
            self.hoist[flags] = got is not None and _matches(got, plain)
            return plain
        try:
            return self._segmented(ducked, values, seg, divisor, size)
        except Exception:  # noqa: BLE001  (a failing row: the plain kernel's run names it)
            return None

    def _segmented(self, fixed, values, seg, counts, size) -> tuple:
        sig = self.sig
        lists = sig.meta["ragged"].lists or (False,) * len(values)
        ducks = [RaggedList(RaggedRows(v, seg, counts, size)) if as_list else RaggedRows(v, seg, counts, size)
                 for v, as_list in zip(values, lists, strict=True)]
        outs = sig.flatten(sig.fn(*fixed, *ducks))
        for out, aval in zip(outs, sig.out_avals, strict=True):
            if type(out) is not torch.Tensor and not isinstance(out, torch.Tensor):
                if type(out) is HoistedRows:          # a value computed from number operands only
                    outs = tuple(o.rows() if type(o) is HoistedRows else o for o in outs)
                    return self._checked(outs, size)
                raise RaggedUnsupported("a ragged result")
            if out.shape[0] != size or out.shape[1:] != aval.shape:
                raise RaggedUnsupported(f"result shape {tuple(out.shape)}")
        return outs

    def _checked(self, outs: tuple, size: int) -> tuple:
        for out, aval in zip(outs, self.sig.out_avals, strict=True):
            if not isinstance(out, torch.Tensor):
                raise RaggedUnsupported("a ragged result")
            if out.shape[0] != size or out.shape[1:] != aval.shape:
                raise RaggedUnsupported(f"result shape {tuple(out.shape)}")
        return outs

    def _arity_sig(self, k: int) -> Signature:
        sub = self.by_arity.get(k)
        if sub is None:
            sig = self.sig
            spec = sig.meta["ragged"]
            from ..ir.aval import aval

            stacked = tuple(aval((k, *e.shape), e.dtype) for e in spec.elements)
            sub = self.by_arity[k] = Signature(
                sid=sig.sid, name=f"{sig.name} (arity {k})", fn=sig.fn,
                in_kinds=(*sig.in_kinds, *(ArgKind.LAZY,) * len(stacked)), in_avals=(*sig.in_avals, *stacked),
                out_avals=sig.out_avals, unflatten=sig.unflatten, flatten=sig.flatten, captured=sig.captured,
                callee=sig.callee, modules=sig.modules, path=sig.path, single=sig.single,
                plain_tuple=sig.plain_tuple, meta={"batching": sig.meta.get("batching", "auto")})
            if "batched_lists" in sig.meta:
                sub.meta["shifted"] = sig.meta["batched_lists"]     # list arguments: rows of dim 1
        return sub

    def _grouped(self, fixed, values, offsets, counts, size, flags) -> tuple:
        counts_np = counts.cpu().numpy()
        arities = np.unique(counts_np)
        if len(arities) == 1:
            k = int(arities[0])
            stacked = [v.reshape(size, k, *v.shape[1:]) for v in values]
            return self._run_arity(k, [*fixed, *stacked], size, flags)
        parts, order = [], []
        starts = offsets[:-1]
        for k in arities.tolist():
            rows_np = np.flatnonzero(counts_np == k)
            rows = torch.from_numpy(rows_np).to(offsets.device)
            members = (starts.index_select(0, rows).unsqueeze(1) + torch.arange(k, device=rows.device)).reshape(-1)
            stacked = [v.index_select(0, members).reshape(len(rows_np), k, *v.shape[1:]) for v in values]
            parts.append(self._run_arity(k, [f.index_select(0, rows) for f in fixed] + stacked, len(rows_np), flags))
            order.append(rows_np)
        inverse = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable")).to(offsets.device)
        return tuple(torch.cat(col).index_select(0, inverse) for col in zip(*parts, strict=True))

    def _run_arity(self, k: int, operands: list, size: int, flags) -> tuple:
        return kernel_for(self._arity_sig(k), operands, size, flags)(operands, size)

    def _probe(self, fixed, values, offsets, counts, size, flags) -> bool:
        """Does the segment kernel equal the per-instance function on perturbed rows of several
        arities? Refuses a cell that hands operand data to Python (runtime/kernels.py)."""
        from ..frontend.capture import run_observed
        from ..frontend.recorder import run_unrecorded

        sig = self.sig
        gen = torch.Generator().manual_seed(_PROBE_SEED)
        counts_np = counts.cpu().numpy()
        # One row of each arity first (up to _PROBE_ROWS), then random rows.
        _, firsts = np.unique(counts_np, return_index=True)
        rows_np = firsts[:_PROBE_ROWS]
        extra = torch.randint(size, (max(_PROBE_ROWS - len(rows_np), 0),), generator=gen).numpy()
        rows_np = np.concatenate([rows_np, extra]).astype(np.int64)
        rows = torch.from_numpy(rows_np).to(offsets.device)

        def noisy(t):
            if t.dtype.is_floating_point:
                return t + torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.device, t.dtype)
            return t

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_fixed = [noisy(f.index_select(0, rows)) for f in fixed]
            p_counts = counts.index_select(0, rows)
            p_offsets = torch.zeros(len(rows_np) + 1, dtype=offsets.dtype, device=offsets.device)
            torch.cumsum(p_counts, 0, out=p_offsets[1:])
            starts = offsets[:-1].index_select(0, rows)
            members = torch.cat([torch.arange(int(s), int(s) + int(c)) for s, c in zip(starts, p_counts, strict=True)]
                                ).to(offsets.device) if int(p_counts.sum()) else torch.zeros(0, dtype=torch.long)
            p_values = [noisy(v.index_select(0, members)) for v in values]
            expected_rows = []
            for i in range(len(rows_np)):
                lo, hi = int(p_offsets[i]), int(p_offsets[i + 1])
                row = [f[i] for f in p_fixed] + [v[lo:hi] for v in p_values]
                out, decision = run_unrecorded(run_observed, [sig.fn, row], sig.name, sig.in_avals)
                if decision is not None:
                    raise data_dependent_error(sig, f"{decision} on data computed from its operands")
                expected_rows.append(sig.flatten(out))
            expected = [torch.stack(col) for col in zip(*expected_rows, strict=True)]
            seg, _ = offsets_info(p_offsets, len(p_values[0]))
            try:
                got = self._segmented(p_fixed, p_values, seg, p_counts, len(rows_np))
            except Exception:  # noqa: BLE001  (RaggedUnsupported or a failing op: the grouped kernel serves)
                return False
            return _matches(got, expected)


def add_ragged_operands(graph, steps: list, layout, device, counts) -> None:
    """``build_steps``' hook: append each ragged argument of a ragged batch as (GATHER of every
    member row in node order, NUMBERS offsets). A node's operand codes are its fixed operands, then
    the members of each ragged argument, all of one length (frontend/ragged.py). Vectorized over
    every ragged batch of the flush (one numpy pass, one split per kind), as build_steps is."""
    from .executor import BROADCAST, GATHER, NUMBERS, _to_device

    ragged = [step for step in steps if "ragged" in step.sig.meta]
    if not ragged:
        return
    specs = [step.sig.meta["ragged"] for step in ragged]
    sizes = np.array([step.size for step in ragged], dtype=np.int64)
    nodes = np.concatenate([step.nodes for step in ragged])
    n_ragged = np.array([len(spec.positions) for spec in specs], dtype=np.int64)
    start = graph.arg_start[nodes] + np.repeat([len(step.sig.in_kinds) for step in ragged], sizes)
    per_node = (graph.arg_start[nodes + 1] - start) // np.repeat(n_ragged, sizes)
    # Members of the whole flush in node order; a step's members are one contiguous range.
    member_lo = np.zeros(len(nodes) + 1, dtype=np.int64)
    np.cumsum(per_node, out=member_lo[1:])
    node_lo = np.zeros(len(ragged) + 1, dtype=np.int64)
    np.cumsum(sizes, out=node_lo[1:])
    totals = member_lo[node_lo[1:]] - member_lo[node_lo[:-1]]
    owner = np.repeat(np.arange(len(nodes)), per_node)
    within = np.arange(len(owner)) - member_lo[owner]
    step_of_node = np.repeat(np.arange(len(ragged)), sizes)
    # Per step: offsets [size + 1] (local), and per member its row within the step (segment id).
    offsets = member_lo[np.arange(len(nodes) + len(ragged)) - np.repeat(np.arange(len(ragged)), sizes + 1)]
    offsets = offsets - np.repeat(member_lo[node_lo[:-1]], sizes + 1)
    seg = owner - node_lo[step_of_node[owner]]
    offsets_parts = _to_device(torch.from_numpy(offsets), device).split((sizes + 1).tolist())
    seg_parts = _to_device(torch.from_numpy(seg), device).split(totals.tolist())
    count_t = torch.from_numpy(per_node)
    count_parts = _to_device(count_t, device).split(sizes.tolist())
    divisors: dict = {}
    layout_rows = layout.value_row
    rows_parts, arena_of = [], []
    for r in range(int(n_ragged.max())):
        # Member j of ragged argument r; entries of nodes with fewer ragged arguments are unused.
        index = np.minimum(start[owner] + r * per_node[owner] + within, len(graph.arg_code) - 1)
        vids = graph.arg_code[index] if len(index) else index
        rows_parts.append(_to_device(torch.from_numpy(layout_rows[np.maximum(vids, 0)]), device).split(totals.tolist()))
        first = member_lo[node_lo[:-1]]
        arena_of.append(graph.value_aval_id[np.maximum(vids[np.minimum(first, max(len(vids) - 1, 0))], 0)].tolist()
                        if len(vids) else [0] * len(ragged))
    totals_l = totals.tolist()
    hoists = _flush_inputs(ragged, NUMBERS)
    for i, (step, spec) in enumerate(zip(ragged, specs, strict=True)):
        total = totals_l[i]
        offsets_t = offsets_parts[i]
        # NOTE: [Host segments] the kernel's segment ids and counts, made here with the rest of the
        # plan instead of by several small device ops (and a device-to-host read) per batch.
        # ``_phalanx_segments``: (values, segment ids, counts as a divisor column, counts).
        element = spec.elements[0]
        divisor = count_parts[i]
        if element.dtype.is_floating_point and all(e.dtype == element.dtype for e in spec.elements):
            by_dtype = divisors.get(element.dtype)
            if by_dtype is None:
                by_dtype = divisors[element.dtype] = _to_device(count_t.to(element.dtype), device).split(
                    sizes.tolist())
            divisor = by_dtype[i].view(step.size, *([1] * len(element.shape)))
        offsets_t._phalanx_segments = (total, seg_parts[i], divisor, count_parts[i])
        offsets_t._phalanx_hoist = hoists[i]
        for r, element in enumerate(spec.elements):
            if total:
                step.operands.append((GATHER, arena_of[r][i], rows_parts[r][i]))
                counts.operand_lists += 1
                counts.gathers += 1
                counts.gather_bytes += total * element.nbytes
            else:
                step.operands.append((BROADCAST, 0, element.zeros(device)))    # [0, *E]: no member at all
            step.operands.append((NUMBERS, torch.int64, offsets_t))


def _flush_inputs(ragged: list, numbers_kind: int) -> list:
    """Per ragged batch: (its op type's number operands over all the op type's batches of the
    flush, its rows [lo, hi) within them), or None for an op type without number operands
    (NOTE: [Hoisted inputs])."""
    by_sig: dict = {}
    for i, step in enumerate(ragged):
        by_sig.setdefault(step.sig.sid, []).append(i)
    out: list = [None] * len(ragged)
    for group in by_sig.values():
        sig = ragged[group[0]].sig
        positions = [p for p, kind in enumerate(sig.in_kinds) if kind is ArgKind.NUMBER]
        if not positions or any(ragged[i].operands[p][0] != numbers_kind for i in group for p in positions):
            continue
        inputs = FlushInputs({p: torch.cat([ragged[i].operands[p][2] for i in group]) for p in positions})
        lo = 0
        for i in group:
            out[i] = (inputs, lo, lo + ragged[i].size)
            lo += ragged[i].size
    return out


def ragged_subset(sig: Signature, operands: list, rows: torch.Tensor) -> tuple[list, list]:
    """A ragged batch's operands restricted to node ``rows`` (the executor's re-run of the rows the
    loss uses, NOTE: [Rows the loss does not use]), and per operand the rows of its source it now
    reads: ``rows`` for a fixed operand, the selected member rows for a ragged one's values."""
    n_fixed = len(sig.in_kinds)
    sub, op_rows = [], []
    for op in operands[:n_fixed]:
        sub.append(op.detach().index_select(0, rows).requires_grad_(op.requires_grad))
        op_rows.append(rows)
    ragged = operands[n_fixed:]
    for values, offsets in zip(ragged[0::2], ragged[1::2], strict=True):
        counts = (offsets[1:] - offsets[:-1]).index_select(0, rows)
        new_offsets = torch.zeros(len(rows) + 1, dtype=offsets.dtype, device=offsets.device)
        torch.cumsum(counts, 0, out=new_offsets[1:])
        within = torch.arange(int(new_offsets[-1]), device=offsets.device) - torch.repeat_interleave(
            new_offsets[:-1], counts)
        members = torch.repeat_interleave(offsets[:-1].index_select(0, rows), counts) + within
        sub.append(values.detach().index_select(0, members).requires_grad_(values.requires_grad))
        sub.append(new_offsets)
        op_rows.extend((members, None))
    return sub, op_rows


def ragged_row(sig: Signature, operands: list, row: int) -> list:
    """One row's per-instance operands of a ragged batch (the executor names a failing instance
    by re-running rows): fixed operands' row, then each ragged argument's members stacked."""
    n_fixed = len(sig.in_kinds)
    ragged = operands[n_fixed:]
    out = [op[row] for op in operands[:n_fixed]]
    for values, offsets in zip(ragged[0::2], ragged[1::2], strict=True):
        out.append(values[int(offsets[row]):int(offsets[row + 1])])
    return out
