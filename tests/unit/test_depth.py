"""The depth policy's grouping sort (schedule/depth.py, ``_group_order``): the same node order as
the three-key ``np.lexsort`` it replaces, and group keys that change exactly where (depth, phase,
op type) does, for small key ranges (the 16-bit radix sort), wide ones (int64 keys) and huge ones
(the lexsort fallback)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.schedule.depth import _group_order


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300),
       scale=st.sampled_from([(5, 1, 4), (60, 2, 12), (5000, 3, 40), (2 ** 40, 2 ** 12, 2 ** 12)]))
def test_group_order_is_the_lexsort(seed, n, scale):
    rng = np.random.default_rng(seed)
    depth, phase, sig = (rng.integers(-1, high, n) for high in scale)
    order, key = _group_order(depth, phase, sig)
    assert order.tolist() == np.lexsort((sig, phase, depth)).tolist()
    triple = np.stack([depth[order], phase[order], sig[order]])
    changes = (triple[:, 1:] != triple[:, :-1]).any(axis=0)
    assert ((key[1:] != key[:-1]) == changes).all()
