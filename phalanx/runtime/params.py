"""The tensors a training flush differentiates with respect to, and the aliases its kernels read.

NOTE: [Parameters in the batched backward] a flush is ONE autograd node (``FlushFunction``) whose
inputs are the real tensors that require grad: the parameters (and other captured tensors) of the
op types it runs, plus per-instance tensors. Its kernels must not read those real tensors: the
batched backward differentiates every batch separately, and differentiating with respect to a
real parameter would run its tensor hooks once per batch (and once more on the sum). So for the
duration of the flush's forward each captured parameter is replaced, in the module that owns it,
by an *alias* (``p.detach().requires_grad_()``: same storage, no history, no hooks), and shared
parameters baked into op-level signatures are substituted the same way. Per-batch gradients are
taken with respect to the aliases, summed, and returned once by ``FlushFunction.backward`` for
the real parameter, so hooks, ``retain_grad``, DDP's reducer and ``AccumulateGrad`` see exactly one
gradient, as in eager code. Which tensors require grad is read here, at every flush (freeze and
unfreeze between calls just work). A captured tensor no module owns (a function cell's closure
over a plain tensor, or a tensor derived from parameters outside the run) cannot be swapped; its
gradient is taken with respect to the tensor itself (its own hooks, if any, run per batch).

NOTE: [Deferred weight gradients] a weight read by every batch of a flush gets one gradient per
batch, ``G_b^T X_b``: a GEMM with a thin inner dimension whose parameter-sized output is then added
into the sum, batch after batch. For a plain ``nn.Linear`` whose weight is aliased, the flush's
forward instead runs ``DeferredGemms.linear``: ``F.linear`` on the detached weight and bias that
records ``(X_b, out_b)``; the batched backward captures ``G_b`` at ``out_b`` and at its end
``weight_gradients`` computes the weight's and bias's gradients for all batches at once,
``cat(G)^T cat(X)`` in ONE GEMM (the mechanism of NOTE: [Deferred GEMM gradients], cells/defer.py).
Only inside the flush's own training forward (the aliases are swapped in), never under a functorch
transform (vmap kernels) or without grad (probes); any other use of the module is the plain
``F.linear``.

The swap mutates the owning modules while a flush's forward runs: another thread running the same
model eagerly at that moment reads the aliases (same values, but its graph does not reach the real
parameters). Do not train one model on two threads at once.
"""
from __future__ import annotations

import torch

import torch.nn.functional as F

from ..cells.defer import DeferredGemms, deferring
from ..cells.sparse import densify
from ..frontend.recorder import SUBSTITUTION

# NOTE: [Deferred weight gradients] can be switched off (measurements, debugging).
DEFER_WEIGHT_GRADIENTS = True


def _deferred_forward(module: torch.nn.Linear, gemms: DeferredGemms):
    def forward(x):
        # Only on plain tensors: a ragged kernel's member rows (runtime/ragged.py) and other
        # tensor-likes handle F.linear themselves.
        if type(x) is torch.Tensor and torch.is_grad_enabled() and torch._C._functorch.peek_interpreter_stack() is None:
            return gemms.linear(x, module.weight, module.bias)
        return F.linear(x, module.weight, module.bias)
    return forward


class FlushParams:
    """``inputs``: the real tensors requiring grad (FlushFunction's inputs); ``wrt[sid]``: per op type,
    (input position, tensor to differentiate: alias or the real tensor) pairs."""

    def __init__(self, graph, modules: list, instance_tensors: list[torch.Tensor]):
        self.inputs: list[torch.Tensor] = []
        self.position: dict[int, int] = {}
        owned = {id(p) for m in modules for p in m._parameters.values() if p is not None}
        # id(real parameter) -> its alias; only parameters a module owns can be swapped.
        self.aliases: dict[int, torch.Tensor] = {}
        self.wrt: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for sid in graph.used_sids.tolist():
            pairs = []
            for t in graph.sigs[sid].captured:
                if not t.requires_grad:
                    continue
                k = self._input(t)
                if id(t) in owned and id(t) not in self.aliases:
                    self.aliases[id(t)] = t.detach().requires_grad_()
                pairs.append((k, self.aliases.get(id(t), t)))
            if pairs:
                self.wrt[sid] = pairs
        for t in instance_tensors:
            self._input(t)
        # (module, name, real parameter) for every owner slot of an aliased parameter (tied weights: several).
        self.slots = [(m, name, p) for m in modules for name, p in m._parameters.items()
                      if p is not None and id(p) in self.aliases]
        self._saved_subst = None
        # NOTE: [Deferred GEMM gradients] (cells/defer.py): the traced programs' weight GEMMs and
        # (NOTE: [Deferred weight gradients]) every plain nn.Linear whose weight is aliased.
        self.gemms = DeferredGemms()
        self.deferred = [m for m in modules
                         if DEFER_WEIGHT_GRADIENTS and type(m) is torch.nn.Linear and id(m.weight) in self.aliases
                         and "forward" not in m.__dict__]
        # id(tensor differentiated) -> (input position, tensor): where deferred gradients go
        self.targets = {id(t): (k, t) for pairs in self.wrt.values() for k, t in pairs}
        self._deferring = deferring(self.gemms)
        # Parameters the user asked sparse gradients for (nn.Embedding(sparse=True)) keep them.
        self.sparse_ok = {id(m.weight) for m in modules if isinstance(m, torch.nn.Embedding) and m.sparse}

    def finish(self, grads) -> list:
        """The gradients a flush returns for ``inputs``: row-sparse sums (ahead-of-time cells'
        embedding lookups, cells/sparse.py) become ONE dense gradient per flush, unless the user's
        embedding is sparse itself."""
        out = []
        for t, g in zip(self.inputs, grads, strict=True):
            if g is not None and g.is_sparse:
                g = g.coalesce() if id(t) in self.sparse_ok else densify(g)
            out.append(g)
        return out

    def _input(self, t: torch.Tensor) -> int:
        k = self.position.get(id(t))
        if k is None:
            k = self.position[id(t)] = len(self.inputs)
            self.inputs.append(t)
        return k

    def weight_gradients(self):
        """(input position, gradient) of every deferred weight and bias, from the ``(X_b, G_b)``
        pairs the backward pass collected (NOTE: [Deferred weight gradients]); empties them."""
        return self.gemms.gradients(self.targets)

    def clear_pending(self) -> None:
        self.gemms.clear()

    def __enter__(self) -> "FlushParams":
        for m, name, p in self.slots:
            m._parameters[name] = self.aliases[id(p)]
        for m in self.deferred:
            m.__dict__["forward"] = _deferred_forward(m, self.gemms)
        self._saved_subst, SUBSTITUTION.aliases = SUBSTITUTION.aliases, self.aliases
        self._deferring.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m, name, p in self.slots:
            m._parameters[name] = p
        for m in self.deferred:
            m.__dict__.pop("forward", None)
        SUBSTITUTION.aliases = self._saved_subst
        self._deferring.__exit__()
