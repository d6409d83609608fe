"""Ablation switches of the ahead-of-time cell analysis; each one can be turned off on its own."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellOptions:
    """**Fields** (all on by default except ``compile``):

    - ``trace``: trace the cell into an aten graph and batchify it ahead of time. Off: run
      ``torch.func.vmap`` of the per-instance function at every call (no analysis at all; the other
      switches then do nothing).
    - ``hoist``: compute values that depend only on parameters and constants (transposes, weight
      concatenations) once, cached while the parameters are unchanged.
    - ``merge``: fold bias adds into the GEMM (``addmm``), merge matmuls that read the same input
      into one with a concatenated weight, and let a GEMM accumulate into another whose result it
      is added to (NOTE: [Accumulated GEMMs] in merge.py), and run one activation over adjacent
      gate chunks of a split (NOTE: [Fused gate activations] in simplify.py).
    - ``split``: allow ``CellProgram.auto_split`` to cut the cell into a prefix over some operands
      and the rest (the recorder decides where; see ``split.py``).
    - ``inplace``: under no_grad, elementwise ops overwrite the program's own temporaries instead of
      allocating (NOTE: [In-place inference] in inplace.py; the same values within an ulp).
    - ``compile``: ``torch.compile`` (Inductor) the batched program with a dynamic batch size. Off by
      default: on CPU it was measured at 0.8-1.1x of the plain program (GEMM-bound); for the GPU.
    - ``sparse_grads``: embedding lookups give row-sparse weight gradients (indices + rows), not a
      dense vocabulary-sized tensor per batch.
    - ``defer_grads``: in training, a GEMM over a weight (a parameter or a hoisted value) leaves its
      weight gradient to the end of the flush, one GEMM over every batch's rows instead of one per
      batch (NOTE: [Deferred GEMM gradients] in defer.py).
    - ``group``: in inference, the batches of twin op types at one depth (cells of one structure
      with different weights: a BiLSTM's two directions) run as one batch, parameter-reading ops
      per member and the rest once (NOTE: [Op-type groups] in group.py).
    - ``reduce_ragged``: a ragged cell that only sums or averages its stacked argument runs as segment
      sums plus its traced program (NOTE: [Reduced ragged programs] in reduced.py); off: the cell's
      own code on segments (runtime/ragged.py).
    - ``distinct_rows``: a batch that reads only numbers (or rows of such batches) runs once per
      distinct row, in training and, where its GEMMs are large enough to pay, in inference (NOTE:
      [Distinct rows] in runtime/distinct.py).
    """

    trace: bool = True
    hoist: bool = True
    merge: bool = True
    split: bool = True
    inplace: bool = True
    compile: bool = False
    sparse_grads: bool = True
    defer_grads: bool = True
    group: bool = True
    reduce_ragged: bool = True
    distinct_rows: bool = True

    @classmethod
    def all_off(cls) -> CellOptions:
        return cls(trace=True, hoist=False, merge=False, split=False, inplace=False, compile=False,
                   sparse_grads=False, defer_grads=False, group=False, reduce_ragged=False,
                   distinct_rows=False)

    @classmethod
    def resolve(cls, cells: "CellOptions | bool | None") -> "CellOptions | None":
        """A Batcher's ``cells`` argument: True -> the defaults, False / None -> off (probing)."""
        if cells is True:
            return cls()
        if cells is False or cells is None:
            return None
        if not isinstance(cells, cls):
            raise TypeError(f"cells must be True, False or a CellOptions, got {cells!r}")
        return cells
