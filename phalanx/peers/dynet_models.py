"""DyNet versions of the zoo models: the same math as the PyTorch model, with its weights copied.

A builder ``build(dy, pc, model)`` copies ``model``'s parameters into the DyNet collection ``pc``
and returns ``forward(example) -> list of expressions``: the example's outputs in the order the
workload's eager inference run flattens them (one logits vector per tree, one per token). Adding
a model to the DyNet peer is one builder in ``BUILDERS``, keyed by its ``WORKLOADS`` name.
``dy`` is passed in so this module imports without DyNet installed.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def _matrix(pc, tensor: torch.Tensor):
    return pc.parameters_from_numpy(tensor.detach().to(torch.float32).numpy().copy())


def _linear(pc, linear: torch.nn.Linear):
    """(W, b) of ``linear``; y = b + W x, as ``dy.affine_transform([b, W, x])``."""
    return _matrix(pc, linear.weight), _matrix(pc, linear.bias)


def _lookup(pc, embedding: torch.nn.Embedding):
    return pc.lookup_parameters_from_numpy(embedding.weight.detach().to(torch.float32).numpy().copy())


def _chunks(dy, x, parts: int, size: int) -> list:
    """``torch.chunk(x, parts)`` of a vector of ``parts * size`` entries."""
    return [dy.pick_range(x, k * size, (k + 1) * size) for k in range(parts)]


def treelstm(dy, pc, model) -> Callable[[Any], list]:
    """models/treelstm.py ``TreeLSTM.forward``: binary N-ary TreeLSTM, root classifier."""
    hidden = model.hidden
    embed = _lookup(pc, model.leaf.embed)
    leaf_w, leaf_b = _linear(pc, model.leaf.gates)
    node_w, node_b = _linear(pc, model.internal.gates)
    out_w, out_b = _linear(pc, model.classifier.out)

    def encode(tree):
        if tree.is_leaf:
            i, o, u = _chunks(dy, dy.affine_transform([leaf_b, leaf_w, dy.lookup(embed, int(tree.word))]), 3, hidden)
            c = dy.cmult(dy.logistic(i), dy.tanh(u))
            return dy.cmult(dy.logistic(o), dy.tanh(c)), c
        (hl, cl), (hr, cr) = encode(tree.children[0]), encode(tree.children[1])
        gates = dy.affine_transform([node_b, node_w, dy.concatenate([hl, hr])])
        i, fl, fr, o, u = _chunks(dy, gates, 5, hidden)
        c = dy.cmult(dy.logistic(i), dy.tanh(u)) + dy.cmult(dy.logistic(fl), cl) + dy.cmult(dy.logistic(fr), cr)
        return dy.cmult(dy.logistic(o), dy.tanh(c)), c

    def forward(example):
        tree = example[0]
        return [dy.affine_transform([out_b, out_w, encode(tree)[0]])]

    return forward


def tagger(dy, pc, model) -> Callable[[Any], list]:
    """models/tagger.py ``BiLSTMTagger.forward``: forward and backward ``nn.LSTMCell`` chains
    (gate order i, f, g, o; both biases added) and a per-token scorer over both states."""
    hidden = model.hidden
    embed = _lookup(pc, model.embed.table)
    steps = []
    for lstm in (model.fwd.lstm, model.bwd.lstm):
        steps.append((_matrix(pc, lstm.weight_ih), _matrix(pc, lstm.weight_hh), _matrix(pc, lstm.bias_ih + lstm.bias_hh)))
    out_w, out_b = _linear(pc, model.scorer.out)

    def chain(xs, step):
        w_ih, w_hh, b = step
        h = c = dy.zeros(hidden)
        states = []
        for x in xs:
            i, f, g, o = _chunks(dy, dy.affine_transform([b, w_ih, x, w_hh, h]), 4, hidden)
            c = dy.cmult(dy.logistic(f), c) + dy.cmult(dy.logistic(i), dy.tanh(g))
            h = dy.cmult(dy.logistic(o), dy.tanh(c))
            states.append(h)
        return states

    def forward(example):
        xs = [dy.lookup(embed, int(w)) for w in example[0]]
        forward_states = chain(xs, steps[0])
        backward_states = chain(xs[::-1], steps[1])[::-1]
        return [dy.affine_transform([out_b, out_w, dy.concatenate([hf, hb])])
                for hf, hb in zip(forward_states, backward_states, strict=True)]

    return forward


def lattice(dy, pc, model) -> Callable[[Any], list]:
    """models/lattice.py ``LatticeRNN.forward``: node ``i`` runs an ``nn.GRUCell`` (gate order r, z,
    n; ``b_hn`` inside the reset product) or ``nn.LSTMCell`` on character ``i - 1`` and the mean of
    its predecessors' states; one logits vector per character."""
    hidden, gru = model.hidden, model.kind == "gru"
    embed = _lookup(pc, model.embed)
    rnn = model.node.gru if gru else model.node.lstm
    w_ih, w_hh = _matrix(pc, rnn.weight_ih), _matrix(pc, rnn.weight_hh)
    b_ih, b_hh = _matrix(pc, rnn.bias_ih), _matrix(pc, rnn.bias_hh)
    b_lstm = _matrix(pc, rnn.bias_ih + rnn.bias_hh)
    out_w, out_b = _linear(pc, model.scorer.out)

    def gru_step(x, h):
        r_i, z_i, n_i = _chunks(dy, dy.affine_transform([b_ih, w_ih, x]), 3, hidden)
        r_h, z_h, n_h = _chunks(dy, dy.affine_transform([b_hh, w_hh, h]), 3, hidden)
        r, z = dy.logistic(r_i + r_h), dy.logistic(z_i + z_h)
        n = dy.tanh(n_i + dy.cmult(r, n_h))
        return n + dy.cmult(z, h - n)          # (1 - z) * n + z * h

    def lstm_step(x, h, c):
        i, f, g, o = _chunks(dy, dy.affine_transform([b_lstm, w_ih, x, w_hh, h]), 4, hidden)
        c = dy.cmult(dy.logistic(f), c) + dy.cmult(dy.logistic(i), dy.tanh(g))
        return dy.cmult(dy.logistic(o), dy.tanh(c)), c

    def forward(example):
        hs = [dy.zeros(hidden)]
        cs = list(hs)
        for char, preds in zip(example.chars, example.preds, strict=True):
            x = dy.lookup(embed, int(char))
            h = dy.average([hs[p] for p in preds])
            if gru:
                hs.append(gru_step(x, h))
            else:
                h, c = lstm_step(x, h, dy.average([cs[p] for p in preds]))
                hs.append(h), cs.append(c)
        return [dy.affine_transform([out_b, out_w, h]) for h in hs[1:]]

    return forward


BUILDERS: dict[str, Callable] = {"treelstm": treelstm, "tagger": tagger, "lattice_gru": lattice,
                                 "lattice_lstm": lattice, "lattice_gru_synthetic": lattice}
