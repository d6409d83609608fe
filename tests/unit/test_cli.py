"""The phalanx command end to end on tiny configurations (the benchmark's numbers are not checked
here: speed is measured by benchmarks, never by timed tests)."""
import json

import pytest

from phalanx.cli import main


@pytest.mark.parametrize("model", ["treelstm", "tagger"])
def test_bench_writes_json_with_every_implementation(tmp_path, model):
    out = tmp_path / "bench.json"
    args = ["bench", model, "--batch-size", "4", "--hidden", "8", "--batches", "1", "--repeats", "1",
            "--plan", "off", "auto", "--json", str(out)]
    assert main(args) == 0
    payload = json.loads(out.read_text())
    impls = [r["impl"] for r in payload["rows"]]
    assert impls[:2] == ["eager", "manual"]
    assert {"phalanx[depth]", "phalanx[agenda+plan:auto]", "phalanx[fsm]"} <= set(impls)
    for row in payload["rows"]:
        assert row["instances_per_s"] > 0
        if row["impl"].startswith("phalanx"):
            assert row["batches"] >= row["lower_bound"] > 0
    policies = {r["policy"]: r for r in payload["schedules"]}
    assert policies["fsm"]["batches"] >= policies["lower bound"]["batches"]


def test_bench_training_mode(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "treelstm", "--batch-size", "3", "--hidden", "8", "--batches", "1", "--repeats", "1",
                 "--policy", "depth", "--train", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[-1]["backward_s"] > 0


def test_policy_train_then_bench_and_schedules_with_the_file(tmp_path):
    policy_file = tmp_path / "tl.fsm.json"
    assert main(["policy", "train", "treelstm", "--batch-size", "4", "--hidden", "8", "--samples", "2",
                 "--out", str(policy_file)]) == 0
    saved = json.loads(policy_file.read_text())
    assert saved["format"] == "phalanx-fsm-policy" and saved["table"]
    out = tmp_path / "schedules.json"
    assert main(["schedules", "treelstm", "--batch-size", "2", "--hidden", "8", "--batches", "2",
                 "--policy-file", str(policy_file), "--json", str(out)]) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["lower bound"]["batches"] <= rows["optimal"]["batches"] <= rows["fsm"]["batches"]


@pytest.mark.parametrize("train", [False, True])
def test_explain_prints_op_types_profile_and_schedule(capsys, train):
    assert main(["explain", "treelstm", "--batch-size", "2", "--hidden", "8", "--policy", "fsm"]
                + (["--train"] if train else [])) == 0
    out = capsys.readouterr().out
    assert "cell TreeLSTMInternal" in out and "schedule[fsm]" in out and "where the time goes" in out


@pytest.mark.parametrize("model", ["nmt", "berxit", "stackrnn", "drnn"])
def test_bench_models_with_decisions_compare_against_no_fibers(tmp_path, model):
    out = tmp_path / "bench.json"
    args = ["bench", model, "--batch-size", "3", "--hidden", "8", "--batches", "1", "--repeats", "1",
            "--policy", "depth", "--json", str(out)]
    assert main(args) == 0
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["eager", "no-fibers", "phalanx[depth]"]
    assert rows["phalanx[depth]"]["rounds"] >= 1
    assert rows["phalanx[depth]"]["batches"] >= rows["phalanx[depth]"]["lower_bound"] > 0


def test_bench_refuses_fsm_for_models_with_decisions(capsys):
    assert main(["bench", "drnn", "--batch-size", "2", "--hidden", "8", "--batches", "1", "--policy", "fsm"]) == 2
    assert "fibers" in capsys.readouterr().out
