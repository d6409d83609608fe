"""DataflowGraph: the recorded mini-batch, as a struct of arrays.

Recording appends to plain Python lists (the cheapest append there is); ``freeze()`` turns them
into numpy arrays once per flush for the scheduler, planner and executor. Node ids are assigned in
recording order, which is a topological order: a node can only read values recorded before it.

Per node: ``sig`` (op type id), ``depth`` (longest path from a source, computed while recording, see
NOTE: [Inline depth]), ``inst`` (instance index), ``phase``, and its operands as a CSR slice
``arg_code[arg_start[n]:arg_start[n+1]]``. An operand code ``c >= 0`` is a value id; ``c < 0`` is
the immediate ``imms[-c - 1]`` (a per-instance number or tensor). A node's outputs are the values
``first_value[n] .. first_value[n] + sig.num_outputs - 1``.

NOTE: [Inline depth] (ACRoBat): depth(node) = 1 + max depth of the nodes producing its lazy
operands, or 0 if it has none. It is computed in O(arity) at record time, so the depth policy needs
no graph traversal, and nodes at one depth never depend on each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import PhalanxError
from .aval import AVal
from .columns import Columns, as_array
from .signature import Signature, SignatureTable


class DataflowGraph(Columns):
    """Append-only store written by the recorder. See the module docstring for the layout; the
    node columns and the recording fast path live in ``Columns`` (ir/columns.py, native when built)."""

    __slots__ = ("table", "inst_runs", "phase_runs", "device", "spliced")

    def __init__(self, table: SignatureTable, device: "torch.device | None" = None):
        super().__init__()
        self.table = table
        self.device = device if device is not None else torch.device("cpu")
        # Instance and phase change rarely, so they are stored as runs: (first node, value).
        self.inst_runs: list[tuple[int, int]] = []
        self.phase_runs: list[tuple[int, int]] = []
        self.spliced = None     # nodes appended as arrays by splice(), after the columns

    def __len__(self) -> int:
        return len(self.node_sig) + (len(self.spliced[0]) if self.spliced is not None else 0)

    def splice(self, node_sig: np.ndarray, node_depth: np.ndarray, arg_ends: np.ndarray, arg_code: np.ndarray,
               imms: list, num_values: int) -> None:
        """Append nodes given as arrays (reused recordings, NOTE: [Recording reuse] in
        frontend/reuse.py): ``arg_ends`` and the value ids in ``arg_code`` already count what the
        graph holds. They are joined to the columns at ``freeze``, so splice is the last append of
        a graph (the caller adds the instance and phase runs)."""
        if self.spliced is not None:
            raise PhalanxError("a graph takes one splice, after every other node")
        self.spliced = (node_sig, node_depth, arg_ends, arg_code)
        self.imms.extend(imms)
        self.num_values += num_values

    def set_instance(self, inst: int, phase: int = 0) -> None:
        """Nodes appended from now on belong to instance ``inst`` and phase ``phase``."""
        n = len(self.node_sig)
        if not self.inst_runs or self.inst_runs[-1][1] != inst:
            self.inst_runs.append((n, inst))
        if not self.phase_runs or self.phase_runs[-1][1] != phase:
            self.phase_runs.append((n, phase))

    def add_node(self, sig: Signature, codes: list[int], depth: int) -> int:
        """Append one node; returns the id of its first output value."""
        first = self.num_values
        self.num_values = first + sig.num_outputs
        self.node_sig.append(sig.sid)
        self.node_depth.append(depth)
        self.arg_code.extend(codes)
        self.arg_start.append(len(self.arg_code))
        return first

    def freeze(self) -> "GraphArrays":
        sigs = list(self.table.sigs)
        node_sig, node_depth = as_array(self.node_sig), as_array(self.node_depth)
        arg_start, arg_code = as_array(self.arg_start), as_array(self.arg_code)
        if self.spliced is not None:
            more_sig, more_depth, more_ends, more_code = self.spliced
            node_sig, node_depth = np.concatenate((node_sig, more_sig)), np.concatenate((node_depth, more_depth))
            arg_start, arg_code = np.concatenate((arg_start, more_ends)), np.concatenate((arg_code, more_code))
        # Per-value columns, vectorized: value k of node n has the k-th output aval of its sig. Only
        # the op types this graph uses are visited, so the cost does not grow with the table.
        used = np.flatnonzero(np.bincount(node_sig)) if len(node_sig) else node_sig     # sorted, like unique
        index: dict[AVal, int] = {}
        sig_num_out = np.zeros(len(sigs), dtype=np.int64)
        outs_of_used = []
        for sid in used.tolist():
            outs = [index.setdefault(a, len(index)) for a in sigs[sid].out_avals]
            sig_num_out[sid] = len(outs)
            outs_of_used.append(outs)
        sig_out_start = np.zeros(len(sigs) + 1, dtype=np.int64)
        np.cumsum(sig_num_out, out=sig_out_start[1:])
        sig_out_flat = np.array([a for o in outs_of_used for a in o], dtype=np.int64)
        num_out = sig_num_out[node_sig] if len(node_sig) else np.zeros(0, np.int64)
        node_first_value = np.concatenate(([0], np.cumsum(num_out)[:-1])) if len(node_sig) else num_out
        value_node = np.repeat(np.arange(len(node_sig)), num_out)
        # Value v of node n is output v - first(n) of n's sig: one gather per node, not three per value.
        offset = np.repeat(sig_out_start[node_sig] - node_first_value, num_out)
        value_aval_id = sig_out_flat[offset + np.arange(self.num_values)] if self.num_values else offset
        return GraphArrays(
            sigs=sigs,
            node_sig=node_sig,
            node_depth=_dense_depth(node_depth, self.phase_runs),
            node_inst=_expand_runs(self.inst_runs, len(node_sig)),
            node_phase=_expand_runs(self.phase_runs, len(node_sig)),
            node_first_value=node_first_value,
            arg_start=arg_start,
            arg_code=arg_code,
            imms=self.imms,
            value_node=value_node,
            value_aval_id=value_aval_id,
            avals=list(index),
            device=self.device,
            used_sids=used,
        )


def _dense_depth(out: np.ndarray, phase_runs: list[tuple[int, int]]) -> np.ndarray:
    """Depths as recorded; with program phases (NOTE: [Phase depth] in frontend/recorder.py) they
    are renumbered 0, 1, 2... keeping their order, so policies can loop over depth levels."""
    if any(phase for _, phase in phase_runs) and len(out):
        out = np.searchsorted(np.unique(out), out)      # the inverse of unique, at a third of its cost
    return out


def _expand_runs(runs: list[tuple[int, int]], n: int) -> np.ndarray:
    if len(runs) <= 1:
        return np.full(n, runs[0][1] if runs else 0, dtype=np.int64)
    starts = np.array([r[0] for r in runs] + [n], dtype=np.int64)
    return np.repeat(np.array([r[1] for r in runs], dtype=np.int64), np.diff(starts))


@dataclass(frozen=True, eq=False)
class GraphArrays:
    """Frozen numpy view of a DataflowGraph. Derived structure (producers, consumers) is computed
    on first use and cached."""

    sigs: list[Signature]
    node_sig: np.ndarray
    node_depth: np.ndarray
    node_inst: np.ndarray
    node_phase: np.ndarray
    node_first_value: np.ndarray
    arg_start: np.ndarray
    arg_code: np.ndarray
    imms: list
    value_node: np.ndarray
    value_aval_id: np.ndarray
    avals: list[AVal]
    device: "torch.device"
    used_sids: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.node_sig)

    @property
    def num_values(self) -> int:
        return len(self.value_node)

    @cached_property
    def arg_owner(self) -> np.ndarray:
        """The node owning each operand slot."""
        return np.repeat(np.arange(self.num_nodes), np.diff(self.arg_start))

    @cached_property
    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(producer node, consumer node) for every lazy operand, with multiplicity."""
        lazy = self.arg_code >= 0
        return self.value_node[self.arg_code[lazy]], self.arg_owner[lazy]

    @cached_property
    def consumers(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR (start, node) of the consumers of each node, with multiplicity."""
        producer, consumer = self.edges
        order = np.argsort(producer, kind="stable")
        start = np.zeros(self.num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(producer, minlength=self.num_nodes), out=start[1:])
        return start, consumer[order]

    @cached_property
    def consumer_table(self) -> np.ndarray | None:
        """``consumers`` as a padded [nodes, most consumers] table (``padded_csr``), or None."""
        start, consumer = self.consumers
        return padded_csr(start, consumer, self.num_nodes)

    @cached_property
    def num_producers(self) -> np.ndarray:
        """Number of lazy operands of each node (its in-degree, with multiplicity)."""
        _, consumer = self.edges
        return np.bincount(consumer, minlength=self.num_nodes)

    def operand_codes(self, nodes: np.ndarray) -> np.ndarray:
        """[len(nodes), arity] operand codes of nodes that share one signature."""
        if len(nodes) == 0:
            return np.zeros((0, 0), dtype=np.int64)
        arity = int(self.arg_start[nodes[0] + 1] - self.arg_start[nodes[0]])
        return self.arg_code[self.arg_start[nodes][:, None] + np.arange(arity)]


def padded_csr(start: np.ndarray, targets: np.ndarray, n: int) -> np.ndarray | None:
    """The CSR lists ``targets[start[m]:start[m+1]]`` of ``n`` nodes as a [n, longest list] table
    padded with the sentinel ``n``, so a batch's lists are one fancy index; None when padding would
    more than quadruple the CSR (a few very wide nodes)."""
    degree = np.diff(start)
    width = int(degree.max(initial=0))
    if n * width > 4 * (len(targets) + n):
        return None
    table = np.full((n, max(width, 1)), n, dtype=np.int64)
    if len(targets):
        owner = np.repeat(np.arange(n), degree)
        table[owner, np.arange(len(targets)) - start[owner]] = targets
    return table
