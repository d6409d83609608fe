"""Microbenchmark (not a test): one batched cell call, the traced program of phalanx/cells against
today's ``native`` kernel (the per-instance module called on batched operands), side by side.

    python -m phalanx.bench.cells_micro [--hidden 256] [--batch 64] [--repeats 200]

Prints min/median microseconds per call for inference (no_grad) and training (forward plus one
``torch.autograd.grad`` w.r.t. operands and parameters, as the executor's batched backward does),
and the ratios native / program (> 1: the program is faster). Implementations are interleaved;
on a shared machine the min is the steadier number.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ..cells import CellOptions, compile_cell, split_program
from ..ir.aval import aval_of
from ..models.tagger import LSTMStep
from ..models.treelstm import TreeLSTMInternal


class PerGateTreeLSTM(nn.Module):
    """TreeLSTMInternal written with one nn.Linear per gate (what merging is for)."""

    def __init__(self, hidden):
        super().__init__()
        self.i, self.fl, self.fr, self.o, self.u = (nn.Linear(2 * hidden, hidden) for _ in range(5))

    def forward(self, hl, cl, hr, cr):
        x = torch.cat([hl, hr], dim=-1)
        c = (torch.sigmoid(self.i(x)) * torch.tanh(self.u(x)) + torch.sigmoid(self.fl(x)) * cl
             + torch.sigmoid(self.fr(x)) * cr)
        return torch.sigmoid(self.o(x)) * torch.tanh(c), c


def _native(cell):
    return lambda operands, size: cell(*operands) if not hasattr(cell, "_phalanx_fn") \
        else nn.Module.__call__(cell, *operands)


def _step(call, operands, size, params, train):
    if not train:
        with torch.no_grad():
            call(operands, size)
        return
    ops = [o.detach().requires_grad_() for o in operands]
    outs = call(ops, size)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.grad(outs, ops + params, [torch.ones_like(o) for o in outs], allow_unused=True,
                        retain_graph=True)     # as the executor does: hoisted values serve a whole flush


def measure(calls: dict, size, params, train, repeats) -> dict:
    """``calls``: name -> (callable, operands)."""
    times = {name: [] for name in calls}
    for name, (call, operands) in calls.items():          # warm-up (hoisted values, allocator)
        _step(call, operands, size, params, train)
    for _ in range(repeats):
        for name, (call, operands) in calls.items():
            start = time.perf_counter()
            _step(call, operands, size, params, train)
            times[name].append(time.perf_counter() - start)
    return {name: (min(t) * 1e6, statistics.median(t) * 1e6) for name, t in times.items()}


def cases(hidden: int):
    torch.manual_seed(0)
    lstm = LSTMStep(hidden, hidden)
    lstm_ex = [torch.zeros(hidden)] * 3
    yield "LSTMStep", lstm, lstm_ex
    internal = TreeLSTMInternal(hidden)
    yield "TreeLSTMInternal", internal, [torch.zeros(hidden)] * 4
    per_gate = PerGateTreeLSTM(hidden)
    yield "TreeLSTM per-gate Linear", per_gate, [torch.zeros(hidden)] * 4


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"hidden {args.hidden}, batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}; "
          f"min/median us per call over {args.repeats} interleaved repeats")
    for name, cell, examples in cases(args.hidden):
        fn = nn.Module.__call__.__get__(cell) if hasattr(cell, "_phalanx_fn") else cell.forward
        avals = [aval_of(e) for e in examples]
        gen = torch.Generator().manual_seed(0)
        operands = [torch.randn((args.batch, *e.shape), generator=gen) for e in examples]
        program = compile_cell(fn, cell, avals)
        calls = {"native": (_native(cell), operands),
                 "program": (program, operands),
                 "program (no hoist/merge)": (compile_cell(fn, cell, avals, options=CellOptions.all_off()), operands)}
        if name == "LSTMStep":
            # the recurrent part alone: the input projection ran earlier, once over all tokens
            split = split_program(program, {0})
            with torch.no_grad():
                projected = split.prefix([operands[0]], args.batch)
            calls["rest after split"] = (split.rest, [*projected, *operands[1:]])
        params = list(cell.parameters())
        for call, _ in calls.values():
            if hasattr(call, "begin_flush"):
                call.begin_flush()     # every repeat is a batch of one flush: hoisted values are shared
        for train in (False, True):
            res = measure(calls, args.batch, params, train, args.repeats)
            (base_min, base_med) = res["native"]
            cols = ", ".join(f"{k} {lo:.0f}/{med:.0f} us ({base_min / lo:.2f}x/{base_med / med:.2f}x)"
                             for k, (lo, med) in res.items())
            print(f"{name:26s} {'train' if train else 'infer'}: {cols}")


if __name__ == "__main__":
    main()
