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


@pytest.mark.parametrize("model", ["treelstm", "tagger"])
def test_bench_training_mode(tmp_path, model):
    # manual trains with sparse embedding gradients, eager and phalanx with dense ones.
    out = tmp_path / "train.json"
    assert main(["bench", model, "--batch-size", "3", "--hidden", "8", "--batches", "1", "--repeats", "1",
                 "--policy", "depth", "--train", "--json", str(out)]) == 0
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["phalanx[depth]"]["backward_s"] > 0
    eager = rows["eager"]["losses"]
    assert len(eager) == 2 and eager[0] > 0            # warm-up step + one timed step, real losses
    for impl in ("manual", "phalanx[depth]"):
        # Same start weights, same batch, same SGD steps: a wrong gradient would show here.
        assert rows[impl]["losses"] == pytest.approx(eager, rel=1e-4)


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
def test_explain_prints_op_types_profile_timeline_and_draws(capsys, tmp_path, train):
    drawing = tmp_path / "explain.svg"
    assert main(["explain", "treelstm", "--batch-size", "2", "--hidden", "8", "--policy", "fsm",
                 "--out", str(drawing)] + (["--train"] if train else [])) == 0
    out = capsys.readouterr().out
    assert "cell TreeLSTMInternal" in out and "policy `fsm`" in out and "where the time goes" in out
    assert "timeline" in out and "diagnosis" in out
    assert "<svg" in drawing.read_text()
    backward_ms = [float(line.split("/")[1].split()[0]) for line in out.splitlines() if "nodes/batch" in line]
    assert backward_ms and (max(backward_ms) > 0) == train


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_help_of_every_command_names_every_option_with_its_default(capsys):
    from phalanx.cli import build_parser

    commands = dict(_subparsers(build_parser()))
    assert {"bench", "schedules", "policy", "policy train", "explain"} <= set(commands)
    for name, parser in commands.items():
        with pytest.raises(SystemExit):
            main([*name.split(), "--help"])
        text = capsys.readouterr().out
        assert "``" not in text, name
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
            if action.option_strings and action.help != "==SUPPRESS==":
                assert action.help, (name, action.option_strings)
            if (isinstance(action.default, (int, str)) and not isinstance(action.default, bool)
                    and action.default != "==SUPPRESS==" and "default" not in action.help):
                assert f"default: {action.default}" in " ".join(text.split()), (name, action.option_strings)


@pytest.mark.parametrize("width", ["80", "120"])
def test_bench_output_fits_the_terminal(capsys, monkeypatch, width):
    monkeypatch.setenv("COLUMNS", width)
    assert main(["bench", "treelstm", "--batch-size", "3", "--hidden", "8", "--batches", "1", "--repeats", "1",
                 "--policy", "depth", "fsm", "--plan", "off", "auto"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= int(width)
    assert "phalanx[fsm+plan:auto]" in out and "time split" in out


def test_bench_all_quick_writes_tables_json_and_plots(tmp_path, capsys):
    out = tmp_path / "all.json"
    assert main(["bench", "--all", "--quick", "--hidden", "8", "--batch-size", "3", "--repeats", "1",
                 "--policy", "depth", "--json", str(out), "--plot", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    payloads = json.loads(out.read_text())["payloads"]
    from phalanx.bench.workloads import WORKLOADS

    assert [p["model"] for p in payloads] == list(WORKLOADS)
    for p in payloads:
        assert p["hidden"] == 8 and p["batch_size"] == 3
        baseline = "no-fibers" if p["model"] in ("nmt", "berxit", "stackrnn", "drnn") else "manual"
        assert [r["impl"] for r in p["rows"]] == ["eager", baseline, "phalanx[depth]"]
        assert f"{p['model']} (hidden 8)" in text
    for name in ("throughput", "batches_vs_bound", "time_split"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_needs_a_model_or_all():
    with pytest.raises(SystemExit, match="MODEL or --all"):
        main(["bench"])
    with pytest.raises(SystemExit, match="MODEL or --all"):
        main(["bench", "treelstm", "--all"])
    with pytest.raises(SystemExit, match="--policy-file holds one model's policy"):
        main(["bench", "--all", "--policy-file", "x.json"])


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


def test_bench_skips_fsm_for_models_with_decisions(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "drnn", "--batch-size", "2", "--hidden", "8", "--batches", "1", "--repeats", "1",
                 "--policy", "depth", "fsm", "--json", str(out)]) == 0
    assert "fsm skipped" in capsys.readouterr().out
    assert [r["impl"] for r in json.loads(out.read_text())["rows"]] == ["eager", "no-fibers", "phalanx[depth]"]
