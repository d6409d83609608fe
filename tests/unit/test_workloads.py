"""Every registered benchmark workload is wired consistently: on its first mini-batch, eager,
manual and phalanx compute the same total (inference and training losses) from the same weights."""
import importlib.util

import pytest
import torch

import phalanx
from phalanx.bench.workloads import WORKLOADS


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_eager_manual_and_phalanx_agree_on_the_first_batch(name, train):
    if name in ("lattice_gru", "lattice_lstm") and importlib.util.find_spec("jieba") is None:
        pytest.skip("the jieba lexicon is not installed")
    workload = WORKLOADS[name](3, 8, 1)
    batch = workload.batches[0]
    # Models that decide on their own values (fibers) have no held-out graphs: fsm does not apply.
    assert len(batch) == 3 and len(workload.held_out) == (0 if workload.decides else 4)
    totals = []
    with torch.set_grad_enabled(train):
        for build in (workload.eager, workload.manual):
            run, _ = build(workload.copy_model(), train)
            totals.append(workload.reduce(run(batch)))
        fn = workload.phalanx_fn(workload.copy_model(), train)
        totals.append(workload.reduce(phalanx.Batcher(fn)(batch)))
    for total in totals[1:]:
        torch.testing.assert_close(total.detach(), totals[0].detach(), rtol=1e-4, atol=1e-4)
