"""Dimension-shifting rules: ``torch.stack(xs)`` on one instance is ``torch.stack(xs, dim=1)`` on a
batch whose rows lead every operand, ``x.sum(0)`` is ``x.sum(1)``, and so on. A non-negative dim
moves one to the right; a negative dim counts from the end and stays.

A reduction over every dim (``x.sum()``, ``x.argmax()``, ``x.max()``: a decoder's greedy choice,
an early exit's confidence) reduces each row flattened: ``x.reshape(B, -1).argmax(1)`` on a batch
(``max()`` / ``min()`` without a dim become ``amax`` / ``amin``, which return the values only, as
they do)."""
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
_rule((torch.argmax, _TENSOR.argmax, torch.argmin, _TENSOR.argmin, torch.max, _TENSOR.max, torch.min, _TENSOR.min,
       torch.std, _TENSOR.std, torch.var, _TENSOR.var, torch.any, _TENSOR.any, torch.all, _TENSOR.all,
       torch.nansum, _TENSOR.nansum, torch.count_nonzero, _TENSOR.count_nonzero), (1,), ("dim",))

# function called without a dim -> the reduction that takes ``dim=1`` over each flattened row.
_ALL_DIMS: dict[Callable, Callable] = {}
for _name, _reduce in (("argmax", torch.argmax), ("argmin", torch.argmin), ("max", torch.amax), ("min", torch.amin),
                       ("amax", torch.amax), ("amin", torch.amin), ("sum", torch.sum), ("nansum", torch.nansum),
                       ("mean", torch.mean), ("prod", torch.prod), ("std", torch.std), ("var", torch.var),
                       ("any", torch.any), ("all", torch.all), ("count_nonzero", torch.count_nonzero),
                       ("norm", torch.norm)):
    _ALL_DIMS[getattr(torch, _name)] = _ALL_DIMS[getattr(_TENSOR, _name)] = _reduce
# Keywords that keep the per-row meaning of an all-dims reduction (``keepdim`` would not).
_ALL_DIMS_KWARGS = frozenset({"dtype"})


def _shift(d):
    return d + 1 if type(d) is int and d >= 0 else d


def shifted_call(func, args: tuple, kwargs: dict) -> "tuple[Callable, tuple, dict] | None":
    """``(function, args, kwargs)`` of the batched call of ``func(*args, **kwargs)``, or None without
    a rule. ``args`` holds per-instance operands as placeholders; only dims (or, for an all-dims
    reduction, the function) change."""
    rule = _RULES.get(func)
    if rule is None:
        return _all_dims_call(func, args, kwargs)
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
        elif name in kwargs and kwargs[name] is not None:
            d = kwargs[name]
            kwargs[name] = type(d)(_shift(x) for x in d) if isinstance(d, (tuple, list)) else _shift(d)
            found = True
    if not found:
        if default is None:
            return _all_dims_call(func, tuple(args), kwargs)     # x.sum(): every dim
        if func in (torch.flatten, _TENSOR.flatten):
            kwargs["start_dim"] = 1
        else:
            kwargs[names[0]] = default + 1
    return func, tuple(args), kwargs


def _all_dims_call(func, args: tuple, kwargs: dict) -> "tuple[Callable, tuple, dict] | None":
    reduce = _ALL_DIMS.get(func)
    kwargs = {k: v for k, v in kwargs.items() if not (k == "dim" and v is None)}
    # One tensor argument only: ``torch.max(a, b)`` is elementwise, ``x.norm(1)`` names a p.
    if reduce is None or len(args) != 1 or not kwargs.keys() <= _ALL_DIMS_KWARGS:
        return None

    def each_row(rows, **options):
        return reduce(rows.reshape(rows.shape[0], -1), dim=1, **options)

    each_row.__name__ = f"{getattr(func, '__name__', 'reduce')}_each_row"
    return each_row, args, kwargs


def stacked_dim(func, args: tuple, kwargs: dict, out_ndim: int) -> "int | None":
    """For a batched call that is ``torch.stack(operands, dim=d)``, the batch-level ``d`` (>= 1), so
    the executor can write each operand list straight into its slot of the output (NOTE: [Stacked
    reads] in runtime/executor.py); None for anything else. ``out_ndim``: the per-instance output's."""
    if func is not torch.stack or not args or not isinstance(args[0], (list, tuple)):
        return None
    d = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    if type(d) is not int or d == 0:
        return None
    return d if d > 0 else d + out_ndim + 1         # a negative dim counts from the batch's end
