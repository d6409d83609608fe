"""Readable table and JSON for benchmark rows (bench/harness.py ``summarize``)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def table(title: str, rows: list[dict], train: bool) -> Table:
    t = Table(title=title, title_justify="left")
    for name, justify in (("impl", "left"), ("inst/s", "right"), ("vs eager", "right"), ("vs manual", "right"),
                          ("batches", "right"), ("lower bd", "right"), ("in place", "right"), ("gathers", "right"),
                          ("record ms", "right"), ("sched ms", "right"), ("plan ms", "right"), ("exec ms", "right"),
                          ("bwd ms", "right"), ("us/node", "right")):
        t.add_column(name, justify=justify)
    for r in rows:
        phalanx_cols = ["-"] * 10
        if "batches" in r:
            phalanx_cols = [f"{r['batches']:.0f}", f"{r['lower_bound']:.0f}",
                            f"{r['in_place']:.0f}/{r['operand_lists']:.0f}", f"{r['gathers']:.0f}",
                            f"{1e3 * r['record_s']:.1f}", f"{1e3 * r['schedule_s']:.1f}", f"{1e3 * r['plan_s']:.1f}",
                            f"{1e3 * r['execute_s']:.1f}", f"{1e3 * r['backward_s']:.1f}" if train else "-",
                            f"{r['record_us_per_node']:.2f}"]
        t.add_row(escape(r["impl"]), f"{r['instances_per_s']:.0f}", f"{r['vs_eager']:.2f}x", f"{r['vs_manual']:.2f}x",
                  *phalanx_cols)
    return t


def environment(threads: int) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": threads}


def write_json(path: str, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))


def print_table(rows: list[dict], title: str, train: bool, console: Console | None = None) -> None:
    (console or Console()).print(table(title, rows, train))


def schedule_table(title: str, rows: list[dict]) -> Table:
    t = Table(title=title, title_justify="left")
    for name in ("policy", "batches", "vs lower bound", "fsm fallbacks", "schedule us/node"):
        t.add_column(name, justify="left" if name == "policy" else "right")
    for r in rows:
        if r.get("batches") is None:
            t.add_row(r["policy"], "-", escape(r.get("note", "")), "", "")
            continue
        t.add_row(r["policy"], f"{r['batches']}", f"{r['vs_bound']:.3f}", str(r.get("fallbacks", "")),
                  f"{r['schedule_us_per_node']:.2f}" if "schedule_us_per_node" in r else "")
    return t


def markdown(payloads: list[dict]) -> str:
    """README table rows from bench JSON files: every implementation, with the command that ran it."""
    lines = ["| command | impl | inst/s | vs eager | vs manual | batches (lower bound) | operand lists in place | "
             "record us/node |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for payload in payloads:
        for i, r in enumerate(payload["rows"]):
            command = f"`{payload['command']}`" if i == 0 else ""
            batches = f"{r['batches']:.0f} ({r['lower_bound']:.0f})" if "batches" in r else "-"
            in_place = f"{r['in_place']:.0f}/{r['operand_lists']:.0f}" if "batches" in r else "-"
            per_node = f"{r['record_us_per_node']:.2f}" if "batches" in r else "-"
            lines.append(f"| {command} | {r['impl']} | {r['instances_per_s']:.0f} | {r['vs_eager']:.2f}x | "
                         f"{r['vs_manual']:.2f}x | {batches} | {in_place} | {per_node} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown([json.loads(Path(p).read_text()) for p in sys.argv[1:]]))
