"""Checks shared by the model-zoo tests: a hand-batched baseline must equal the eager model,
outputs and parameter gradients; tiny CoNLL-U snippets with the awkward cases of real files."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.oracle import weighted_total


# Checked without importing jieba (only its bundled dict.txt is read).
requires_jieba = pytest.mark.skipif(importlib.util.find_spec("jieba") is None,
                                    reason="the jieba lexicon is not installed (pip install jieba)")


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


def assert_manual_matches_eager(model: torch.nn.Module, eager, manual, rtol=1e-4, atol=1e-5):
    """``eager()`` and ``manual()`` each return one tensor (the same rows in the same order);
    values and the gradients of every parameter of ``model`` must agree."""
    params = list(model.parameters())
    model.zero_grad()
    expected = eager()
    weighted_total(expected).backward()
    expected_grads = _grads(params)
    model.zero_grad()
    got = manual()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    weighted_total(got).backward()
    checked = 0
    for p, g, e in zip(params, _grads(params), expected_grads, strict=True):
        if e is None or torch.count_nonzero(e) == 0:
            assert g is None or torch.count_nonzero(g) == 0, f"gradient where eager has none, shape {tuple(p.shape)}"
        else:
            assert g is not None, f"no gradient for a parameter of shape {tuple(p.shape)}"
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol)
            checked += 1
    assert checked, "no parameter received a gradient"
    model.zero_grad()


def row(token_id: str, form: str, upos: str, head: str, deprel: str) -> str:
    return "\t".join([token_id, form, form.lower(), upos, "_", "_", head, deprel, "_", "_"])


# Multiword token (2-3), an empty node (4.1) and a non-projective arc (5 -> 2 crosses 3 -> 4).
AWKWARD_CONLLU = "\n".join([
    "# sent_id = awkward-1",
    row("1", "I", "PRON", "4", "nsubj"),
    row("2-3", "don't", "_", "_", "_"),
    row("2", "do", "AUX", "5", "aux"),
    row("3", "n't", "PART", "4", "advmod"),
    row("4", "know", "VERB", "0", "root"),
    row("4.1", "know", "VERB", "_", "_"),
    row("5", "it", "PRON", "4", "obj"),
    row("6", ".", "PUNCT", "4", "punct"),
    "",
    "# sent_id = single",
    row("1", "Hi", "INTJ", "0", "root"),
    "",
])
