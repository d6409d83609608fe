"""Readable table and JSON for benchmark rows (bench/harness.py ``summarize``)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _table(title: str, columns: list[str]) -> Table:
    """A table that stays readable at 80 columns: no vertical rules, numbers never wrap or shrink,
    the implementation name folds rather than being cut."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, name in enumerate(columns):
        if i == 0:
            t.add_column(name, justify="left", overflow="fold")
        else:
            t.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    return t


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if row.get(key) is not None else "-"


def tables(title: str, rows: list[dict], train: bool) -> list[Table]:
    """Three narrow tables of bench rows: throughput (every implementation, peers included),
    batching (phalanx rows) and the time split per stage (phalanx rows, ms per mini-batch)."""
    peers = any(r["impl"].startswith("dynet") for r in rows)
    speed = _table(title, ["impl", "inst/s", "ms/batch", "vs eager", "vs manual"] + (["vs DyNet"] if peers else []))
    for r in rows:
        if "seconds_per_batch" not in r:
            speed.add_row(escape(r["impl"]), "-", "-", "-", "-", *(["-"] if peers else []))
            continue
        speed.add_row(escape(r["impl"]), f"{r['instances_per_s']:.0f}", f"{1e3 * r['seconds_per_batch']:.1f}",
                      _ratio(r, "vs_eager"), _ratio(r, "vs_manual"), *([_ratio(r, "vs_dynet")] if peers else []))
    batched = [r for r in rows if "batches" in r]
    batching = _table("batches and operand reads",
                      ["impl", "batches", "bound", "in place", "gathers", "rec us/node"])
    split = _table("time split, ms per mini-batch", ["impl", "record", "schedule", "plan", "execute", "backward"])
    for r in batched:
        batching.add_row(escape(r["impl"]), f"{r['batches']:.0f}", f"{r['lower_bound']:.0f}",
                         f"{r['in_place']:.0f}/{r['operand_lists']:.0f}", f"{r['gathers']:.0f}",
                         f"{r['record_us_per_node']:.2f}")
        split.add_row(escape(r["impl"]), *(f"{1e3 * r[k]:.1f}" for k in ("record_s", "schedule_s", "plan_s", "execute_s")),
                      f"{1e3 * r['backward_s']:.1f}" if train else "-")
    return [speed] + ([batching, split] if batched else [])


def notes(rows: list[dict]) -> list[str]:
    """One line per row that carries a note (a peer that crashed, timed out or is missing)."""
    return [f"{r['impl']}: {r['note']}" for r in rows if r.get("note")]


def zoo_tables(model: str, payloads: list[dict]) -> list[Table]:
    """``bench --all`` tables of one model: instances/s at every batch size with the ratios at the
    largest, then batching and the time split at the largest batch size."""
    payloads = sorted((p for p in payloads if p["rows"]), key=lambda p: p["batch_size"])
    if not payloads:
        return []
    last = payloads[-1]
    peers = any(r["impl"].startswith("dynet") for r in last["rows"])
    sizes = [p["batch_size"] for p in payloads]
    speed = _table(f"{model} (hidden {last['hidden']}): instances/s; ratios at batch {sizes[-1]}",
                   ["impl"] + [f"b={b}" for b in sizes] + ["vs eager", "vs manual"] + (["vs DyNet"] if peers else []))
    for impl in dict.fromkeys(r["impl"] for p in payloads for r in p["rows"]):
        per_size = [next((r for r in p["rows"] if r["impl"] == impl), {}) for p in payloads]
        end = per_size[-1]
        speed.add_row(escape(impl), *(f"{r['instances_per_s']:.0f}" if "instances_per_s" in r else "-" for r in per_size),
                      _ratio(end, "vs_eager"), _ratio(end, "vs_manual"), *([_ratio(end, "vs_dynet")] if peers else []))
    rest = tables("", last["rows"], last["train"])[1:]
    for t in rest:
        t.title = f"{model}, batch {sizes[-1]}: {t.title}"
    return [speed] + rest


def environment(threads: int) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": threads}


def write_json(path: str, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))


def print_tables(rows: list[dict], title: str, train: bool, console: Console | None = None) -> None:
    console = console or Console()
    for t in tables(title, rows, train):
        console.print(t)
    for line in notes(rows):
        console.print(escape(line), highlight=False)


def schedule_table(title: str, rows: list[dict]) -> Table:
    t = _table(title, ["policy", "batches", "vs bound", "fsm fallbacks", "sched us/node"])
    for r in rows:
        if r.get("batches") is None:
            t.add_row(r["policy"], "-", "-", "", "")
            t.caption = "; ".join(filter(None, [t.caption, escape(f"{r['policy']}: {r.get('note', '')}")]))
            t.caption_justify = "left"
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
            if "instances_per_s" not in r:
                lines.append(f"| {command} | {r['impl']} | {r.get('note', '-')} | | | | | |")
                continue
            batches = f"{r['batches']:.0f} ({r['lower_bound']:.0f})" if "batches" in r else "-"
            in_place = f"{r['in_place']:.0f}/{r['operand_lists']:.0f}" if "batches" in r else "-"
            per_node = f"{r['record_us_per_node']:.2f}" if "batches" in r else "-"
            lines.append(f"| {command} | {r['impl']} | {r['instances_per_s']:.0f} | {r['vs_eager']:.2f}x | "
                         f"{r['vs_manual']:.2f}x | {batches} | {in_place} | {per_node} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown([json.loads(Path(p).read_text()) for p in sys.argv[1:]]))
