"""Dimension-shifting rules: ``torch.stack(xs)`` on one instance is ``torch.stack(xs, dim=1)`` on a
batch whose rows lead every operand, ``x.sum(0)`` is ``x.sum(1)``, and so on. A non-negative dim
moves one to the right; a negative dim counts from the end and stays. A call that leaves its dim to
a default that means "all dims" (``x.sum()``) has no rule."""
from __future__ import annotations

from typing import Callable

import torch

_TENSOR = torch.Tensor

# function -> (positions of dim arguments, their keyword names, the default when omitted or None)
_RULES: dict[Callable, tuple[tuple[int, ...], tuple[str, ...], "int | None"]] = {}


def _rule(funcs, positions, names, default=None):
    for f in funcs:
        _RULES[f] = (positions, names, default)


_rule((torch.stack, torch.cat, torch.concat, torch.concatenate), (1,), ("dim",), 0)
_rule((torch.sum, _TENSOR.sum, torch.mean, _TENSOR.mean, torch.prod, _TENSOR.prod, torch.amax, _TENSOR.amax,
       torch.amin, _TENSOR.amin, torch.logsumexp, _TENSOR.logsumexp, torch.norm, _TENSOR.norm), (1,), ("dim",))
_rule((torch.softmax, _TENSOR.softmax, torch.log_softmax, _TENSOR.log_softmax, torch.nn.functional.softmax,
       torch.nn.functional.log_softmax, torch.cumsum, _TENSOR.cumsum, torch.unsqueeze, _TENSOR.unsqueeze,
       torch.select, _TENSOR.select, torch.narrow, _TENSOR.narrow, torch.index_select, _TENSOR.index_select,
       torch.unbind, _TENSOR.unbind), (1,), ("dim",))
_rule((torch.chunk, _TENSOR.chunk, torch.split, _TENSOR.split), (2,), ("dim",), 0)
_rule((torch.transpose, _TENSOR.transpose, torch.swapaxes, _TENSOR.swapaxes), (1, 2), ("dim0", "dim1"))
_rule((torch.flatten, _TENSOR.flatten), (1, 2), ("start_dim", "end_dim"), 0)


def _shift(d):
    return d + 1 if type(d) is int and d >= 0 else d


def shifted_call(func, args: tuple, kwargs: dict) -> "tuple[tuple, dict] | None":
    """The arguments of the batched call of ``func(*args, **kwargs)``, or None without a rule.
    ``args`` holds per-instance operands as placeholders; only the dim arguments change."""
    rule = _RULES.get(func)
    if rule is None:
        return None
    positions, names, default = rule
    args, kwargs = list(args), dict(kwargs)
    found = False
    for pos, name in zip(positions, names, strict=True):
        if pos < len(args):
            d = args[pos]
            if isinstance(d, (tuple, list)):
                args[pos] = type(d)(_shift(x) for x in d)
            else:
                args[pos] = _shift(d)
            found = True
        elif name in kwargs:
            d = kwargs[name]
            kwargs[name] = type(d)(_shift(x) for x in d) if isinstance(d, (tuple, list)) else _shift(d)
            found = True
    if not found:
        if default is None:
            return None                      # e.g. x.sum(): all dims, no per-row form
        if func in (torch.flatten, _TENSOR.flatten):
            kwargs["start_dim"] = 1
        else:
            kwargs[names[0]] = default + 1
    return tuple(args), kwargs
