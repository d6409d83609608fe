"""End to end through the real executor: cell programs installed as signature kernels give the same
results and parameter gradients as the per-instance model (TreeLSTM and the BiLSTM tagger)."""
import pytest
import torch

import phalanx
from phalanx.cells import CellOptions
from phalanx.cells.kernel import CellKernel, install
from phalanx.data import synthetic
from phalanx.models import TreeLSTM
from phalanx.models.tagger import BiLSTMTagger

from ..oracle import assert_matches_eager


def install_all(batcher, modules, options):
    count = 0
    for sig in batcher.table.sigs:
        if sig.name in modules:
            install(sig, modules[sig.name], options)
            count += 1
    return count


# sparse_grads off: the executor does not densify parameter gradients yet (see cells/kernel.py)
@pytest.mark.parametrize("options", [CellOptions(sparse_grads=False), CellOptions.all_off()], ids=["on", "off"])
def test_treelstm_with_cell_programs_matches_eager(options):
    torch.manual_seed(0)
    model = TreeLSTM(30, 8, embed_dim=4)
    trees = [(t, i % 5) for i, t in enumerate(synthetic.random_trees(6, 0, 30))]
    batcher = phalanx.Batcher(model.loss, verify=True, cells=False)   # install() by hand, below
    assert_matches_eager(model.loss, trees, params=model.parameters(), train=True, batcher=batcher)
    names = {"cell TreeLSTMLeaf": model.leaf, "cell TreeLSTMInternal": model.internal,
             "cell RootClassifier": model.classifier}
    assert install_all(batcher, names, options) == 3
    assert_matches_eager(model.loss, trees, params=model.parameters(), train=True, batcher=batcher)
    assert_matches_eager(model.loss, trees[:1], params=model.parameters(), train=True, batcher=batcher)
    assert_matches_eager(model.loss, trees, batcher=batcher)
    kernels = [s.kernel for s in batcher.table.sigs if s.name in names]
    assert all(isinstance(k, CellKernel) and k.calls > 0 for k in kernels)


def test_tagger_with_cell_programs_matches_eager():
    torch.manual_seed(0)
    model = BiLSTMTagger(20, 6, embed_dim=4, num_tags=5)
    gen = torch.Generator().manual_seed(0)
    sentences = [([int(w) for w in torch.randint(20, (n,), generator=gen)],
                  [int(t) for t in torch.randint(5, (n,), generator=gen)]) for n in (1, 4, 2, 7)]
    batcher = phalanx.Batcher(model.loss, verify=True, cells=False)   # install() by hand, below
    assert_matches_eager(model.loss, sentences, params=model.parameters(), train=True, batcher=batcher)
    names = {"cell Embed": model.embed, "cell LSTMStep": None, "cell TagScorer": model.scorer}
    for sig in batcher.table.sigs:
        if sig.name == "cell LSTMStep":      # two modules, one class: the path tells them apart
            install(sig, model.fwd if sig.path == "fwd" else model.bwd, CellOptions(sparse_grads=False))
        elif sig.name in names:
            install(sig, names[sig.name], CellOptions(sparse_grads=False))
    kernels = [s.kernel for s in batcher.table.sigs if isinstance(s.kernel, CellKernel)]
    assert len(kernels) >= 4
    assert_matches_eager(model.loss, sentences, params=model.parameters(), train=True, batcher=batcher)
    assert all(k.calls > 0 for k in kernels)
