"""The scaling table (bench/scaling.py, ``phalanx bench MODEL --scaling ...``) on tiny sizes: the
structure of its JSON, every timing positive, eager skipped above ``--eager-max``, a table that
fits 100 columns. No timing is asserted (speed is measured by benchmarks)."""
import json

import pytest
from rich.console import Console

from phalanx.bench import scaling
from phalanx.cli import main


def _check_rows(payload, sizes, eager_max, policies):
    by_size = {}
    for row in payload["rows"]:
        by_size.setdefault(row["batch_size"], []).append(row)
    assert sorted(by_size) == sorted(sizes)
    for size, rows in by_size.items():
        expected = (["eager"] if size <= eager_max else []) + ["manual"] + [f"phalanx[{p}]" for p in policies]
        assert [r["impl"] for r in rows] == expected
        nodes = {r["nodes_per_instance"] for r in rows}
        assert len(nodes) == 1 and nodes.pop() > 1            # the same recorded graphs for every impl
        for r in rows:
            for key in ("seconds_per_batch", "us_per_instance", "us_per_node", "vs_manual"):
                assert r[key] > 0, (size, r["impl"], key)
            assert r["us_per_instance"] == pytest.approx(1e6 * r["seconds_per_batch"] / size)
            assert r["samples"] >= 1
            if r["impl"].startswith("phalanx"):
                for stage in ("record", "schedule", "plan", "execute"):
                    assert r[f"{stage}_us_per_node"] > 0, (size, r["impl"], stage)
                assert r["batches"] >= r["lower_bound"] > 0
        assert next(r for r in rows if r["impl"] == "manual")["vs_manual"] == 1.0


@pytest.mark.parametrize("model", ["treelstm", "tagger"])
def test_run_scaling_rows_and_table(model):
    payload = scaling.run_scaling(model, [1, 3], hidden=8, policies=["depth"], instances=3, repeats=1, eager_max=1)
    _check_rows(payload, [1, 3], 1, ["depth"])
    assert any("eager skipped above batch 1" in n for n in payload["notes"])
    console = Console(width=100, record=True)
    console.print(scaling.scaling_table(payload))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 100
    assert "phalanx[depth]" in text and "manual" in text


def test_bench_scaling_cli_writes_json(tmp_path):
    out = tmp_path / "scaling.json"
    assert main(["bench", "treelstm", "--scaling", "1", "2", "--hidden", "8", "--policy", "depth", "--train",
                 "--scaling-instances", "2", "--repeats", "1", "--eager-max", "2", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["command"].startswith("phalanx bench treelstm --scaling 1 2")
    assert payload["train"] and payload["hidden"] == 8 and payload["batch_sizes"] == [1, 2]
    _check_rows(payload, [1, 2], 2, ["depth"])
    assert all(r["backward_us_per_node"] > 0 for r in payload["rows"] if r["impl"].startswith("phalanx"))


def test_scaling_rejects_options_it_does_not_use():
    with pytest.raises(SystemExit, match="--scaling"):
        main(["bench", "treelstm", "--scaling", "1", "--peers", "dynet"])
