"""Branch alignment (frontend/align.py): ghost depth lets ops after uneven branches batch under the
depth policy, and never changes results."""
import random

import pytest
import torch

import phalanx
from phalanx.models.branchy import BranchyChain
from tests.oracle import assert_matches_eager


def chains(seed, count, length=10):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, generator=gen), [rng.randrange(10) for _ in range(rng.randrange(1, length))])
            for _ in range(count)]


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
def test_aligned_branches_match_eager(policy):
    torch.manual_seed(0)
    model = BranchyChain(6, aligned=True)
    assert_matches_eager(model, chains(1, 7), params=list(model.parameters()), policy=policy, train=True)


def test_alignment_saves_depth_batches():
    data = chains(2, 24, 12)
    batches = {}
    for aligned in (False, True):
        torch.manual_seed(0)
        batcher = phalanx.Batcher(BranchyChain(6, aligned=aligned))
        with torch.no_grad():
            batcher(data)
        batches[aligned] = (batcher.stats.batches, batcher.stats.lower_bound)
    assert batches[True][0] < batches[False][0]
    assert batches[True][0] >= batches[True][1]


def test_align_is_a_no_op_eagerly_and_checks_ops():
    h = torch.randn(3)
    assert phalanx.align(h, after=h, ops=2) is h
    lin = torch.nn.Linear(3, 3)

    def fn(x):
        return phalanx.align(lin(x), after=x, ops=-1)

    with pytest.raises(phalanx.InstanceError, match="ops must be >= 0"):
        phalanx.Batcher(fn)([torch.randn(3)])
