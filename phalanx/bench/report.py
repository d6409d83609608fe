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
    speed = _table(title, ["impl", "inst/s", "ms", "vs eager", "vs manual", "paired"]
                   + (["vs DyNet"] if peers else []))
    for r in rows:
        if "seconds_per_batch" not in r:
            speed.add_row(escape(r["impl"]), "-", "-", "-", "-", "-", *(["-"] if peers else []))
            continue
        speed.add_row(escape(r["impl"]), f"{r['instances_per_s']:.0f}", f"{1e3 * r['seconds_per_batch']:.1f}",
                      _ratio(r, "vs_eager"), _ratio(r, "vs_manual"), _ratio(r, "vs_manual_paired"),
                      *([_ratio(r, "vs_dynet")] if peers else []))
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


# Targets of issue 11 against DyNet's best autobatch strategy at the same thread count:
# phalanx's best policy must be at least this many times faster.
def dynet_target(model: str, hidden: int, batch_size: int) -> float | None:
    """The speedup over DyNet the project aims for on this workload, or None where none is set."""
    if model == "treelstm":
        return 1.3 if hidden >= 256 and batch_size >= 64 else 2.0
    if model in ("lattice_gru", "lattice_gru_synthetic"):
        return 2.5
    return None


def _headline(row: dict) -> bool:
    """A phalanx row that counts for the headline: ``+reuse`` rows (recordings replayed from an
    earlier epoch) are reported beside it, never as phalanx's best."""
    return row["impl"].startswith("phalanx") and "+reuse" not in row["impl"]


_SPLIT = (("record_s", "record"), ("schedule_s", "schedule"), ("plan_s", "plan"), ("execute_s", "execute"))


def dynet_gap(payload: dict) -> dict | None:
    """phalanx's fastest policy against DyNet's fastest strategy in one payload (None without a
    timed DyNet row): the ratio, the issue's target, and where phalanx's time goes (stage medians;
    ``other`` is the rest of the call: splitting results, Python around the stages). ``cause`` says,
    from those numbers, why a missed target is missed."""
    timed = [r for r in payload["rows"] if "seconds_per_batch" in r]
    dynet = [r for r in timed if r["impl"].startswith("dynet")]
    ours = [r for r in timed if _headline(r) and "record_s" in r]
    if not dynet or not ours:
        return None
    best_dynet = min(dynet, key=lambda r: r["seconds_per_batch"])
    best = min(ours, key=lambda r: r["seconds_per_batch"])
    total_ms, dynet_ms = 1e3 * best["seconds_per_batch"], 1e3 * best_dynet["seconds_per_batch"]
    stages = {label: 1e3 * best[key] for key, label in _SPLIT}
    stages["other"] = max(0.0, total_ms - sum(stages.values()))
    ratio = dynet_ms / total_ms
    target = dynet_target(payload["model"], payload["hidden"], payload["batch_size"])
    gap = {"model": payload["model"], "hidden": payload["hidden"], "batch_size": payload["batch_size"],
           "phalanx": best["impl"], "dynet": best_dynet["impl"], "phalanx_ms": total_ms, "dynet_ms": dynet_ms,
           "ratio": ratio, "target": target, "met": None if target is None else ratio >= target,
           "split_ms": stages}
    if target is not None and ratio < target:
        gap["allowed_ms"] = dynet_ms / target
        gap["cause"] = _cause(stages, total_ms, dynet_ms, target)
    return gap


def _cause(stages: dict, total_ms: float, dynet_ms: float, target: float) -> str:
    """Why phalanx takes more than DyNet's time / target, read off the time split: the kernels
    alone (execute) are already too slow, or the stages around them (record, schedule, plan,
    other) push it over; the largest such stage is named with its share."""
    allowed = dynet_ms / target
    execute = stages["execute"]
    overhead = {k: v for k, v in stages.items() if k != "execute"}
    worst = max(overhead, key=overhead.__getitem__)
    largest = f"{worst} {overhead[worst]:.1f} ms = {100 * overhead[worst] / total_ms:.0f}% of phalanx's time"
    if execute > allowed:
        return (f"execute alone {execute:.1f} ms > {allowed:.1f} ms allowed ({dynet_ms / execute:.2f}x DyNet's "
                f"whole run {dynet_ms:.1f} ms): the batched kernels; then {largest}")
    return (f"{largest}; execute alone {execute:.1f} ms would be {dynet_ms / execute:.2f}x DyNet's whole run "
            f"{dynet_ms:.1f} ms, but record + schedule + plan + other add "
            f"{sum(overhead.values()):.1f} ms")


def gap_lines(payloads: list[dict]) -> list[str]:
    """One line per payload with a DyNet row: the ratio vs the target and, where missed, the gap and
    its cause."""
    lines = []
    for p in payloads:
        gap = p.get("dynet_gap")
        if not gap:
            continue
        head = (f"{gap['model']} h={gap['hidden']} b={gap['batch_size']}: {gap['phalanx']} {gap['ratio']:.2f}x "
                f"vs {gap['dynet']} ({gap['phalanx_ms']:.1f} vs {gap['dynet_ms']:.1f} ms)")
        if gap["target"] is None:
            lines.append(f"{head}; no target")
        elif gap["met"]:
            lines.append(f"{head}; target {gap['target']:.1f}x met")
        else:
            lines.append(f"{head}; target {gap['target']:.1f}x MISSED: needs <= {gap['allowed_ms']:.1f} ms, "
                         f"{gap['phalanx_ms'] - gap['allowed_ms']:.1f} ms over. Cause: {gap['cause']}")
    return lines


def fsm_lines(payloads: list[dict]) -> list[str]:
    """How each fsm policy was trained: episodes, seconds, why it stopped, batches vs bound."""
    lines = []
    for p in payloads:
        facts = p.get("policy_training") or {}
        meta = facts.get("fsm_training")
        if meta is None:
            continue
        budget = facts.get("fsm_budget", {})
        why = {"target": "reached the lower bound", "episodes": f"{budget.get('episodes')}-episode budget",
               "seconds": f"{budget.get('seconds'):g} s budget"}.get(meta.get("stopped"), meta.get("stopped"))
        lines.append(f"{p['model']} b={p['batch_size']}: fsm trained {meta['episodes']} episodes in "
                     f"{facts['fsm_training_s']:.1f} s ({why}), batches / bound {meta['best_ratio']:.3f}")
    return lines


def summary_table(payloads: list[dict]) -> Table:
    """``bench --all`` at a glance: per model and batch size, phalanx's fastest policy and its ratios;
    against DyNet, the issue's target where it sets one ("ok" or "missed")."""
    peers = any(p.get("dynet_gap") for p in payloads)
    hidden: dict[int, list[str]] = {}
    for p in payloads:
        hidden.setdefault(p["hidden"], []).append(p["model"])
    common = max(hidden, key=lambda h: len(hidden[h]), default=0)
    sizes = "; ".join([f"hidden {common}"] + [f"{', '.join(dict.fromkeys(ms))} {h}" for h, ms in hidden.items()
                                              if h != common])
    t = _table(f"summary: phalanx's fastest policy per model and batch size ({sizes})",
               ["model", "b", "best", "vs eager", "vs manual"] + (["vs DyNet", "target"] if peers else []))
    for p in payloads:
        ours = [r for r in p["rows"] if _headline(r) and "seconds_per_batch" in r]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["seconds_per_batch"])
        gap = p.get("dynet_gap") or {}
        target = gap.get("target")
        extra = [f"{gap['ratio']:.2f}x" if gap else "-",
                 "-" if target is None else f"{target:.1f}x " + ("ok" if gap["met"] else "missed")] if peers else []
        t.add_row(escape(p["model"]), str(p["batch_size"]),
                  escape(best["impl"].removeprefix("phalanx[").removesuffix("]")),
                  _ratio(best, "vs_eager"), _ratio(best, "vs_manual"), *extra)
    return t


def rounds(payload: dict) -> str:
    """How many mini-batches each median is over, e.g. '3 rounds of 4 mini-batches (eager: 1 round)'."""
    text = f"{payload['repeats']} round(s) of {payload['batches']} mini-batches"
    loops = payload.get("eager_repeats")
    if loops is not None and loops < payload["repeats"]:
        text += f" (eager, no-fibers: {loops} round(s))"
    return text


def settings_line(payloads: list[dict], threads: int) -> str:
    """What every ``bench --all`` median is over, said once: the common rounds, then the exceptions."""
    if not payloads:
        return "no models"
    kinds: dict[str, list[str]] = {}
    for p in payloads:
        kinds.setdefault(rounds(p), [])
        if p["model"] not in kinds[rounds(p)]:
            kinds[rounds(p)].append(p["model"])
    common = max(kinds, key=lambda k: len(kinds[k]))
    others = "; ".join(f"{', '.join(models)}: {k}" for k, models in kinds.items() if k != common)
    mode = "training" if payloads[0]["train"] else "inference"
    return (f"{mode}, {threads} thread(s); medians over {common}" + (f"; {others}" if others else "")
            + "; times are whole calls, recording to results")


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
