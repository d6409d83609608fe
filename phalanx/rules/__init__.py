"""Batching rules for op-level nodes: how a torch function written for ONE instance runs on a batch.

Rules are data (STYLE.md habit 5): ``dims.py`` maps functions that take a dimension argument to
where that argument sits, so the batched call can shift it past the leading batch dimension.
The executor tries rules as candidates and keeps one only when it equals the per-instance function
on the probe rows (NOTE: [Sound batching] in runtime/kernels.py)."""
from .dims import shifted_call as shifted_call
from .dims import stacked_dim as stacked_dim
