"""Branch alignment (ACRoBat's ghost ops) for the depth policy.

When instances take branches of different lengths (``if`` on an instance's data: 1 op on one side,
3 on the other), the values after the branch sit at different depths, so every op after the
branch lands in a different depth-batch per branch and the rest of the instance never batches
again. ``align(value, after=start, ops=n)`` gives ``value`` the depth it would have after ``n``
ops from ``start`` (the value at the branch point): the shorter branch gets n - k "ghost" depth
levels, which cost nothing (no node is recorded; only the depth counter moves). Sound because a
consumer's depth only has to exceed its producers' depths, and padding only raises it.

Outside a phalanx run, and for values that are not lazy, ``align`` returns ``value`` unchanged.
"""
from __future__ import annotations

from .value import LazyValue


def align(value, *, after, ops: int):
    """``value`` counted as ``ops`` ops after ``after`` (see the module docstring).

    **Example:**

    >>> start = h
    >>> h = cell_a(h) if word % 2 else cell_c(cell_b(cell_a(h)))
    >>> h = phalanx.align(h, after=start, ops=3)   # ops after the if batch across both branches
    """
    if type(value) is not LazyValue or type(after) is not LazyValue:
        return value
    if ops < 0:
        raise ValueError(f"phalanx.align: ops must be >= 0, got {ops}")
    depth = after.depth + ops
    if depth <= value.depth:
        return value
    return LazyValue(value.vid, value.aval, depth, value.graph)
