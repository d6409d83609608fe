"""``phalanx train`` end to end on a tiny configuration (the built-in full runs are not tests)."""
import json

import pytest

from phalanx.cli import build_parser, main

TINY = ["--max-sentences", "24", "--hidden", "8", "--batch-size", "4", "--epochs", "2", "--lr", "0.02"]


def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--epochs", "--hidden", "--lr", "--batch-size", "--seed", "--out", "--resume", "--policy",
                   "--eval-every", "--max-steps", "--threads", "--measure-throughput"):
        assert option in out
    assert "default: tagger" in out and "default: fsm" in out
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in action.help, action.option_strings


def test_train_writes_checkpoints_metrics_and_learning_curve(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "tagger", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "majority-class baseline" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["majority_baseline_test"] < 1 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["steps"] == 2 * (24 // 4) and len(metrics["history"]["dev_accuracy"]) == 2
    assert (out / "learning-curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("best.pt", "last.pt", "policy.fsm.json"):
        assert (out / name).is_file()


def test_interrupted_then_resumed_run_reports_what_the_straight_run_reports(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["train", "treelstm", *TINY, "--eval-every", "4"]
    assert main([*common, "--out", str(straight)]) == 0
    assert main([*common, "--out", str(split), "--max-steps", "5"]) == 0
    assert not (split / "metrics.json").exists()
    assert main(["train", "treelstm", "--out", str(split), "--resume",
                 str(split / "last.pt")]) == 0      # options come from the checkpoint
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((split / "metrics.json").read_text())
    assert b["history"] == a["history"]
    assert b["test_accuracy"] == a["test_accuracy"] and b["best_dev_accuracy"] == a["best_dev_accuracy"]


def test_resume_with_a_conflicting_option_names_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "tagger", *TINY, "--out", str(out), "--max-steps", "1"]) == 0
    capsys.readouterr()
    # The command reports the CheckpointError in one line (no traceback) and exits 2.
    code = main(["train", "tagger", *TINY[:2], "--lr", "0.5", "--out", str(out), "--resume", str(out / "last.pt")])
    err = capsys.readouterr().err
    assert code == 2 and f"{out / 'last.pt'} was trained with --lr 0.02" in err and "Traceback" not in err
