"""Deferred weight gradients for traced programs (the traced form of NOTE: [Deferred weight
gradients] in runtime/params.py).

NOTE: [Deferred GEMM gradients] in training, a traced cell's GEMM ``addmm(b, X, W)`` whose ``W`` is a
parameter or a hoisted value (a transposed or concatenated weight) gets, in every batch's backward,
the gradient ``X_b^T G_b``: a GEMM with a thin inner dimension (the batch's rows) and a
parameter-sized output, added into the sum batch after batch. In the training program such a GEMM
calls ``deferred_addmm`` instead: inside a training flush (``deferring``), its backward returns the
gradients of ``X`` and ``b`` only and keeps ``(X_b, G_b)``; at the end of the flush's backward,
``DeferredGemms.gradients`` computes ``cat(X)^T cat(G)`` for each such ``W`` in ONE GEMM and sends it
back through the hoisting (``W`` is a view or concatenation of parameter aliases) to the
parameters. Outside a training flush (the per-instance checks, a plain call of the program) it is
the ordinary ``addmm``.
"""
from __future__ import annotations

import threading

import torch
from torch import fx

_ATEN = torch.ops.aten


class _Active(threading.local):
    gemms: "DeferredGemms | None" = None


_ACTIVE = _Active()


def stacked_rows(tensors: list) -> torch.Tensor:
    """The tensors' rows (every dimension but the last flattened), one after another: one ``cat``,
    or the only tensor itself (no copy for a weight one batch reads, a TreeLSTM's leaves)."""
    flat = [t.reshape(-1, t.shape[-1]) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat)


class DeferredGemms:
    """The ``(X_b, G_b)`` pairs of one training flush, per deferred weight tensor."""

    def __init__(self):
        self.pending: dict[tuple, tuple[torch.Tensor, list]] = {}

    def add(self, weight: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> None:
        # Keyed by memory, not identity: each batch's backward unpacks its saved weight as a new
        # tensor object (same storage, same autograd history).
        key = (weight.untyped_storage().data_ptr(), weight.storage_offset(), tuple(weight.shape), weight.stride())
        entry = self.pending.get(key)
        if entry is None:
            entry = self.pending[key] = (weight, [])
        entry[1].append((x, grad))

    def clear(self) -> None:
        self.pending.clear()

    def gradients(self, wrt: dict):
        """(input position, gradient) pairs for the tensors the flush differentiates (``wrt``: per op
        type, (position, tensor) pairs) from every deferred weight's one GEMM, sent back through the
        weight's own graph; empties."""
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        targets, seen = [], set()
        for pairs in wrt.values():
            for k, t in pairs:
                if id(t) not in seen:
                    seen.add(id(t))
                    targets.append((k, t))
        if not targets:
            return
        weights, grads = [], []
        for weight, pairs in pending.values():
            xs, gs = stacked_rows([x for x, _ in pairs]), stacked_rows([g for _, g in pairs])
            weights.append(weight)
            grads.append(xs.t().mm(gs))
        found = torch.autograd.grad(weights, [t for _, t in targets], grads, allow_unused=True, retain_graph=True)
        for (k, _), g in zip(targets, found, strict=True):
            if g is not None:
                yield k, g


class deferring:
    """Within: traced training programs defer their weight gradients into ``gemms``."""

    def __init__(self, gemms: DeferredGemms):
        self.gemms = gemms

    def __enter__(self):
        self.saved, _ACTIVE.gemms = _ACTIVE.gemms, self.gemms
        return self.gemms

    def __exit__(self, *exc):
        _ACTIVE.gemms = self.saved
        return False


class _DeferredAddmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bias, x, weight, gemms):
        ctx.save_for_backward(x, weight)
        ctx.bias_shape = bias.shape
        ctx.gemms = gemms
        return torch.addmm(bias, x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        if ctx.needs_input_grad[2]:
            ctx.gemms.add(weight, x, grad)
        grad_x = grad.mm(weight.t()) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[0] else None
        return grad_bias, grad_x, None, None


def deferred_addmm(bias, x, weight):
    """``addmm(bias, x, weight)``, its weight gradient deferred inside a training flush."""
    gemms = _ACTIVE.gemms
    if gemms is None or not torch.is_grad_enabled() or not weight.requires_grad \
            or torch._C._functorch.peek_interpreter_stack() is not None:
        return torch.addmm(bias, x, weight)
    return _DeferredAddmm.apply(bias, x, weight, gemms)


def defer_gemms(graph: fx.Graph, shared: set) -> int:
    """Point every plain ``addmm(b, X, W)`` of ``graph`` whose ``W`` is in ``shared`` (parameter or
    hoisted placeholders) and whose ``X`` is not to ``deferred_addmm``; how many."""
    done = 0
    for node in graph.nodes:
        if (node.op == "call_function" and node.target is _ATEN.addmm.default and not node.kwargs
                and len(node.args) == 3 and node.args[2] in shared and node.args[1] not in shared):
            node.target = deferred_addmm
            done += 1
    graph.lint()
    return done


__all__ = ["DeferredGemms", "deferring", "deferred_addmm", "defer_gemms", "stacked_rows"]
