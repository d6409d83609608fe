"""What a cell does besides computing: which tensors it reads besides its operands (parameters,
buffers, closed-over tensors), and whether it makes Python decisions on its operands' data.

NOTE: [Captured tensors] a per-instance function may read model state that is not passed as an
operand: a module cell's ``self.weight``, a function cell's closed-over ``nn.Linear``, a tensor
derived from parameters (``W2 = 2 * W``). The flush must know them to deliver their gradients and
to notice when they change (replaced, cast, moved). They are found by running the function once on
example operands under a ``TorchFunctionMode`` that sees every tensor passed to a torch function:
a tensor that is neither an operand nor produced inside the call is captured. This works whatever
the grad mode (``inference_mode``, ``no_grad``) and whether or not the tensor requires grad at the
time, unlike walking the autograd graph of the example call.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


class CaptureMode(TorchFunctionMode):
    """Collects tensors used by torch calls that are not ``operands`` and not produced in the call."""

    def __init__(self, operands):
        super().__init__()
        self._keep = list(operands)              # keeps ids unique while the mode is active
        self._known = {id(t) for t in self._keep}
        self.captured: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and id(t) not in self._known:
                self.captured.setdefault(id(t), t)
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._known.add(id(t))
                self._keep.append(t)
        return out


def run_capturing(fn, examples: list):
    """``fn(*examples)`` plus the tensors it captured, in first-use order."""
    mode = CaptureMode(examples)
    with mode:
        out = fn(*examples)
    return out, tuple(mode.captured.values())


# Tensor methods that hand tensor data to Python: the only ways Python control flow can depend on it.
_DECISIONS = frozenset({"__bool__", "item", "__int__", "__float__", "__index__", "tolist", "numpy", "__complex__"})


class DecisionMode(TorchFunctionMode):
    """Taint tracking: a tensor computed from an operand is tainted; ``decision`` names the first
    call that handed tainted data to Python (``bool``, ``item``...), i.e. data-dependent control flow.

    NOTE: [Sound batching] uses it: a decision is always evaluated whichever way it goes, so running
    the cell on the probe rows finds the first data-dependent decision on every path they take."""

    def __init__(self, operands):
        super().__init__()
        self._keep = list(operands)
        self._tainted = {id(t) for t in self._keep}
        self.decision: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        tainted = any(id(t) in self._tainted for t in inputs)
        name = getattr(func, "__name__", "")
        if tainted and name in _DECISIONS and self.decision is None:
            self.decision = f"Tensor.{name}" if not name.startswith("__") else f"{name.strip('_')}() of a tensor"
        out = func(*args, **kwargs)
        if tainted:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._tainted.add(id(t))
                    self._keep.append(t)
        return out


def run_observed(fn, args: list):
    """``fn(*args)`` and the first data-dependent decision it made (None if none)."""
    mode = DecisionMode(args)
    with mode:
        out = fn(*args)
    return out, mode.decision
