"""NestedRNN (character LSTM per word feeding a word LSTM) on EWT: phalanx and the packed
``nn.LSTM`` baseline match the eager model; the character loader handles awkward CoNLL-U."""
import pytest
import torch

from phalanx import data
from phalanx.models.nested import ManualNestedRNN, NestedRNN, ewt_examples
from tests.models.zoo_checks import AWKWARD_CONLLU, assert_manual_matches_eager
from tests.oracle import assert_matches_eager


@pytest.fixture(scope="module")
def examples_and_model():
    examples, chars = ewt_examples("dev", 6)
    torch.manual_seed(0)
    return examples, chars, NestedRNN(len(chars), 8, char_dim=5)


def test_examples_are_words_as_characters(examples_and_model):
    examples, chars, _ = examples_and_model
    sentence = data.load_sentences("dev", 1)[0]
    words, tags = examples[0]
    assert ["".join(chars.tokens[c] for c in w) for w in words] == list(sentence.words)
    assert tags == data.UPOS.encode(sentence.upos)


@pytest.mark.parametrize("policy", ["depth", "fsm"])
def test_phalanx_matches_eager_on_ewt(examples_and_model, policy):
    examples, _, model = examples_and_model
    assert_matches_eager(model.loss, examples, params=model.parameters(), policy=policy, train=True)


def test_manual_baseline_matches_eager(examples_and_model):
    examples, _, model = examples_and_model
    baseline = ManualNestedRNN(model)
    words = [w for w, _ in examples]
    assert_manual_matches_eager(model, lambda: torch.cat([torch.stack(model(w)) for w in words]),
                                lambda: baseline(words))
    assert_manual_matches_eager(model, lambda: torch.stack([x for ex in examples for x in model.loss(ex)]),
                                lambda: baseline(*zip(*examples)))


def test_awkward_conllu_words_become_character_lists(examples_and_model):
    _, chars, model = examples_and_model
    sentences = data.parse_conllu(AWKWARD_CONLLU)
    vocab = data.Vocab.build((ch for s in sentences for w in s.words for ch in w), lowercase=False)
    examples = [([vocab.encode(list(w)) for w in s.words], data.UPOS.encode(s.upos)) for s in sentences]
    assert [len(w) for w in examples[0][0]] == [1, 2, 3, 4, 2, 1]   # I do n't know it .
    assert_matches_eager(model.loss, examples, params=model.parameters(), train=True)
