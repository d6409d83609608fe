"""Program phases (frontend/phase.py): nodes of different phases never share a batch under any
policy, depth restarts per phase, and results still match the eager loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import phalanx
from phalanx.schedule import FSMPolicy, make_policy, verify_schedule
from tests.oracle import assert_matches_eager


class EncodeDecode(torch.nn.Module):
    """An encoder chain of the instance's length, a fixed 3-step decoder in its own phase, then a
    readout back in the default phase that reads the decoder's values."""

    def __init__(self, dim=4):
        super().__init__()
        self.enc = torch.nn.Linear(2 * dim, dim)
        self.dec = torch.nn.Linear(dim, dim)
        self.read = torch.nn.Linear(dim, 1)

    def forward(self, xs):
        with phalanx.phase("encode"):
            h = torch.zeros(4)
            for x in xs:
                h = torch.tanh(self.enc(torch.cat([x, h])))
        outs = []
        with phalanx.phase("decode"):
            for _ in range(3):
                h = torch.tanh(self.dec(h))       # same op type as nothing in "encode", but see below
                outs.append(h)
                h = torch.tanh(self.enc(torch.cat([h, h])))   # the encoder's op type, in "decode"
        return self.read(torch.stack(outs)).sum()


def sentences(seed, count):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(4, generator=gen) for _ in range(int(n))]
            for n in torch.randint(1, 6, (count,), generator=gen)]


POLICIES = ["depth", "agenda", "fsm", "optimal"]


@pytest.mark.parametrize("policy", POLICIES)
def test_phases_never_share_a_batch(policy):
    torch.manual_seed(0)
    model = EncodeDecode()
    xs = sentences(1, 4 if policy == "optimal" else 6)
    graph = phalanx.Batcher(model).record(xs)
    assert len(np.unique(graph.node_phase)) == 3
    pol = FSMPolicy().fit([graph], max_episodes=50) if policy == "fsm" else make_policy(policy)
    schedule = pol.schedule(graph)
    verify_schedule(graph, schedule)
    for nodes in schedule.batches:
        assert len(np.unique(graph.node_phase[nodes])) == 1, "a batch mixes phases"
    assert_matches_eager(model, xs, params=list(model.parameters()), policy=pol, train=True)


def test_depth_restarts_per_phase():
    torch.manual_seed(0)
    model = EncodeDecode()
    xs = sentences(2, 5)
    assert len({len(x) for x in xs}) > 1
    graph = phalanx.Batcher(model).record(xs)
    decode = phalanx.frontend.phase.phase_rank("decode")
    # The first decoder node of every instance has one depth, however long its encoder was.
    first = [np.flatnonzero((graph.node_inst == i) & (graph.node_phase == decode))[0] for i in range(len(xs))]
    assert len(set(graph.node_depth[first].tolist())) == 1
    # ...and it is deeper than every encoder node (phases of higher rank run later).
    encode = phalanx.frontend.phase.phase_rank("encode")
    assert graph.node_depth[first].min() > graph.node_depth[graph.node_phase == encode].max()


def test_phase_is_a_no_op_eagerly_and_kept_across_fiber_rounds():
    lin = torch.nn.Linear(3, 3)

    def fn(x):
        with phalanx.phase("decode"):
            h, n = torch.tanh(lin(x)), 0
            while h.sum() > -0.5 and n < 5:   # suspends inside the phase
                h, n = torch.tanh(lin(h)) * 0.5, n + 1
        return h + 1

    xs = [torch.randn(3) for _ in range(5)]
    assert_matches_eager(fn, xs)
    assert_matches_eager(fn, xs, params=list(lin.parameters()), train=True)


def test_phase_name_must_be_a_string():
    with pytest.raises(TypeError, match="str"):
        with phalanx.phase(3):
            pass
