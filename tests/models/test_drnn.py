"""DRNN tree generation: topology decisions from the model (fiber decisions inside recursion) give
the same trees, outputs and gradients as the eager model."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.models.drnn import DRNN, latent_codes
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DRNN(hidden=8, labels=5)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 8))
def test_generated_trees_match_eager(model, seed, count):
    codes = latent_codes(count, 8, seed)
    batcher = assert_matches_eager(model, codes)
    fs = batcher.stats.fibers
    assert fs.decision_rounds == max(fs.decisions, default=0)


def test_trees_differ_and_rounds_are_far_below_the_sum(model):
    codes = latent_codes(12, 8, 1)
    with torch.no_grad():
        sizes = [len(model(z)[1]) for z in codes]
        batcher = phalanx.Batcher(model)
        batcher(codes)
    fs = batcher.stats.fibers
    assert len(set(sizes)) > 2, sizes
    # Each round resumes every instance to its next decision: rounds = the most decisions of one
    # instance, not the total.
    assert fs.decision_rounds == max(fs.decisions) < sum(fs.decisions)


def test_gradients_through_generated_trees_match_eager(model):
    assert_matches_eager(model, latent_codes(6, 8, 2), params=list(model.parameters()), train=True)
