"""EWT training tasks: deterministic disjoint splits, labels, the majority baseline."""
import torch

from phalanx import data
from phalanx.train.tasks import TASKS, predictions, split_dev


def test_dev_file_splits_into_train_and_dev_deterministically():
    sentences = data.load_sentences("dev")
    train, dev = split_dev(sentences)
    assert (len(train), len(dev)) == (1801, 200)
    assert {s.sent_id for s in train}.isdisjoint({s.sent_id for s in dev})
    assert [id(s) for s in dev] == [id(sentences[i]) for i in range(9, len(sentences), 10)]
    assert split_dev(sentences)[0] == train


def test_tasks_label_what_they_claim():
    tagger = TASKS["tagger"](30)
    words, tags = tagger.train[0]
    sentence = split_dev(data.load_sentences("dev"))[0][0]
    assert tags == data.UPOS.encode(sentence.upos) and len(words) == len(sentence)
    treelstm = TASKS["treelstm"](30)
    tree, label = treelstm.test[0]
    test0 = data.load_sentences("test")[0]
    assert label == data.UPOS[test0.upos[test0.heads.index(0)]]
    assert tree.num_leaves() == len(test0)


def test_majority_baseline_predicts_the_most_frequent_training_label():
    task = TASKS["tagger"](50)
    counts = torch.bincount(torch.tensor([t for _, tags in task.train for t in tags]), minlength=17)
    assert task.majority_class() == int(counts.argmax())
    gold = [t for _, tags in task.test for t in tags]
    assert task.majority_accuracy(task.test) == sum(t == task.majority_class() for t in gold) / len(gold)


def test_vocabulary_comes_from_train_only():
    task = TASKS["tagger"](None)
    train_words = {w.lower() for s in split_dev(data.load_sentences("dev"))[0] for w in s.words}
    assert set(task.vocab.tokens[2:]) <= train_words


def test_predictions_of_one_label_and_of_per_token_logits():
    assert predictions(torch.tensor([0.1, 2.0, -1.0])) == [1]
    assert predictions([torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])]) == [0, 1]
