"""The diagnosis finds what a model was built to get wrong, and stays quiet when it is not there."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.debug import diagnose as diagnose_mod

DIM = 6


@phalanx.cell
class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(50, DIM)

    def forward(self, word):
        return self.table(word)


@phalanx.cell
class Attend(nn.Module):
    """Attention pooling over a sentence's embeddings: ``keys`` is [length, DIM], so every length
    is its own op type (the fragmentation the diagnosis must find)."""

    def __init__(self, softmax_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(DIM))
        self.softmax_dim = softmax_dim     # 0 is right for one sentence but not batch-polymorphic

    def forward(self, keys):
        weights = torch.softmax(keys @ self.query, dim=self.softmax_dim)
        return (weights.unsqueeze(-1) * keys).sum(dim=-2)


class Pooler(nn.Module):
    def __init__(self, softmax_dim: int = 0):
        super().__init__()
        self.embed, self.attend = Embed(), Attend(softmax_dim)

    def forward(self, words):
        # cat of [1, DIM] rows, not torch.stack: a stack passed to a cell is one ragged op type for
        # every length (NOTE: [Ragged operands]), and this model must fragment.
        return self.attend(torch.cat([self.embed(w).unsqueeze(0) for w in words]))


def _sentences(lengths):
    return [[(7 * i + k) % 50 for k in range(n)] for i, n in enumerate(lengths)]


def _findings(model, sentences, **options):
    torch.manual_seed(0)
    with torch.no_grad():
        return phalanx.Batcher(model, **options).explain(sentences).findings


def test_finds_op_types_split_by_sequence_length():
    findings = _findings(Pooler(), _sentences([1, 2, 3, 4, 5, 6] * 2))
    frag = [f for f in findings if f.kind == "shape-fragmentation"]
    attend = [f for f in frag if "cell Attend" in f.message]
    assert len(attend) == 1, [f.message for f in findings]
    assert "6 op types that differ only in operand shapes (operand 0 dim 0: 1..6)" in attend[0].message
    assert "6 batches instead of ~1" in attend[0].message
    assert attend[0].cost_s > 0
    stack = [f for f in frag if "op torch.cat" in f.message]
    assert len(stack) == 1 and "operand count: 1..6" in stack[0].message
    assert [f.cost_s for f in findings] == sorted((f.cost_s for f in findings), reverse=True)


def test_no_fragmentation_when_every_sentence_has_one_length():
    findings = _findings(Pooler(), _sentences([4] * 8))
    assert not [f for f in findings if f.kind == "shape-fragmentation"]


@pytest.mark.parametrize("softmax_dim, expect_vmap", [(0, True), (-1, False)])
def test_reports_a_cell_that_fell_back_to_vmap(softmax_dim, expect_vmap):
    findings = _findings(Pooler(softmax_dim), _sentences([3] * 4), cells=False)   # the probe's choice
    vmap = [f for f in findings if f.kind == "vmap-fallback" and "cell Attend" in f.message]
    assert bool(vmap) == expect_vmap
    # torch.cat(..., dim=0) over one sentence's embeddings runs natively with its dim shifted past
    # the batch dimension (rules/dims.py), so it is never reported as a vmap fallback.
    assert not any(f.kind == "vmap-fallback" and f.message.startswith("op torch.cat") for f in findings)
    if expect_vmap:
        assert vmap[0].message.startswith("cell Attend fell back to vmap:") and vmap[0].cost_s > 0


def test_gathers_are_measured_and_the_planner_is_suggested():
    @phalanx.cell
    class Node(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(2 * DIM, DIM)

        def forward(self, left, right):
            return torch.tanh(self.mix(torch.cat([left, right], dim=-1)))

    class TreeRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.node = Embed(), Node()

        def forward(self, tree):
            if isinstance(tree, int):
                return self.embed(tree)
            return self.node(self(tree[0]), self(tree[1]))

    trees = [((1, 2), (3, (4, 5))), (6, (7, 8)), (((9, 10), 11), 12)]
    with torch.no_grad():
        findings = phalanx.Batcher(TreeRNN()).explain(trees).findings
    gathers = [f for f in findings if f.kind == "gathers"]
    assert len(gathers) == 1 and gathers[0].cost_s > 0 and "plan='auto'" in gathers[0].action



def test_same_named_cells_with_equal_shapes_are_not_fragmentation():
    class TwoChains(nn.Module):
        """Two cells of one class (no model path: the Batcher gets a plain function) read the same shapes."""

        def __init__(self):
            super().__init__()
            self.embed, self.first, self.second = Embed(), Attend(-1), Attend(-1)

        def forward(self, words):
            keys = torch.stack([self.embed(w) for w in words], dim=-2)
            return self.first(keys) + self.second(keys)

    model = TwoChains()
    with torch.no_grad():
        findings = phalanx.Batcher(lambda words: model(words)).explain(_sentences([3] * 4)).findings
    assert not [f for f in findings if f.kind == "shape-fragmentation"]


def test_reports_a_cell_that_could_not_be_traced():
    scale = torch.ones(DIM)

    @phalanx.cell
    def scaled(x):
        return torch.tanh(x * scale)          # a closure tensor: not traceable ahead of time

    with torch.no_grad():
        findings = phalanx.Batcher(lambda x: scaled(x), cells=True).explain([torch.randn(DIM) for _ in range(4)]).findings
    untraced = [f for f in findings if f.kind == "untraced-cell"]
    assert len(untraced) == 1 and "cell scaled" in untraced[0].message and "closure" in untraced[0].message


@pytest.mark.parametrize("per_member", [True, False])
def test_reports_a_ragged_cell_without_a_reduced_form(per_member):
    # NOTE: [Reduced ragged programs]: a cell that uses each member of its stacked argument (not
    # only its sum or mean) keeps the segment kernel; the diagnosis says why.
    @phalanx.cell
    def pool(hs):
        return (torch.sigmoid(hs) if per_member else hs).sum(-2)

    embed = Embed()

    def fn(n):
        return pool(torch.stack([embed(k) for k in range(n)]))

    batcher = phalanx.Batcher(fn)
    with torch.no_grad():
        findings = batcher.explain([2, 3, 4, 5]).findings
    ragged = [f for f in findings if f.kind == "untraced-cell" and "reduced form" in f.message]
    assert len(ragged) == int(per_member)
    modes = {s.meta["kernel"].mode for s in batcher.table.sigs if "ragged" in s.meta}
    assert modes == ({"ragged-segment"} if per_member else {"ragged-reduced"})
    if per_member:
        assert "sigmoid" in ragged[0].message
