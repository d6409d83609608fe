"""The test oracle: a phalanx run must match the per-instance eager loop, outputs and gradients."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

import phalanx


def weighted_total(results) -> torch.Tensor:
    """A scalar that depends on every output element with a distinct weight, so that gradients
    check every element (a plain sum would let errors that cancel slip through)."""
    leaves = [leaf for leaf in tree_leaves(results) if isinstance(leaf, torch.Tensor)]
    total = torch.zeros((), device=leaves[0].device if leaves else None)
    for leaf in tree_leaves(results):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            weights = torch.cos(torch.arange(leaf.numel(), dtype=leaf.dtype, device=leaf.device) * 0.7 + 0.3)
            weights = weights.reshape(leaf.shape)
            total = total + (leaf * weights).sum()
    return total


def _grads(params) -> list:
    return [None if p.grad is None else p.grad.clone() for p in params]


def assert_close_structures(got, expected, rtol=1e-4, atol=1e-5):
    got_leaves, expected_leaves = tree_leaves(got), tree_leaves(expected)
    assert len(got_leaves) == len(expected_leaves)
    assert torch.utils._pytree.tree_structure(got) == torch.utils._pytree.tree_structure(expected)
    for g, e in zip(got_leaves, expected_leaves, strict=True):
        if e is None:
            assert g is None
            continue
        assert isinstance(g, torch.Tensor), type(g)
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol)


_REUSED: dict = {}


def reused_batcher(fn, **options) -> "phalanx.Batcher":
    """ONE Batcher per (fn, options) for the whole test session, so property tests exercise a
    Batcher that lives through many calls with different structures and grad modes, as in a
    training script (a fresh Batcher per example would hide stale caches)."""
    key = (fn, tuple(sorted((k, v if isinstance(v, (str, int, bool, type(None))) else id(v))
                            for k, v in options.items())))
    if key not in _REUSED:
        _REUSED[key] = phalanx.Batcher(fn, verify=True, **options)
    return _REUSED[key]


def assert_matches_eager(fn, instances, *, params=(), policy="depth", train=False, rtol=1e-4, atol=1e-5,
                         batcher=None, grad_mode="no_grad"):
    """Run ``fn`` per instance eagerly and under phalanx; compare outputs and (``train``) the
    gradients of ``params``. Without ``train``, both run under ``grad_mode`` (``"no_grad"`` or
    ``"inference_mode"``). Returns the Batcher used."""
    params = list(params)
    batcher = batcher or phalanx.Batcher(fn, policy=policy, verify=True)
    if not train:
        with torch.inference_mode() if grad_mode == "inference_mode" else torch.no_grad():
            expected = [fn(x) for x in instances]
            got = batcher(instances)
        assert_close_structures(got, expected, rtol, atol)
        return batcher
    for p in params:
        p.grad = None
    expected = [fn(x) for x in instances]
    expected_total = weighted_total(expected)
    if expected_total.requires_grad:
        expected_total.backward()
    expected_grads = _grads(params)
    for p in params:
        p.grad = None
    got = batcher(instances)
    assert_close_structures([tuple(map(torch.Tensor.detach, tree_leaves(g))) for g in got],
                            [tuple(map(torch.Tensor.detach, tree_leaves(e))) for e in expected], rtol, atol)
    total = weighted_total(got)
    if total.requires_grad:
        total.backward()
    for p, g, e in zip(params, _grads(params), expected_grads, strict=True):
        if e is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            assert g is not None, f"no gradient for a parameter of shape {tuple(p.shape)}"
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol)
    return batcher
