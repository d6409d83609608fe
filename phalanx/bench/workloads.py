"""Benchmark workloads: a model on built-in data with its eager, manual and phalanx entry points.

Every implementation of one workload runs on the same instances with the same initial weights
(each gets its own copy of the model so training steps do not leak between them)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..api import Batcher
from ..models import berxit as berxit_mod
from ..models import drnn as drnn_mod
from ..models import nmt as nmt_mod
from ..models import stackrnn as stackrnn_mod
from ..models import childsum as childsum_mod
from ..models import dag as dag_mod
from ..models import lattice as lattice_mod
from ..models import mvrnn as mvrnn_mod
from ..models import nested as nested_mod
from ..models import tagger as tagger_mod
from ..models import treegru as treegru_mod
from ..models import treelstm as treelstm_mod
from ..models import twotype as twotype_mod


@dataclass
class Workload:
    """``batches``: lists of instances. ``eager(model, train)`` / ``manual(model, train)`` return
    ``(run, trained_module)``: ``run(batch)`` gives the batch's results and ``trained_module`` owns
    the parameters an optimizer steps. ``phalanx_fn(model, train)`` is the per-instance function."""

    name: str
    batches: list[list[Any]]
    held_out: list[list[Any]]          # further mini-batches, never timed: policy training samples
    model: torch.nn.Module
    eager: Callable[[torch.nn.Module, bool], Callable]
    manual: Callable[[torch.nn.Module, bool], Callable]
    phalanx_fn: Callable[[torch.nn.Module, bool], Callable]
    reduce: Callable[[Any], torch.Tensor]
    # Models with tensor-dependent control flow (fibers) compare against "no-fibers": phalanx on one
    # instance at a time, i.e. a flush at every decision of every instance, instead of a manual baseline.
    baseline_name: str = "manual"
    decides: bool = False

    def copy_model(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)


def _sum_all(results) -> torch.Tensor:
    """Total over a batch's results: every floating-point tensor in them (a loss, per-token losses,
    or a decoder's (tokens, scores) structure), summed."""
    flat = [t.sum() for t in torch.utils._pytree.tree_leaves(results)
            if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return torch.stack(flat).sum() if flat else torch.zeros(())


def _eager(m, train):
    """The per-instance loop: the model itself, one example at a time."""
    if train:
        return (lambda batch: [m.loss(x) for x in batch]), m
    return (lambda batch: [m(x[0]) for x in batch]), m


def _phalanx_fn(m, train):
    """What phalanx batches: the same per-instance entry point as ``_eager``."""
    return m.loss if train else (lambda example: m(example[0]))


def _chunks(items, size, count, skip=0):
    return [items[i * size:(i + 1) * size] for i in range(skip, skip + count) if (i + 1) * size <= len(items)]


HELD_OUT = 4


def treelstm(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    examples, vocab = treelstm_mod.ewt_examples("dev")
    torch.manual_seed(seed)
    model = treelstm_mod.TreeLSTM(len(vocab), hidden)

    def manual(m, train):
        if train:
            return (lambda batch: [treelstm_mod.manual_treelstm(m, [t for t, _ in batch], [y for _, y in batch])]), m
        return (lambda batch: [treelstm_mod.manual_treelstm(m, [t for t, _ in batch])]), m

    return Workload("treelstm", _chunks(examples, batch_size, num_batches),
                    _chunks(examples, batch_size, HELD_OUT, num_batches), model, _eager, manual, _phalanx_fn, _sum_all)


def tagger(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    examples, vocab = tagger_mod.ewt_examples("dev")
    torch.manual_seed(seed)
    model = tagger_mod.BiLSTMTagger(len(vocab), hidden)

    def manual(m, train):
        baseline = tagger_mod.ManualTagger(m)
        baseline.train(train)
        if train:
            return (lambda batch: [baseline([w for w, _ in batch], [t for _, t in batch])]), baseline
        return (lambda batch: [baseline([w for w, _ in batch])]), baseline

    def reduce(results):
        flat = [t.reshape(-1) for r in results for t in (r if isinstance(r, list) else [r])]
        return torch.cat(flat).sum() if flat else torch.zeros(())

    return Workload("tagger", _chunks(examples, batch_size, num_batches),
                    _chunks(examples, batch_size, HELD_OUT, num_batches), model, _eager, manual, _phalanx_fn, reduce)


def _flat_sum(results) -> torch.Tensor:
    """Total of per-token results (lists of tensors, or one tensor of all tokens)."""
    flat = [t.reshape(-1) for r in results for t in (r if isinstance(r, list) else [r])]
    return torch.cat(flat).sum() if flat else torch.zeros(())


def _tree_workload(name, examples, model, manual_fn, batch_size, num_batches):
    """A tree model whose instances are ``(tree, label)`` and whose manual is ``manual_fn(m, trees[, labels])``."""
    def manual(m, train):
        if train:
            return (lambda batch: [manual_fn(m, [t for t, _ in batch], [y for _, y in batch])]), m
        return (lambda batch: [manual_fn(m, [t for t, _ in batch])]), m

    return Workload(name, _chunks(examples, batch_size, num_batches),
                    _chunks(examples, batch_size, HELD_OUT, num_batches), model, _eager, manual, _phalanx_fn, _sum_all)


def childsum(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    """Child-sum TreeLSTM over EWT dependency trees as they are (variable arity)."""
    examples, vocab = childsum_mod.ewt_examples("dev")
    torch.manual_seed(seed)
    return _tree_workload("childsum", examples, childsum_mod.ChildSumTreeLSTM(len(vocab), hidden),
                          childsum_mod.manual_childsum, batch_size, num_batches)


def treegru(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    examples, vocab = treelstm_mod.ewt_examples("dev")
    torch.manual_seed(seed)
    return _tree_workload("treegru", examples, treegru_mod.TreeGRU(len(vocab), hidden),
                          treegru_mod.manual_treegru, batch_size, num_batches)


def mvrnn(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    """MV-RNN (sizes 64 / 128 in DESIGN: every node carries a hidden x hidden matrix)."""
    examples, vocab = treelstm_mod.ewt_examples("dev")
    torch.manual_seed(seed)
    return _tree_workload("mvrnn", examples, mvrnn_mod.MVRNN(len(vocab), hidden),
                          mvrnn_mod.manual_mvrnn, batch_size, num_batches)


def twotype(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    examples, vocab, function_labels = twotype_mod.ewt_examples("dev")
    torch.manual_seed(seed)
    return _tree_workload("twotype", examples, twotype_mod.TwoTypeTreeLSTM(len(vocab), function_labels, hidden),
                          twotype_mod.manual_twotype, batch_size, num_batches)


def dag(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    """DAG-RNN over synthetic DAGs with 3 node kinds (EWT-like sizes)."""
    examples = dag_mod.synthetic_examples(batch_size * (num_batches + HELD_OUT), seed)
    torch.manual_seed(seed)
    return _tree_workload("dag", examples, dag_mod.DagRNN(1000, hidden), dag_mod.manual_dag, batch_size, num_batches)


def nested(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    """NestedRNN: character LSTM per word feeding a word LSTM, per-token UPOS (EWT)."""
    examples, chars = nested_mod.ewt_examples("dev")
    torch.manual_seed(seed)
    model = nested_mod.NestedRNN(len(chars), hidden)

    def manual(m, train):
        baseline = nested_mod.ManualNestedRNN(m)
        if train:
            return (lambda batch: [baseline([w for w, _ in batch], [t for _, t in batch])]), m
        return (lambda batch: [baseline([w for w, _ in batch])]), m

    return Workload("nested", _chunks(examples, batch_size, num_batches),
                    _chunks(examples, batch_size, HELD_OUT, num_batches), model, _eager, manual, _phalanx_fn, _flat_sum)


def _lattice_workload(name, lattices, model, batch_size, num_batches):
    def eager(m, train):
        return (lambda batch: [(m.loss if train else m)(x) for x in batch]), m

    def manual(m, train):
        return (lambda batch: [lattice_mod.manual_lattice(m, batch, labels=train)]), m

    def phalanx_fn(m, train):
        return m.loss if train else m

    return Workload(name, _chunks(lattices, batch_size, num_batches),
                    _chunks(lattices, batch_size, HELD_OUT, num_batches), model, eager, manual, phalanx_fn, _flat_sum)


def _chinese_lattice(kind):
    def build(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
        lattices, chars = lattice_mod.chinese_examples()
        torch.manual_seed(seed)
        return _lattice_workload(f"lattice_{kind}", lattices, lattice_mod.LatticeRNN(len(chars), hidden, kind=kind),
                                 batch_size, num_batches)
    build.__doc__ = f"Lattice-{kind.upper()} over Chinese UD sentences with jieba word arcs."
    return build


def lattice_gru_synthetic(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    """Lattice-GRU over synthetic lattices (EWT-like lengths, random word arcs)."""
    from ..data.synthetic import random_lattices

    lattices = random_lattices(batch_size * (num_batches + HELD_OUT), seed, 1000)
    torch.manual_seed(seed)
    return _lattice_workload("lattice_gru_synthetic", lattices, lattice_mod.LatticeRNN(1000, hidden, kind="gru"),
                             batch_size, num_batches)


def _no_fibers(m, train):
    """Phalanx without fibers' cross-instance rounds: each instance alone, flushing at each of its
    decisions (what one could do before fibers: sum, not max, of the decision points)."""
    batcher = Batcher(_phalanx_fn(m, train))
    return (lambda batch: [batcher([x])[0] for x in batch]), m


def _most_varied(candidates, outcome):
    """The candidate setting whose outcomes over a few held-out instances are most varied."""
    return max(candidates, key=lambda c: (len(set(outcome(c))), -abs(c)))


def nmt(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    examples, src_vocab, tgt_vocab = nmt_mod.pud_examples(max_len=32)
    torch.manual_seed(seed)
    model = nmt_mod.NMT(len(src_vocab), len(tgt_vocab), hidden)
    held = examples[-16:]
    # Untrained weights would decode every sentence to the length limit: sharpen the output layer
    # and set the <eos> bias so greedy lengths vary over held-out sentences as real ones do.
    with torch.no_grad():
        model.decoder.out.weight.mul_(4.0)
        base = float(model.decoder.out.bias[model.eos])

        def lengths(bias):
            model.decoder.out.bias[model.eos] = base + bias
            return [len(model(src)[0]) for src, _ in held]

        model.decoder.out.bias[model.eos] = base + _most_varied([0.25 * k for k in range(13)], lengths)
    return Workload("nmt", _chunks(examples, batch_size, num_batches), [], model, _eager, _no_fibers, _phalanx_fn,
                    _sum_all, baseline_name="no-fibers", decides=True)


def berxit(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    examples, vocab = berxit_mod.ewt_examples("dev", max_len=64)
    torch.manual_seed(seed)
    model = berxit_mod.Berxit(len(vocab), hidden)
    held = [w for w, _ in examples[-16:]]
    # Untrained classifiers are barely confident: pick the exit threshold that spreads exits most.
    with torch.no_grad():
        first = sorted(float(torch.softmax(model.exits[0](model.layers[0](*_embedded(model, w))), -1).max())
                       for w in held)

        def exits(threshold):
            model.threshold = threshold
            return [int(model(w)[1]) for w in held]

        model.threshold = _most_varied(first, exits)
    return Workload("berxit", _chunks(examples, batch_size, num_batches), [], model, _eager, _no_fibers, _phalanx_fn,
                    _sum_all, baseline_name="no-fibers", decides=True)


def stackrnn(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    examples, vocab = stackrnn_mod.ewt_examples("dev", max_len=64)
    torch.manual_seed(seed)
    model = stackrnn_mod.StackRNN(len(vocab), hidden)
    return Workload("stackrnn", _chunks(examples, batch_size, num_batches), [], model, _eager, _no_fibers,
                    _phalanx_fn, _sum_all, baseline_name="no-fibers", decides=True)


def drnn(batch_size: int, hidden: int, num_batches: int, seed: int = 0) -> Workload:
    """Synthetic latent codes decoded into trees; inference only (the generator has no loss)."""
    torch.manual_seed(seed)
    model = drnn_mod.DRNN(hidden)
    codes = drnn_mod.latent_codes(batch_size * num_batches, hidden, seed)

    def eager(m, train):
        return (lambda batch: [m(z) for z in batch]), m

    def no_fibers(m, train):
        batcher = Batcher(m)
        return (lambda batch: [batcher([z])[0] for z in batch]), m

    return Workload("drnn", _chunks(codes, batch_size, num_batches), [], model, eager, no_fibers,
                    lambda m, train: m, lambda results: torch.cat([r[0].reshape(-1) for r in results]).sum(),
                    baseline_name="no-fibers", decides=True)


def _embedded(model, words):
    length = -(-len(words) // model.bucket) * model.bucket
    return (model.embed(torch.tensor(list(words) + [0] * (length - len(words)))),
            torch.arange(length) < len(words))


# The small hidden size of ../shared/DESIGN.md section 4 where it is not 256: every MV-RNN node
# carries a hidden x hidden matrix (at 256, a mini-batch of 64 trees holds ~3 GB of them).
DESIGN_HIDDEN = {"mvrnn": 64}


def design_hidden(model: str) -> int:
    """The hidden size a benchmark of ``model`` uses unless told otherwise."""
    return DESIGN_HIDDEN.get(model, 256)


# Timed mini-batches per run where not 4: the no-fibers baselines of NMT and StackRNN flush at
# every decision of every instance (15 s and 6 s per mini-batch of 64 at hidden 256, one core).
BENCH_BATCHES = {"nmt": 2, "stackrnn": 2}


def bench_batches(model: str) -> int:
    return BENCH_BATCHES.get(model, 4)


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "treelstm": treelstm, "tagger": tagger, "childsum": childsum, "treegru": treegru, "mvrnn": mvrnn,
    "twotype": twotype, "nested": nested, "lattice_gru": _chinese_lattice("gru"),
    "lattice_lstm": _chinese_lattice("lstm"), "lattice_gru_synthetic": lattice_gru_synthetic, "dag": dag,
    "nmt": nmt, "berxit": berxit, "stackrnn": stackrnn, "drnn": drnn}
