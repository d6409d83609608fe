"""Batched == eager (outputs and parameter gradients) for both models, both policies, cell-level
and op-level code, over hypothesis-generated trees and chains, including 0 and 1 instances."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.data import synthetic
from phalanx.models import BiLSTMTagger, ManualTagger, TreeLSTM, manual_treelstm
from phalanx.schedule.fsm import FSMPolicy
from tests.oracle import assert_matches_eager, reused_batcher

POLICIES = ["depth", "agenda", "fsm"]
PLANS = [False, "auto"]
VOCAB, HIDDEN = 50, 8


def _trees(seed, sizes):
    rng = synthetic.as_generator(seed)
    return [synthetic.random_binary_tree(n, rng, VOCAB) for n in sizes]


tree_batches = st.builds(_trees, st.integers(0, 2**31), st.lists(st.integers(1, 9), min_size=0, max_size=6))
chain_batches = st.lists(st.tuples(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=7),
                                   st.integers(0, 2**31)), min_size=0, max_size=6).map(
    lambda rows: [(words, [(s + i) % 17 for i in range(len(words))]) for words, s in rows])


@pytest.fixture(scope="module")
def treelstm():
    torch.manual_seed(0)
    return TreeLSTM(VOCAB, HIDDEN, embed_dim=6)


@pytest.fixture(scope="module")
def tagger():
    torch.manual_seed(1)
    return BiLSTMTagger(VOCAB, HIDDEN, embed_dim=5)


def _fsm(fn, samples):
    # Learned once on sample mini-batches; op types a random structure shows that the samples did
    # not (possible for tiny batches) fall back to greedy instead of failing.
    policy = FSMPolicy.train(fn, samples, max_episodes=200)
    policy.unknown_types = "fallback"
    return policy


@pytest.fixture(scope="module")
def fsm_policies(treelstm, tagger):
    trees = [_trees(s, [1, 2, 5, 8, 3]) for s in range(3)]
    chains = [[[(s + i) % VOCAB for i in range(n)] for n in (1, 3, 6, 2)] for s in range(3)]
    tagged = [[(w, [0] * len(w)) for w in batch] for batch in chains]
    return {"treelstm": _fsm(treelstm, trees), "treelstm.loss": _fsm(treelstm.loss, [list(zip(t, range(5))) for t in trees]),
            "tagger": _fsm(tagger, chains), "tagger.loss": _fsm(tagger.loss, tagged)}


def _policy(policy, fsm_policies, key):
    return fsm_policies[key] if policy == "fsm" else policy


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("train", [False, True])
@settings(max_examples=30, deadline=None)
@given(trees=tree_batches, seed=st.integers(0, 16))
def test_treelstm_matches_eager(treelstm, fsm_policies, policy, train, plan, trees, seed):
    labels = [(seed + i) % 17 for i in range(len(trees))]
    fn = treelstm.loss if train else treelstm
    policy = _policy(policy, fsm_policies, "treelstm.loss" if train else "treelstm")
    assert_matches_eager(fn, list(zip(trees, labels)) if train else trees, params=treelstm.parameters(),
                         train=train, batcher=phalanx.Batcher(fn, policy=policy, plan=plan, verify=True))


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("train", [False, True])
@settings(max_examples=30, deadline=None)
@given(examples=chain_batches)
def test_tagger_matches_eager(tagger, fsm_policies, policy, train, plan, examples):
    fn = tagger.loss if train else tagger
    policy = _policy(policy, fsm_policies, "tagger.loss" if train else "tagger")
    instances = examples if train else [w for w, _ in examples]
    assert_matches_eager(fn, instances, params=tagger.parameters(), train=train,
                         batcher=phalanx.Batcher(fn, policy=policy, plan=plan, verify=True))


def _dense_grads(params):
    return [None if p.grad is None else p.grad.to_dense() for p in params]


@settings(max_examples=25, deadline=None)
@given(trees=tree_batches, seed=st.integers(0, 16))
def test_manual_treelstm_matches_eager(treelstm, trees, seed):
    # The benchmark's hand-batched baseline (hand-written backward, sparse embedding gradient).
    labels = [(seed + i) % 17 for i in range(len(trees))]
    with torch.no_grad():
        expected = torch.stack([treelstm(t) for t in trees]) if trees else torch.zeros(0, 17)
        torch.testing.assert_close(manual_treelstm(treelstm, trees), expected, rtol=1e-4, atol=1e-5)
    if not trees:
        return
    params = list(treelstm.parameters())
    treelstm.zero_grad()
    manual_treelstm(treelstm, trees, labels).sum().backward()
    got = _dense_grads(params)
    treelstm.zero_grad()
    torch.stack([treelstm.loss(x) for x in zip(trees, labels, strict=True)]).sum().backward()
    for g, p in zip(got, params, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    treelstm.zero_grad()


@settings(max_examples=25, deadline=None)
@given(examples=chain_batches)
def test_manual_tagger_matches_eager(tagger, examples):
    baseline = ManualTagger(tagger)
    words = [w for w, _ in examples]
    with torch.no_grad():
        expected = [l for w in words for l in tagger(w)]
        torch.testing.assert_close(baseline(words), torch.stack(expected) if expected else torch.zeros(0, 17),
                                   rtol=1e-4, atol=1e-5)
    if not examples:
        return
    baseline(words, [t for _, t in examples]).sum().backward()
    tagger.zero_grad()
    torch.stack([l for ex in examples for l in tagger.loss(ex)]).sum().backward()
    pairs = [(baseline.embed.weight, tagger.embed.table.weight), (baseline.lstm.weight_ih_l0, tagger.fwd.lstm.weight_ih),
             (baseline.lstm.bias_hh_l0_reverse, tagger.bwd.lstm.bias_hh), (baseline.out.bias, tagger.scorer.out.bias)]
    for got, expected in pairs:
        torch.testing.assert_close(got.grad.to_dense(), expected.grad, rtol=1e-4, atol=1e-5)
    tagger.zero_grad()


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=40, deadline=None)
@given(trees=tree_batches, mode=st.sampled_from(["train", "no_grad", "inference_mode", "eval"]))
def test_one_batcher_reused_across_examples_and_grad_modes(treelstm, fsm_policies, policy, trees, mode):
    # One Batcher for every example of this test: grad modes, train / eval and structures change
    # between its calls, as in a training script with validation passes.
    batcher = reused_batcher(treelstm, policy=_policy(policy, fsm_policies, "treelstm"))
    treelstm.train(mode != "eval")
    try:
        assert_matches_eager(treelstm, trees, params=treelstm.parameters(), train=mode == "train", batcher=batcher,
                             grad_mode="inference_mode" if mode == "inference_mode" else "no_grad")
    finally:
        treelstm.train()


class OpLevelTreeRNN(torch.nn.Module):
    """No cells at all: every op on lazy values is recorded at op level. Instances are nested
    tuples of leaf feature tensors (which phalanx turns into lazy values)."""

    def __init__(self, dim=4):
        super().__init__()
        self.combine = torch.nn.Linear(2 * dim, dim)
        self.mix = torch.nn.Parameter(torch.randn(dim, dim) * 0.3)

    def forward(self, node):
        if isinstance(node, tuple):
            a, b = self(node[0]), self(node[1])
            h = torch.tanh(self.combine(torch.cat([a, b])))      # cat along dim 0: needs vmap
            return h + (self.mix @ a) * 0.5 - b[1:3].sum()       # matmul, indexing, reduction
        return torch.sigmoid(node) * 2 - 1


class _QuickFSM(FSMPolicy):
    """Self-training with fewer episodes: these tests check batching under fsm schedules, not how
    good the learned schedule is (tests/unit/test_fsm.py does that)."""

    def fit(self, graphs, **options):
        return super().fit(graphs, **{"max_episodes": 100, **options})


def _nested(rng, size, dim=4):
    if size <= 1:
        return torch.randn(dim, generator=rng)
    k = int(torch.randint(1, size, (1,), generator=rng))
    return (_nested(rng, k, dim), _nested(rng, size - k, dim))


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("train", [False, True])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), sizes=st.lists(st.integers(1, 6), min_size=0, max_size=5))
def test_op_level_code_matches_eager(policy, train, plan, seed, sizes):
    if policy == "fsm":
        policy = _QuickFSM(unknown_types="fallback")   # trains itself on its first (this) call
    torch.manual_seed(3)
    model = OpLevelTreeRNN()
    rng = torch.Generator().manual_seed(seed)
    instances = [_nested(rng, n) for n in sizes]
    assert_matches_eager(model, instances, params=model.parameters(), train=train,
                         batcher=phalanx.Batcher(model, policy=policy, plan=plan, verify=True))


def test_same_model_object_runs_eagerly_and_batched(treelstm):
    # Outside phalanx the model is its own reference; inside, the same object batches.
    trees = _trees(7, [1, 3, 5])
    with torch.no_grad():
        eager = [treelstm(t) for t in trees]
    assert_matches_eager(treelstm, trees)
    with torch.no_grad():
        again = [treelstm(t) for t in trees]
    for a, b in zip(eager, again, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("policy", ["depth", "agenda"])
def test_zero_and_one_instances(treelstm, policy):
    import phalanx
    batcher = phalanx.Batcher(treelstm, policy=policy)
    assert batcher([]) == []
    assert batcher.stats.nodes == 0 and batcher.stats.batches == 0
    assert_matches_eager(treelstm, _trees(3, [4]), policy=policy)
    assert_matches_eager(treelstm.loss, [(_trees(4, [1])[0], 3)], params=treelstm.parameters(), policy=policy,
                         train=True)


def test_input_tensors_requiring_grad_get_gradients():
    torch.manual_seed(5)
    model = OpLevelTreeRNN()
    leaves = [torch.randn(4, requires_grad=True) for _ in range(5)]
    instances = [(leaves[0], (leaves[1], leaves[2])), leaves[3], (leaves[4], leaves[0])]
    eager = sum(model(x).sum() for x in instances)
    expected = torch.autograd.grad(eager, leaves)
    import phalanx
    got = phalanx.Batcher(model)(instances)
    grads = torch.autograd.grad(sum(g.sum() for g in got), leaves)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["vmap", "native"])
@settings(max_examples=8, deadline=None)
@given(trees=tree_batches)
def test_forced_kernel_modes_match_eager(treelstm, mode, trees):
    # Every cell of the TreeLSTM is batch-polymorphic, so both forced modes must be exact.
    from phalanx.models import treelstm as treelstm_module

    classes = (treelstm_module.TreeLSTMLeaf, treelstm_module.TreeLSTMInternal, treelstm_module.RootClassifier)
    saved = [c._phalanx_batching for c in classes]
    try:
        for c in classes:
            c._phalanx_batching = mode
        batcher = phalanx.Batcher(treelstm, verify=True)
        assert_matches_eager(treelstm, trees, batcher=batcher)
        assert all(s.kernel.mode == mode for s in batcher.table.sigs if s.kernel is not None and s.name != "input")
    finally:
        for c, m in zip(classes, saved, strict=True):
            c._phalanx_batching = m
