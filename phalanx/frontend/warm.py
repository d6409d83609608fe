"""What a Recorder learns about cell calls, carried to the next Recorder of the same table.

NOTE: [Warm recorder caches] the first call of a cell in a graph takes the recorder's Python path
(``Recorder.record_cell``), which resolves the op type and registers the cell's entry for the native
fast path (``Columns.fast_calls``), the input split's parts (NOTE: [Input split]) and the ragged and
last-signature shortcuts. None of that depends on the graph: it follows from the op types in the
SignatureTable and, for a split, the cell's training flags. So each new Recorder starts with what
the previous Recorder of its table learned, and the first calls of a mini-batch are native too (the
tagger sent nine calls per mini-batch, ~25 us each, through the Python path). Everything is dropped
at once when an op type it names is no longer in the table at its id (a structure change cleared
the table, eviction renumbered it), when a split cell's training flags changed, or for another
device (a graph's first call of a cell is where a tensor operand's device is checked).
"""
from __future__ import annotations

import torch

from ..ir.signature import Signature, SignatureTable


class RecorderCaches:
    """The per-table state a Recorder shares with the next one (see the NOTE above)."""

    __slots__ = ("device", "fast_calls", "last_sig", "splits", "split_masks", "ragged_calls", "sigs", "flags")

    def __init__(self, device: torch.device):
        self.device = device
        self.fast_calls: dict = {}      # cell -> its Columns.fast_calls entry (frontend/recorder.py)
        self.last_sig: dict = {}        # cell -> the signature of its last all-lazy call (split cells)
        self.splits: dict = {}          # (signature, kept operands) -> (prefix, rest, others) | None
        self.split_masks: dict = {}     # signature -> {kept-operands bit mask: native split parts | None}
        self.ragged_calls: dict = {}    # cell -> its last ragged op type and pattern (frontend/ragged.py)
        self.sigs: dict[int, Signature] = {}     # every op type the fast entries and splits name, by id
        self.flags: dict[Signature, tuple] = {}  # a split signature -> the training flags it was split for

    def watch(self, *sigs: Signature) -> None:
        for sig in sigs:
            self.sigs[sig.sid] = sig

    def valid(self, table: SignatureTable, device: torch.device) -> bool:
        if device != self.device:
            return False
        table_sigs = table.sigs
        n = len(table_sigs)
        for sid, sig in self.sigs.items():
            if sid >= n or table_sigs[sid] is not sig:
                return False
        for sig in (*self.last_sig.values(), *(hit[0] for hit in self.ragged_calls.values())):
            if sig.sid >= n or table_sigs[sig.sid] is not sig:
                return False
        return all(tuple(m.training for m in sig.modules) == flags for sig, flags in self.flags.items())


def caches_for(table: SignatureTable, device: torch.device) -> RecorderCaches:
    """The table's caches if still valid, else fresh ones (which the table keeps from now on: held
    by the table itself, so they live and die with it)."""
    caches = table.recorder_caches
    if caches is None or not caches.valid(table, device):
        caches = table.recorder_caches = RecorderCaches(device)
    return caches
