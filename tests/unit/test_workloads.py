"""Every registered benchmark workload is wired consistently: on its first mini-batch, eager,
manual and phalanx compute the same total (inference and training losses) from the same weights."""
import pytest
import torch

import phalanx
from phalanx.bench.workloads import WORKLOADS


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_eager_manual_and_phalanx_agree_on_the_first_batch(name, train):
    if name.startswith("lattice_gru") or name == "lattice_lstm":
        pytest.importorskip("jieba")
    workload = WORKLOADS[name](3, 8, 1)
    batch = workload.batches[0]
    assert len(batch) == 3 and len(workload.held_out) == 4
    totals = []
    with torch.set_grad_enabled(train):
        for build in (workload.eager, workload.manual):
            run, _ = build(workload.copy_model(), train)
            totals.append(workload.reduce(run(batch)))
        fn = workload.phalanx_fn(workload.copy_model(), train)
        totals.append(workload.reduce(phalanx.Batcher(fn)(batch)))
    for total in totals[1:]:
        torch.testing.assert_close(total.detach(), totals[0].detach(), rtol=1e-4, atol=1e-4)
