"""bench/suite.py: what ``phalanx bench`` times per model: DESIGN's sizes unless told otherwise, the
per-instance loops in fewer rounds, the fsm training budget reported, and the DyNet gap slot."""
from phalanx.bench import suite


def test_defaults_follow_design_and_overrides_win():
    settings = suite.Settings()
    assert settings.hidden_of("treelstm") == 256 and settings.hidden_of("mvrnn") == 64
    assert settings.batches_of("treelstm") == 4 and settings.batches_of("nmt") == 2
    given = suite.Settings(hidden=32, batches=3)
    assert given.hidden_of("mvrnn") == 32 and given.batches_of("nmt") == 3


def test_eager_is_timed_in_fewer_rounds_and_fsm_training_is_budgeted():
    settings = suite.Settings(hidden=8, batches=2, repeats=3, eager_repeats=1, policies=("depth", "fsm"),
                              fsm_seconds=0.05, fsm_episodes=500)
    payload = suite.run_workload("childsum", 3, settings)
    samples = {r["impl"]: r["samples"] for r in payload["rows"]}
    assert samples == {"eager": 2, "manual": 6, "phalanx[depth]": 6, "phalanx[fsm]": 6}
    assert (payload["batches"], payload["repeats"], payload["eager_repeats"]) == (2, 3, 1)
    facts = payload["policy_training"]
    assert facts["fsm_budget"] == {"episodes": 500, "seconds": 0.05}
    meta = facts["fsm_training"]
    assert meta["stopped"] in ("seconds", "target") and meta["episodes"] < 500
    assert payload["dynet_gap"] is None
    line = f"childsum b=3: fsm trained {meta['episodes']} episodes in"
    assert suite.report.fsm_lines([payload])[0].startswith(line)


def test_fsm_schedules_op_types_the_held_out_batches_lack_greedily(monkeypatch):
    """A timed mini-batch may hold an op type no held-out one has (child-sum: a node with more
    children than any held-out node): the bench's fsm falls back there instead of failing."""
    from phalanx.bench import workloads

    real = workloads.WORKLOADS["childsum"]

    def narrow_held_out(batch_size, hidden, num_batches, seed=0):
        workload = real(batch_size, hidden, num_batches, seed)
        workload.held_out = [[workload.batches[0][0]]]          # one small tree: few arities
        return workload

    monkeypatch.setitem(workloads.WORKLOADS, "childsum", narrow_held_out)
    monkeypatch.setitem(suite.WORKLOADS, "childsum", narrow_held_out)
    settings = suite.Settings(hidden=8, batches=2, repeats=1, policies=("fsm",), fsm_seconds=0.1)
    payload = suite.run_workload("childsum", 8, settings)
    fsm = next(r for r in payload["schedules"] if r["policy"] == "fsm")
    assert fsm["fallbacks"] > 0 and fsm["batches"] >= payload["schedules"][0]["batches"]
    assert [r["impl"] for r in payload["rows"]] == ["eager", "manual", "phalanx[fsm]"]


def test_probe_rows_run_the_cells_own_code_beside_the_default():
    settings = suite.Settings(hidden=8, batches=1, repeats=1, policies=("depth",), cells=(False, True))
    payload = suite.run_workload("treelstm", 3, settings)
    assert {r["impl"] for r in payload["rows"]} == {"eager", "manual", "phalanx[depth+probe]", "phalanx[depth]"}
    from phalanx.bench import harness, workloads

    impls = harness.build_impls(workloads.WORKLOADS["treelstm"](3, 8, 1), ["depth"], False, cells=[False, True])
    traced = {impl.name: impl.batcher.table.cells is not None for impl in impls if impl.batcher is not None}
    assert traced == {"phalanx[depth+probe]": False, "phalanx[depth]": True}


def test_reuse_rows_replay_every_timed_batch_and_are_never_the_headline():
    settings = suite.Settings(hidden=8, batches=2, repeats=1, policies=("depth",), reuse=(False, True, "plans"))
    payload = suite.run_workload("treelstm", 3, settings)
    rows = {r["impl"]: r for r in payload["rows"]}
    assert set(rows) == {"eager", "manual", "phalanx[depth]", "phalanx[depth+reuse]", "phalanx[depth+reuse+plans]"}
    # primed on every batch during warm-up: every timed call replays all its instances; only the
    # +plans row also runs each mini-batch's earlier plan (NOTE: [Plan reuse])
    assert rows["phalanx[depth+reuse]"]["reused"] == 3 and rows["phalanx[depth]"]["reused"] == 0
    assert rows["phalanx[depth+reuse+plans]"]["reused"] == 3
    assert rows["phalanx[depth+reuse+plans]"]["plan_reused"] == 1 and rows["phalanx[depth+reuse]"]["plan_reused"] == 0
    from phalanx.bench import report

    stages = dict.fromkeys(("record_s", "schedule_s", "plan_s", "execute_s"), 0.0)
    fast = {"impl": "phalanx[depth+reuse]", "seconds_per_batch": 0.001, **stages}
    slow = {"impl": "phalanx[depth]", "seconds_per_batch": 0.002, **stages}
    gap = report.dynet_gap({"model": "treelstm", "hidden": 8, "batch_size": 3, "rows": [
        fast, slow, {"impl": "dynet[agenda]", "seconds_per_batch": 0.004}]})
    assert gap["phalanx"] == "phalanx[depth]"


def test_rows_carry_the_paired_ratio():
    settings = suite.Settings(hidden=8, batches=2, repeats=2, eager_repeats=1, policies=("depth",))
    rows = {r["impl"]: r for r in suite.run_workload("treelstm", 3, settings)["rows"]}
    assert rows["manual"]["vs_manual_paired"] == 1.0
    assert rows["phalanx[depth]"]["vs_manual_paired"] > 0
    assert rows["eager"]["vs_manual_paired"] is None        # timed in fewer rounds
