"""The pipeline on CUDA: the oracle (outputs and gradients equal eager on the same GPU) for the zoo's
core models and every policy, and no device-to-host synchronization inside a flush. Skipped
cleanly without a CUDA device (CI is CPU-only); run on a GPU machine with `python -m pytest tests/gpu`."""
import pytest
import torch

import phalanx
from phalanx.data import synthetic
from phalanx.models import BiLSTMTagger, TreeLSTM
from tests.oracle import assert_matches_eager

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
VOCAB = 50


def _trees(n, seed=0):
    return synthetic.random_trees(n, seed, VOCAB)


def _sentences(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(VOCAB, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
@pytest.mark.parametrize("train", [False, True])
def test_treelstm_on_cuda_matches_eager(policy, train):
    torch.manual_seed(0)
    model = TreeLSTM(VOCAB, 32, embed_dim=16).cuda()
    trees = _trees(12)
    fn = model.loss if train else model
    instances = [(t, i % 17) for i, t in enumerate(trees)] if train else trees
    batcher = phalanx.Batcher(fn, policy=policy, verify=True)
    assert_matches_eager(fn, instances, params=model.parameters(), train=train, batcher=batcher)
    assert batcher._device().type == "cuda"


@pytest.mark.parametrize("policy", ["depth", "agenda", "fsm"])
@pytest.mark.parametrize("train", [False, True])
def test_tagger_on_cuda_matches_eager(policy, train):
    torch.manual_seed(0)
    model = BiLSTMTagger(VOCAB, 32, embed_dim=16).cuda()
    sentences = _sentences(10)
    fn = model.loss if train else model
    instances = [(s, [w % 17 for w in s]) for s in sentences] if train else sentences
    assert_matches_eager(fn, instances, params=model.parameters(), train=train,
                         batcher=phalanx.Batcher(fn, policy=policy, verify=True))


@pytest.mark.parametrize("train", [False, True])
def test_no_synchronization_inside_a_flush(train):
    torch.manual_seed(0)
    model = TreeLSTM(VOCAB, 32, embed_dim=16).cuda()
    batcher = phalanx.Batcher(model)
    trees = _trees(16, seed=1)
    with torch.set_grad_enabled(train):
        batcher(trees)                        # first call: kernel probes may synchronize
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            outs = batcher(trees)             # steady state: no device-to-host read in the flush
        finally:
            torch.cuda.set_sync_debug_mode("default")
    if train:
        torch.stack(outs).sum().backward()


def test_instances_on_the_cpu_for_a_cuda_model_name_both_devices():
    model = torch.nn.Linear(3, 3).cuda()
    with pytest.raises(phalanx.PhalanxError, match="on cpu but the model is on cuda"):
        phalanx.Batcher(lambda x: model(x), device="cuda")([torch.zeros(3)])
