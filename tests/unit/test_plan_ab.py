"""bench/plan_ab.py: the plan stage of two checkouts side by side, and whether they agree."""
from pathlib import Path

from phalanx.bench import plan_ab


def test_plan_ab_runs_this_checkout_against_itself(capsys):
    root = Path(plan_ab.__file__).resolve().parents[2]
    plan_ab.main([str(root), "treelstm", "--reps", "1", "--instances", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("treelstm: 1 flush(es)") and lines[0].endswith("same layouts, steps and counts: True")
    assert [line.split()[0] for line in lines[1:3]] == ["base", "this"]
    assert all("ms/flush" in line and "us/batch" in line for line in lines[1:3])
    assert lines[3].startswith("  paired base / this: median x")
