"""Ragged operands: a variable-length list of values per row, stored CSR (flat values + offsets),
reduced per segment in one kernel instead of one op type per arity.

NOTE: [Ragged cells] CSR helpers. The recording of ragged operands is frontend/ragged.py
(NOTE: [Ragged operands]) and their batched kernels runtime/ragged.py (NOTE: [Ragged kernels]):
a ragged argument of a batch arrives as the concatenated member rows plus ``offsets``, and a sum
or mean over it is a segment sum (``index_add``, whose backward is a gather).
"""
from __future__ import annotations

import torch

REDUCTIONS = ("sum", "mean")


def segment_ids(offsets: torch.Tensor) -> torch.Tensor:
    """The row each flat value belongs to: ``[0, 0, 1, 3, 3, 3]`` for offsets ``[0, 2, 3, 3, 6]``."""
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device), lengths)


def segment_reduce(values: torch.Tensor, offsets: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """``out[i] = reduce(values[offsets[i]:offsets[i+1]])``; an empty segment gives zeros (also for
    ``mean``, like a lattice node with no predecessor). Differentiable in ``values``."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if offsets.dim() != 1 or len(offsets) == 0 or int(offsets[-1]) != len(values):
        raise ValueError(f"offsets must be 1-D, start a CSR of {len(values)} values and end at it; "
                         f"got shape {tuple(offsets.shape)}")
    rows = len(offsets) - 1
    out = values.new_zeros((rows, *values.shape[1:])).index_add(0, segment_ids(offsets), values)
    if reduce == "mean":
        lengths = (offsets[1:] - offsets[:-1]).clamp(min=1).to(values.dtype)
        out = out / lengths.reshape(rows, *([1] * (values.dim() - 1)))
    return out


def pack(rows: list[list[torch.Tensor]], like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR from per-row lists of equally shaped tensors (``like`` gives the element shape when every
    list is empty)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = [t for r in rows for t in r]
    if flat:
        return torch.stack(flat), offsets
    if like is None:
        raise ValueError("pack: every row is empty; pass `like` for the element shape")
    return like.new_zeros((0, *like.shape)), offsets
