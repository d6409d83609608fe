"""Reused recordings: an instance object run again replays the nodes it recorded last time instead
of running the per-instance code again (``Batcher(reuse=True)``, opt-in).

NOTE: [Recording reuse] training runs epochs over a fixed dataset, so the same tree or sentence
object is recorded once per epoch, and recording is a large share of a small model's time (the
TreeLSTM at hidden 64: about a quarter of a mini-batch). What a recording holds depends only on
the instance, the per-instance code, the model's structure (its op types) and its training flags
(they decide dropout and the input split), never on parameter values: those are read when the
batch runs. So after a call without fibers each instance's nodes are cut out of the graph as a
``Block`` (op types, recorded depths, operand codes relative to the block, its immediates, its
phases and where its results are), and a later call that meets the same object (the same ``id``;
the cache holds a reference, so the id cannot pass to another object while cached) appends the
block to the graph with a few numpy operations instead of running the code.

A block is used only while every op type it names is still in the signature table (a structure
change clears the table, NOTE: [What an op type may cache]) and the model's training flags are
the ones it was recorded under; otherwise the instance is recorded again. The per-instance code
is not run for a replayed instance, so the contract is the user's: the instance object is not
mutated between calls, and the code is a function of the instance and the model (no Python-level
randomness, no side effects, no per-call state). Instances of calls that used fibers (a decision
on a lazy value) are never cached: their recording depends on values.

NOTE: [Plan reuse] evaluation loops and fixed-batch training run the very same mini-batch again. If
every instance of a call is the same object, in the same order, as in an earlier call whose every
instance was cached, the whole call is that call again: its frozen graph, schedule, memory layout
and steps (a ``CallPlan``) are a function of the blocks, the op types, the policy and the plan
options, none of which changed, so the call skips recording, scheduling and planning and only
executes. Steps hold index tensors and the instances' own tensors, never arenas or values (those
are allocated per run), so one plan runs any number of times. A plan is kept while the op types it
names are in the table, under the training flags, policy object, plan options and inference mode
(its index tensors are inference tensors if it was made under ``torch.inference_mode``) it was made with;
the least recently used is dropped past ``max_calls``. ``stats.plan_reused`` says it happened.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import PhalanxError
from ..ir.columns import as_array
from .value import LazyValue

DEFAULT_MAX_INSTANCES = 1 << 16
DEFAULT_MAX_CALLS = 256


class Block:
    """One instance's recording, relocatable: value ids relative to its first value, immediates to
    its own list, operand ends to its first operand (NOTE: [Recording reuse])."""

    __slots__ = ("instance", "flags", "sigs", "sids", "node_sig", "depth", "arg_ends", "arg_code", "imms",
                 "num_values", "phase_runs", "leaves", "rebuild")

    def __init__(self, instance, flags, sigs, sids, node_sig, depth, arg_ends, arg_code, imms, num_values,
                 phase_runs, leaves, rebuild):
        self.instance = instance        # held: its id() is the cache key
        self.flags = flags              # the training flags it was recorded under
        self.sigs = sigs                # the op types it uses (an eviction may renumber them)
        self.sids = sids                # their ids when node_sig was written
        self.node_sig = node_sig        # per node, its op type id
        self.depth = depth              # per node, the depth as recorded
        self.arg_ends = arg_ends        # per node, the end of its operands, relative to the block
        self.arg_code = arg_code        # operand codes: a value id - first value, or -1 - immediate index
        self.imms = imms
        self.num_values = num_values
        self.phase_runs = phase_runs    # ((first node, phase), ...) relative to the block
        self.leaves = leaves            # per result leaf: (value id - first value, aval, depth), or [object]
        self.rebuild = rebuild


class CallPlan:
    """A whole call's recording and plan, run again as it is (NOTE: [Plan reuse])."""

    __slots__ = ("instances", "flags", "options", "sigs", "sids", "graph", "outputs", "planned")

    def __init__(self, instances, flags, options, graph, outputs, planned):
        self.instances = instances      # held: their ids are the key
        self.flags = flags
        self.options = options          # (policy object, plan options, device, inference mode) it was planned with
        self.sids = tuple(graph.used_sids.tolist())
        self.sigs = tuple(graph.sigs[s] for s in self.sids)
        self.graph = graph
        self.outputs = outputs
        self.planned = planned          # (schedule, layout, steps, counts), as Batcher._plan returns them


class RecordingCache:
    """Blocks by instance id, least recently used dropped past ``max_instances``; whole-call plans by
    the instances' ids, least recently used dropped past ``max_calls`` (0: none kept)."""

    def __init__(self, max_instances: int = DEFAULT_MAX_INSTANCES, max_calls: int = DEFAULT_MAX_CALLS):
        if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
            raise PhalanxError(f"reuse: expected True or a positive number of instances to keep, got {max_instances!r}")
        if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0:
            raise PhalanxError(f"reuse: expected a number of call plans to keep >= 0, got {max_calls!r}")
        self.max_instances = max_instances
        self.max_calls = max_calls
        self.blocks: OrderedDict[int, Block] = OrderedDict()
        self.calls: OrderedDict[tuple, CallPlan] = OrderedDict()
        self.flags: tuple = ()

    def __len__(self) -> int:
        return len(self.blocks)

    def begin_call(self, table) -> None:
        """The training flags this call records under (a block of other flags is recorded again)."""
        self.flags = tuple(m.training for m in table.modules())

    def clear(self) -> None:
        self.blocks.clear()
        self.calls.clear()

    def _block(self, instance) -> Block | None:
        """The block stored for ``instance`` under this call's training flags."""
        block = self.blocks.get(id(instance))
        if block is None or block.instance is not instance or block.flags != self.flags:
            return None
        return block

    def lookup(self, instance, table) -> Block | None:
        """The block of ``instance`` if it can be replayed in this call (the table does not change
        during a call, so this check holds until the call ends)."""
        block = self._block(instance)
        if block is None:
            return None
        if not _in_table(block.sigs, table):
            del self.blocks[id(instance)]       # its op type left the table: record it again
            return None
        sids = tuple(sig.sid for sig in block.sigs)
        if sids != block.sids:                       # renumbered by an eviction
            block.node_sig = _renumber(block.node_sig, block.sids, sids)
            block.sids = sids
        self.blocks.move_to_end(id(instance))
        return block

    def call_plan(self, instances: list, table, options: tuple) -> CallPlan | None:
        """The plan of an earlier call on exactly these instance objects, if it still holds (NOTE:
        [Plan reuse])."""
        if not self.calls:
            return None
        key = tuple(map(id, instances))
        plan = self.calls.get(key)
        if plan is None:
            return None
        if (plan.flags != self.flags or plan.options != options
                or any(a is not b for a, b in zip(plan.instances, instances, strict=True))
                or not _in_table(plan.sigs, table)
                or tuple(sig.sid for sig in plan.sigs) != plan.sids):      # renumbered by an eviction
            del self.calls[key]
            return None
        self.calls.move_to_end(key)
        return plan

    def store_call(self, instances: list, options: tuple, graph, outputs: list, planned: tuple) -> None:
        """Keep a finished call's plan if every one of its instances is cached (its recording is then
        a function of the blocks: no fibers, no instance reading another's values)."""
        if not self.max_calls or not instances:
            return
        if any(self._block(instance) is None for instance in instances):
            return
        key = tuple(map(id, instances))
        self.calls[key] = CallPlan(list(instances), self.flags, options, graph, outputs, planned)
        self.calls.move_to_end(key)
        while len(self.calls) > self.max_calls:
            self.calls.popitem(last=False)

    def replay(self, rec, hits: list, outputs: list) -> None:
        """Append the blocks ``hits`` = [(instance index, block)] to ``rec``'s graph, after what it
        holds, in one vectorized pass, and put each one's flattened result into ``outputs``."""
        g = rec.graph
        first_node, first_value, first_imm, first_arg = len(g.node_sig), g.num_values, len(g.imms), len(g.arg_code)
        blocks = [b for _, b in hits]
        nodes = np.fromiter((len(b.node_sig) for b in blocks), dtype=np.int64, count=len(blocks))
        args = np.fromiter((len(b.arg_code) for b in blocks), dtype=np.int64, count=len(blocks))
        nvals = np.fromiter((b.num_values for b in blocks), dtype=np.int64, count=len(blocks))
        nimms = np.fromiter((len(b.imms) for b in blocks), dtype=np.int64, count=len(blocks))
        node_at = first_node + np.cumsum(nodes) - nodes
        value_at = first_value + np.cumsum(nvals) - nvals
        imm_at = first_imm + np.cumsum(nimms) - nimms
        arg_at = first_arg + np.cumsum(args) - args
        codes = np.concatenate([b.arg_code for b in blocks])
        codes += np.where(codes >= 0, np.repeat(value_at, args), -np.repeat(imm_at, args))
        g.splice(np.concatenate([b.node_sig for b in blocks]), np.concatenate([b.depth for b in blocks]),
                 np.concatenate([b.arg_ends for b in blocks]) + np.repeat(arg_at, nodes), codes,
                 [x for b in blocks for x in b.imms], int(nvals.sum()))
        for (i, b), at, v0 in zip(hits, node_at.tolist(), value_at.tolist(), strict=True):
            _append_runs(g.inst_runs, at, i)
            for rel, phase in b.phase_runs:
                _append_runs(g.phase_runs, at + rel, phase)
            outputs[i] = ([LazyValue(leaf[0] + v0, leaf[1], leaf[2], g) if type(leaf) is tuple else leaf[0]
                           for leaf in b.leaves], b.rebuild)

    def store(self, instances: list, rec, graph, outputs: list, skip: set) -> None:
        """Cut every instance of a finished recording (no fibers) but those in ``skip`` (replayed) into a
        block. An instance whose nodes are not one run, or that reads
        another instance's values, is left out."""
        g = rec.graph
        runs: dict[int, tuple[int, int]] = {}
        repeated = set()
        bounds = [first for first, _ in g.inst_runs] + [len(graph.node_sig)]
        for (first, inst), end in zip(g.inst_runs, bounds[1:], strict=True):
            if inst in runs and end > first and runs[inst][1] > runs[inst][0]:
                repeated.add(inst)
            elif inst not in runs or end > first:
                runs[inst] = (first, end)
        raw_depth = as_array(g.node_depth)     # as recorded (the frozen graph's may be renumbered)
        if g.spliced is not None:
            raw_depth = np.concatenate((raw_depth, g.spliced[1]))
        for i, instance in enumerate(instances):
            if i in skip or i in repeated or not _cacheable(instance):
                continue
            lo, hi = runs.get(i, (len(graph.node_sig), len(graph.node_sig)))
            block = _cut(graph, g, raw_depth, instance, self.flags, lo, hi, outputs[i])
            if block is None:
                continue
            self.blocks[id(instance)] = block
            self.blocks.move_to_end(id(instance))
        while len(self.blocks) > self.max_instances:
            self.blocks.popitem(last=False)


def _in_table(sigs: tuple, table) -> bool:
    """Is every op type of ``sigs`` still in the table (a structure change clears it; an eviction may
    drop some)?"""
    current = table.sigs
    return all(sig.sid < len(current) and current[sig.sid] is sig for sig in sigs)


def _renumber(node_sig: np.ndarray, old: tuple, new: tuple) -> np.ndarray:
    table = np.zeros(max(old) + 1, dtype=np.int64)
    table[list(old)] = new
    return table[node_sig]


def _append_runs(runs: list, at: int, value: int) -> None:
    """Append the run (first node ``at``, ``value``) to a run list kept as ``set_instance`` keeps it."""
    if runs and runs[-1][1] == value:
        return
    if runs and runs[-1][0] == at:
        runs.pop()
        if runs and runs[-1][1] == value:
            return
    runs.append((at, value))


def _cacheable(instance) -> bool:
    # Small ints and interned strings are shared objects: the same object is not the same instance.
    return not isinstance(instance, (int, float, str, bytes, bool, type(None)))


def _cut(graph, g, raw_depth, instance, flags, lo: int, hi: int, output) -> Block | None:
    n = len(graph.node_sig)
    first_value = int(graph.node_first_value[lo]) if lo < n else graph.num_values
    end_value = int(graph.node_first_value[hi]) if hi < n else graph.num_values
    a0, a1 = int(graph.arg_start[lo]), int(graph.arg_start[hi])
    codes = graph.arg_code[a0:a1]
    lazy = codes >= 0
    values = codes[lazy]
    if len(values) and (values.min() < first_value or values.max() >= end_value):
        return None                             # reads another instance's value
    imm_index = -codes[~lazy] - 1
    used_imms, local_imm = np.unique(imm_index, return_inverse=True)
    rel = np.empty_like(codes)
    rel[lazy] = values - first_value
    rel[~lazy] = -local_imm - 1
    node_sig = graph.node_sig[lo:hi]
    used_sids = np.unique(node_sig).tolist()
    phases = graph.node_phase[lo:hi]
    changes = np.flatnonzero(phases[1:] != phases[:-1]) + 1 if hi > lo else np.zeros(0, np.int64)
    phase_runs = tuple((int(k), int(phases[k])) for k in [0, *changes.tolist()]) if hi > lo else ()
    leaves = []
    for leaf in output[0]:
        if type(leaf) is LazyValue:
            if leaf.graph is not g or not first_value <= leaf.vid < end_value:
                return None
            leaves.append((leaf.vid - first_value, leaf.aval, leaf.depth))
        else:
            leaves.append([leaf])           # a list, so replay tells it from a value's tuple
    imms = graph.imms
    return Block(instance, flags, tuple(graph.sigs[s] for s in used_sids), tuple(used_sids), node_sig,
                 raw_depth[lo:hi], graph.arg_start[lo + 1:hi + 1] - a0, rel,
                 [imms[k] for k in used_imms.tolist()], end_value - first_value, phase_runs, leaves, output[1])
