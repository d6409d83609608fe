"""Benchmark tables stay readable in narrow terminals: at 80 and 120 columns no cell is cut."""
import io

import pytest
from rich.console import Console

from phalanx.bench import report

LONG_NAMES = ["eager", "manual", "phalanx[depth]", "phalanx[agenda+plan:pqtree/lists]", "phalanx[fsm+plan:auto]"]


def _rows(train: bool) -> list[dict]:
    rows = []
    for i, name in enumerate(LONG_NAMES):
        row = {"impl": name, "seconds_per_batch": 0.0123 * (i + 1), "instances_per_s": 12345.0 / (i + 1),
               "vs_eager": 123.45 / (i + 1), "vs_manual": 1.5, "vs_dynet": 2.25}
        if name.startswith("phalanx"):
            row.update(batches=1234, lower_bound=1033, in_place=8765, operand_lists=10234, gathers=4321,
                       record_us_per_node=12.34, record_s=1.2345, schedule_s=0.5, plan_s=0.25, execute_s=2.5,
                       backward_s=3.75 if train else 0.0)
        rows.append(row)
    rows.append({"impl": "dynet[agenda+depth]", "seconds_per_batch": 0.02, "instances_per_s": 3200.0,
                 "vs_eager": 9.87, "vs_manual": 0.5, "vs_dynet": 1.0})
    rows.append({"impl": "dynet[depth]", "note": "crashed (SIGSEGV)"})
    return rows


def _render(tables, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    for t in tables:
        console.print(t)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("train", [False, True])
def test_bench_tables_fit_without_cutting_cells(width, train):
    rows = _rows(train)
    text = _render(report.tables("treelstm inference, hidden 256, batch 64", rows, train), width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for expected in ("12345", "12.3", "123.45x", "2.25x", "1234", "1033", "8765/10234", "4321", "12.34", "1234.5",
                     "2500.0", "3200", "dynet[agenda+depth]"):
        assert expected in text, expected
    assert ("3750.0" in text) == train
    # The long implementation name may fold onto two lines, but all of it is there.
    first_column = "".join(line.split()[0] for line in text.splitlines() if line.strip())
    assert "phalanx[agenda+plan:pqtree/lists]" in first_column
    assert report.notes(rows) == ["dynet[depth]: crashed (SIGSEGV)"]


@pytest.mark.parametrize("width", [80, 120])
def test_zoo_and_schedule_tables_fit(width):
    payloads = [{"model": "treelstm", "hidden": 64, "batch_size": b, "train": False, "rows": _rows(False)}
                for b in (8, 64)]
    schedules = [{"policy": "lower bound", "batches": 1033, "vs_bound": 1.0},
                 {"policy": "optimal", "batches": None, "note": "skipped: graphs > 200 nodes"},
                 {"policy": "fsm", "batches": 1040, "vs_bound": 1.00678, "schedule_us_per_node": 0.52, "fallbacks": 4}]
    text = _render(report.zoo_tables("treelstm", payloads) + [report.schedule_table("batches", schedules)], width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for expected in ("b=8", "b=64", "12345", "123.45x", "1.007", "optimal: skipped: graphs > 200 nodes", "0.52"):
        assert expected in text, expected
