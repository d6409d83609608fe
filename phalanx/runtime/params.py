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

The swap mutates the owning modules while a flush's forward runs: another thread running the same
model eagerly at that moment reads the aliases (same values, but its graph does not reach the real
parameters). Do not train one model on two threads at once.
"""
from __future__ import annotations

import torch

from ..frontend.recorder import SUBSTITUTION


class FlushParams:
    """``inputs``: the real tensors requiring grad (FlushFunction's inputs); ``wrt[sid]``: per op type,
    (input position, tensor to differentiate: alias or the real tensor) pairs."""

    def __init__(self, graph, modules: list, instance_tensors: list[torch.Tensor]):
        self.inputs: list[torch.Tensor] = []
        position: dict[int, int] = {}
        self.aliases: dict[int, torch.Tensor] = {}
        self.wrt: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for sid in graph.used_sids.tolist():
            pairs = []
            for t in graph.sigs[sid].captured:
                if not t.requires_grad:
                    continue
                k = position.get(id(t))
                if k is None:
                    k = position[id(t)] = len(self.inputs)
                    self.inputs.append(t)
                    if t.is_leaf:
                        self.aliases[id(t)] = t.detach().requires_grad_()
                pairs.append((k, self.aliases.get(id(t), t)))
            if pairs:
                self.wrt[sid] = pairs
        for t in instance_tensors:
            if id(t) not in position:
                position[id(t)] = len(self.inputs)
                self.inputs.append(t)
        self.position = position
        # (module, name, real parameter) for every owner slot of an aliased parameter.
        self.slots = [(m, name, p) for m in modules for name, p in m._parameters.items()
                      if p is not None and id(p) in self.aliases]
        # A leaf no module owns (a plain tensor in a closure) keeps no alias: it is differentiated itself.
        owned = {id(p) for _, _, p in self.slots}
        for sid, pairs in self.wrt.items():
            self.wrt[sid] = [(k, t if id(self.inputs[k]) in owned or not self.inputs[k].is_leaf else self.inputs[k])
                             for k, t in pairs]
        self.aliases = {i: a for i, a in self.aliases.items() if i in owned}
        self._saved_subst = None

    def __enter__(self) -> "FlushParams":
        for m, name, p in self.slots:
            m._parameters[name] = self.aliases[id(p)]
        self._saved_subst, SUBSTITUTION.aliases = SUBSTITUTION.aliases, self.aliases
        return self

    def __exit__(self, *exc) -> None:
        for m, name, p in self.slots:
            m._parameters[name] = p
        SUBSTITUTION.aliases = self._saved_subst
