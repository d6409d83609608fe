"""``Batcher.pipeline``: record the next mini-batch while the current one's kernels run.

NOTE: [Pipelined recording] a call is two halves: recording (the user's per-instance Python,
GIL-bound) and the flush (mostly aten kernels, which release the GIL). Over a stream of
mini-batches one worker thread records mini-batch k+1 while the calling thread flushes k, so on a
machine with a spare core the recording hides behind the kernels. What keeps the results equal to
calling the Batcher in a loop:
- The overlap is used only with gradients off (``no_grad`` / ``inference_mode``) when the next
  mini-batch is requested. With gradients on, a mini-batch recorded early could read parameters
  (a tensor computed eagerly from them inside the user's code) before the optimizer step the user
  runs on the previous mini-batch's loss; such a stream runs one mini-batch at a time.
- The worker records under the grad / inference mode of the request before. A mini-batch whose
  mode, or whose model (the modules, parameters and buffers of the model ``fn`` belongs to:
  identity, dtype, device, shape), changed by the time it is requested is recorded again on the
  calling thread; its first recording's outputs are dropped unseen, so the user's per-instance
  code ran twice for it (keep it free of side effects). A plain-function ``fn`` with no model has
  no structure to check: do not swap the modules it closes over during a pipeline.
- One execution at a time (``Batcher._flush_lock``): a model with tensor-dependent control flow
  runs its fiber rounds while recording, and those wait for the calling thread's flush.
- The op-type table is only appended to while a flush is in flight: a recording ahead counts its
  call but never evicts or clears (``begin_call(may_reset=False)``); when the table is over its
  bound the next mini-batch is recorded after the flush, where eviction is safe.
- The Batcher stays busy (its call lock held) from the first request until the stream ends or the
  generator is closed; a direct call from inside the loop gets the usual clear error.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from ..errors import PhalanxError


@dataclass
class Recorded:
    """A recorded mini-batch waiting for its flush: the frozen graph and the per-instance outputs, or
    (fibers) the final ``results`` when its rounds already ran. ``modes`` / ``token``: the grad and
    inference mode and the model structure it was recorded under (a recording ahead only)."""

    stats: Any
    graph: Any
    outputs: list
    results: list | None
    modes: tuple[bool, bool] | None = None
    token: list | None = None


_END = object()


def _modes() -> tuple[bool, bool]:
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


def _structure(batcher) -> list:
    """The model's modules, parameters and buffers (identity, dtype, device, shape): what a
    recording depends on besides the instances."""
    root = batcher.table.root
    if root is None:
        return []
    return [(id(m), [(id(t), t.dtype, t.device, t.shape) for t in (*m._parameters.values(), *m._buffers.values())
                     if t is not None]) for m in root.modules()]


def _record_ahead(batcher, instances: list, modes: tuple[bool, bool]) -> Recorded:
    """The worker thread: record under the requesting thread's modes, counting the call but
    never evicting or clearing op types a flush in flight may use."""
    grad, inference = modes
    before = _structure(batcher)
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        recorded = batcher._record(instances, may_reset=False)
    recorded.modes = modes
    recorded.token = before if _structure(batcher) == before else None   # changed while recording: None
    return recorded


def pipelined(batcher, minibatches: Iterable[Iterable[Any]]) -> Iterator[list]:
    """The generator behind ``Batcher.pipeline`` (NOTE: [Pipelined recording])."""
    source = iter(minibatches)

    def stream() -> Iterator[list]:
        if not batcher._lock.acquire(blocking=False):
            raise PhalanxError("this Batcher is already running (called from two threads at once, or from "
                               "inside its own run); use one Batcher per thread")
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phalanx-record")
        ahead: Future | None = None
        try:
            current = next(source, _END)
            while current is not _END:
                recorded = ahead.result() if ahead is not None else None    # re-raises its error, at its turn
                ahead = None
                if recorded is not None and (recorded.modes != _modes() or recorded.token is None
                                             or recorded.token != _structure(batcher)):
                    recorded = None                 # recorded under another mode or model: again, here
                if recorded is None:
                    recorded = batcher._record(list(current))
                following = next(source, _END)
                if following is not _END and not torch.is_grad_enabled() and not batcher.table.over_bound():
                    ahead = worker.submit(_record_ahead, batcher, list(following), _modes())
                batcher.stats = recorded.stats
                recorded.stats.recorded_ahead = recorded.modes is not None
                yield recorded.results if recorded.results is not None else batcher._flush(recorded)
                current = following
        finally:
            if ahead is not None:
                try:
                    ahead.result()                  # let a recording in flight end before the Batcher is free
                except BaseException:               # noqa: BLE001  (its mini-batch was never requested)
                    pass
            worker.shutdown(wait=True)
            batcher._lock.release()

    return stream()
