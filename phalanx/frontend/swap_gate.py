"""One gate between eager cell calls and the moments phalanx swaps a cell module's tensors.

NOTE: [Swapped parameters] tracing a cell (cells/trace.py) and the ``trace=False`` vmap program
(cells/build.py) call the user's own module through ``torch.func.functional_call``, which puts
fake tensors in place of its parameters and buffers for the length of the call. The module object
is shared: a thread that calls the same cell eagerly at that moment (the model used unbatched
elsewhere while a Batcher's first call traces it) would compute with the swapped tensors, or fail
with a FakeTensor error. So a swap waits until no OTHER thread is inside an eager cell call, and
eager cell calls of other threads wait while a swap is on. A thread never waits for itself (a cell
called eagerly inside a traced cell, a Batcher run from inside an eager cell call). Covered: every
call of a phalanx cell module outside a run (``frontend/cell.py``); not covered: a submodule of a
cell called directly on another thread, outside any cell.

Eager calls are the unbatched reference (and the benchmarks' ``eager`` rows), so their side costs
no lock: each thread counts its own eager calls in a counter of its own, and the two sides follow
the flag-then-check order of Dekker's algorithm (a thread announces itself, then looks at the
other side; under the GIL one of two racing threads sees the other). Only a thread that meets a
swap, or a swapper waiting for eager calls to end, takes the lock.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager


class _Count:
    __slots__ = ("n", "__weakref__")

    def __init__(self):
        self.n = 0


class SwapGate:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._local = threading.local()
        self._counts: "weakref.WeakSet[_Count]" = weakref.WeakSet()   # one per thread, dies with it
        self._swapper: "int | None" = None                             # the thread swapping now
        self._depth = 0

    def _mine(self) -> _Count:
        count = getattr(self._local, "count", None)
        if count is None:
            count = self._local.count = _Count()
            with self._cond:
                self._counts.add(count)
        return count

    def enter_eager(self) -> _Count:
        """Call before an eager cell call; pass the result to ``exit_eager`` after it."""
        count = self._mine()
        while True:
            count.n += 1
            swapper = self._swapper
            if swapper is None or swapper == threading.get_ident():
                return count
            count.n -= 1                       # a swap is on: step back and wait for its end
            with self._cond:
                self._cond.notify_all()
                while self._swapper is not None:
                    self._cond.wait()

    def exit_eager(self, count: _Count) -> None:
        count.n -= 1
        if self._swapper is not None:          # a swapper may be waiting for this call to end
            with self._cond:
                self._cond.notify_all()

    @contextmanager
    def swapping(self):
        """Around a swap of a cell module's tensors (a cold path: once per trace)."""
        me = threading.get_ident()
        mine = self._mine()
        with self._cond:
            while self._swapper is not None and self._swapper != me:
                self._cond.wait()
            self._swapper = me
            self._depth += 1
            while any(c.n for c in list(self._counts) if c is not mine):
                self._cond.wait(0.01)
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._swapper = None
                    self._cond.notify_all()


GATE = SwapGate()
