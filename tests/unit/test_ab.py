"""bench/ab.py: two checkouts of phalanx side by side in one process."""
from pathlib import Path

import pytest

from phalanx.bench import ab


def test_ab_runs_this_checkout_against_itself(capsys):
    root = Path(ab.__file__).resolve().parents[2]
    ab.main([str(root), "--hidden", "4", "--batch-size", "2", "--batches", "1", "--reps", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("treelstm hidden 4, batch 2, inference")
    names = [line.split()[0] for line in lines[1:4]]
    assert names == ["manual", "base", "this"]
    assert all(" x" in line for line in lines[1:4]) and "batches" in lines[2] and "batches" in lines[3]
    # Paired ratios: one line per other implementation, each over the one timed mini-batch.
    assert [line.split()[:4] for line in lines[4:]] == [["paired:", "manual", "/", "this"],
                                                        ["paired:", "base", "/", "this"]]
    assert all(line.endswith("over 1 mini-batches") for line in lines[4:])


def test_ab_runs_the_tagger_with_cells(capsys):
    root = Path(ab.__file__).resolve().parents[2]
    ab.main([str(root), "--model", "tagger", "--cells", "--hidden", "4", "--batch-size", "2", "--batches", "1",
             "--reps", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tagger hidden 4, cells, batch 2, inference")
    assert [line.split()[0] for line in lines[1:4]] == ["manual", "base", "this"]


def test_ab_refuses_a_directory_without_phalanx(tmp_path):
    with pytest.raises(SystemExit, match="no phalanx package"):
        ab.main([str(tmp_path)])
