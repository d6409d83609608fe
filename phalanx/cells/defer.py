"""Deferred weight gradients for traced programs and plain ``nn.Linear`` modules in a training flush.

NOTE: [Deferred GEMM gradients] in training, a GEMM ``addmm(b, X, W)`` whose ``W`` is a parameter
or a hoisted value (a transposed or concatenated weight) gets, in every batch's backward, the
gradient ``X_b^T G_b``: a GEMM with a thin inner dimension (the batch's rows) and a
parameter-sized output, added into the sum batch after batch. In the training program such a GEMM
calls ``deferred_addmm`` instead (and a plain ``nn.Linear`` whose weight is aliased calls
``DeferredGemms.linear``, NOTE: [Deferred weight gradients] in runtime/params.py): inside a training
flush (``deferring``) it computes the same GEMM on the DETACHED weight (and on a detached bias when
the bias is shared too: ``shared_bias``) and records ``(X_b, out_b)``. The flush's
batched backward asks the engine, in the batch's one ``run_backward``, for the gradient reaching
``out_b`` as well (``G_b``; the engine captures it there, so autograd computes only ``X``'s
gradient); at the end of the backward pass ``DeferredGemms.gradients`` computes ``cat(X)^T cat(G)``
(and the bias's ``sum(cat(G))``) for each such weight in ONE GEMM and sends it back through the
hoisting (``W`` is a view or concatenation of parameter aliases) to the parameters. No Python
autograd Function runs per batch, forward or backward. A GEMM whose output would not require grad
without its weight (nothing to capture ``G_b`` from), outside a training flush, without grad or
under a functorch transform is the ordinary one, its weight gradient taken per batch by autograd.

NOTE: [Stacked rows buffer] the rows of every batch's ``X_b`` (and ``G_b``) are concatenated once
per flush and weight; a fresh ``[all rows x width]`` tensor is fresh pages, faulted in by the copy
every flush. They are concatenated instead into a buffer kept per thread (grown with slack) that
lives only inside ``gradients``: the GEMM reads it and returns a fresh tensor, and nothing else
ever sees it, so no later flush can overwrite rows an earlier backward still needs.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import fx

_ATEN = torch.ops.aten


class _Active(threading.local):
    gemms: "DeferredGemms | None" = None


_ACTIVE = _Active()


class _RowsBuffer(threading.local):
    """NOTE: [Stacked rows buffer]: per thread, per dtype and device, two flat buffers (X's rows, G's rows)."""

    SLACK = 1.25

    def __init__(self):
        self.buffers: dict = {}

    def take(self, key, numel: int, dtype, device) -> torch.Tensor:
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self.buffers[key] = torch.empty(int(numel * self.SLACK) + 1, dtype=dtype, device=device)
        return buf


_ROWS = _RowsBuffer()


def stacked_rows(tensors: list, slot: "int | None" = None) -> torch.Tensor:
    """The tensors' rows (every dimension but the last flattened), one after another: one ``cat``,
    or the only tensor itself (no copy for a weight one batch reads, a TreeLSTM's leaves). With
    ``slot`` (0 or 1), the cat goes into this thread's buffer for that slot (NOTE: [Stacked rows
    buffer]): the result is valid only until the next call with that slot on this thread."""
    flat = [t.reshape(-1, t.shape[-1]) for t in tensors]
    if len(flat) == 1:
        return flat[0]
    first = flat[0]
    if slot is None or torch.is_grad_enabled() and any(t.requires_grad for t in flat):
        return torch.cat(flat)      # out= does not record autograd
    rows = sum(len(t) for t in flat)
    width = first.shape[1]
    buf = _ROWS.take((slot, first.dtype, first.device), rows * width, first.dtype, first.device)
    return torch.cat(flat, out=buf[:rows * width].view(rows, width))


class _Deferred:
    """One deferred weight of a flush: the weight (and bias) tensors the gradients go back through,
    the GEMM's orientation, and the batches' ``(X_b, G_b)`` rows of the current backward pass."""

    __slots__ = ("weight", "bias", "linear", "xs", "gs")

    def __init__(self, weight: torch.Tensor, bias: "torch.Tensor | None", linear: bool):
        self.weight, self.bias, self.linear = weight, bias, linear   # linear: W is [out, in] (F.linear)
        self.xs: list = []
        self.gs: list = []

    def add(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        self.xs.append(x)
        self.gs.append(grad)


def _weight_gradient(entry: _Deferred, xs: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """The one GEMM, laid out like the weight: a hoisted ``W = p.t()`` (a transposed view) gets
    ``(G^T X)^T``, whose transpose back to ``p`` is contiguous; otherwise the parameter's gradient
    would arrive transposed and ``AccumulateGrad`` would copy it into the parameter's layout."""
    if entry.linear:
        return gs.t().mm(xs)
    weight = entry.weight
    if weight.dim() == 2 and not weight.is_contiguous() and weight.t().is_contiguous():
        return gs.t().mm(xs).t()
    return xs.t().mm(gs)


def _broadcast_bias(bias) -> bool:
    """A bias that every row shares (its gradient is the sum of all rows' output gradients)."""
    return isinstance(bias, torch.Tensor) and bias.requires_grad and (
        bias.dim() < 2 or (bias.dim() == 2 and bias.shape[0] == 1))


class DeferredGemms:
    """The deferred GEMMs of one training flush (NOTE: [Deferred GEMM gradients]): ``record`` in the
    forward, ``take`` per batch (the executor's), ``(entry, X_b, G_b)`` via ``entry.add`` in the
    backward, one GEMM per weight in ``gradients``."""

    def __init__(self):
        self.entries: dict[tuple, _Deferred] = {}   # (weight's memory, bias's, linear) -> entry
        self.recorded: list = []                    # (entry, X_b, out_b) of the batch running now

    def _record(self, weight, bias, linear: bool, x, out) -> None:
        # Keyed by memory, not identity: a program called outside an announced flush recomputes its
        # hoisted values (new tensor objects over the same memory, NOTE: [Hoist cache key]).
        key = (weight.data_ptr(), weight.shape, weight.stride(), 0 if bias is None else bias.data_ptr(), linear)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Deferred(weight, bias, linear)
        self.recorded.append((entry, x, out))

    def addmm(self, bias, x, weight, shared_bias: bool):
        defer_bias = shared_bias and _broadcast_bias(bias)
        if not (x.requires_grad or (not defer_bias and isinstance(bias, torch.Tensor) and bias.requires_grad)):
            return torch.addmm(bias, x, weight)         # its output would not require grad: no G_b to capture
        out = torch.addmm(bias.detach() if defer_bias else bias, x, weight.detach())
        self._record(weight, bias if defer_bias else None, False, x, out)
        return out

    def linear(self, x, weight, bias):
        defer_bias = bias is not None and _broadcast_bias(bias)
        if not (x.requires_grad or (bias is not None and not defer_bias and bias.requires_grad)):
            return F.linear(x, weight, bias)
        out = F.linear(x, weight.detach(), bias.detach() if defer_bias else bias)
        self._record(weight, bias if defer_bias else None, True, x, out)
        return out

    def take(self) -> list:
        """The records of the batch that just ran (the executor keeps them with the batch)."""
        taken = self.recorded
        if taken:
            self.recorded = []
        return taken

    def clear(self) -> None:
        """Drop the pairs of a backward pass (a second pass starts over)."""
        for entry in self.entries.values():
            entry.xs.clear()
            entry.gs.clear()

    def counts(self) -> dict:
        """Per entry key, how many batches' pairs are pending (tests, debugging)."""
        return {key: len(entry.gs) for key, entry in self.entries.items() if entry.gs}

    def gradients(self, targets: dict):
        """(input position, gradient) pairs from every deferred weight's one GEMM (and bias's one
        sum), for ``targets`` (id(tensor) -> (position, tensor): what the flush differentiates);
        a weight that is a target itself (an alias) directly, others back through their own graph
        (hoisting); empties."""
        sources, grads = [], []
        for entry in self.entries.values():
            if not entry.gs:
                continue
            xs, gs = stacked_rows(entry.xs, 0), stacked_rows(entry.gs, 1)
            sources.append(entry.weight)
            grads.append(_weight_gradient(entry, xs, gs))
            if entry.bias is not None:
                sources.append(entry.bias)
                # sum(0) first: a fresh tensor, never the stacked-rows buffer itself
                grads.append(gs.sum(0, keepdim=True).sum_to_size(entry.bias.shape))
            entry.xs.clear()
            entry.gs.clear()
        through = []
        for t, g in zip(sources, grads, strict=True):
            found = targets.get(id(t))
            if found is not None:
                yield found[0], g
            else:
                through.append((t, g))
        if not through or not targets:
            return
        wanted = list(targets.values())
        found = torch.autograd.grad([t for t, _ in through], [t for _, t in wanted], [g for _, g in through],
                                    allow_unused=True, retain_graph=True)
        for (k, _), g in zip(wanted, found, strict=True):
            if g is not None:
                yield k, g


class deferring:
    """Within: traced training programs and swapped Linears defer their weight gradients into ``gemms``."""

    def __init__(self, gemms: DeferredGemms):
        self.gemms = gemms

    def __enter__(self):
        self.saved, _ACTIVE.gemms = _ACTIVE.gemms, self.gemms
        return self.gemms

    def __exit__(self, *exc):
        _ACTIVE.gemms = self.saved
        return False


def _active() -> "DeferredGemms | None":
    gemms = _ACTIVE.gemms
    if gemms is None or not torch.is_grad_enabled() or torch._C._functorch.peek_interpreter_stack() is not None:
        return None
    return gemms


def deferred_addmm(bias, x, weight, shared_bias: bool = False):
    """``addmm(bias, x, weight)``, its weight gradient deferred inside a training flush; with
    ``shared_bias`` (the bias is a parameter or hoisted value too) the bias's gradient as well."""
    gemms = _active()
    if gemms is None or not weight.requires_grad or type(x) is not torch.Tensor:
        return torch.addmm(bias, x, weight)
    return gemms.addmm(bias, x, weight, shared_bias)


def defer_gemms(graph: fx.Graph, shared: set) -> int:
    """Point every plain ``addmm(b, X, W)`` of ``graph`` whose ``W`` is in ``shared`` (parameter or
    hoisted placeholders) and whose ``X`` is not to ``deferred_addmm`` (with ``shared_bias`` when ``b``
    is in ``shared`` too); how many."""
    done = 0
    for node in graph.nodes:
        if (node.op == "call_function" and node.target is _ATEN.addmm.default and not node.kwargs
                and len(node.args) == 3 and node.args[2] in shared and node.args[1] not in shared):
            node.target = deferred_addmm
            if node.args[0] in shared:
                node.args = (*node.args, True)
            done += 1
    graph.lint()
    return done


__all__ = ["DeferredGemms", "deferring", "deferred_addmm", "defer_gemms", "stacked_rows"]
