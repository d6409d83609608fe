"""The ``phalanx`` command: ``bench`` (eager vs manual vs phalanx, side by side), ``schedules``
(batches per policy vs the lower bound and the optimum), ``policy train`` (learn and save an fsm
policy) and ``explain`` (one mini-batch: op types, where the time goes, the schedule)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from .bench import harness, report
from .bench.workloads import WORKLOADS


def _bench(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    torch.set_num_threads(args.threads)
    console = _console()
    workload = WORKLOADS[args.model](args.batch_size, args.hidden, args.batches, args.seed)
    if not workload.batches:
        console.print(f"[red]not enough {args.model} instances for one batch of {args.batch_size}")
        return 2
    if workload.decides and "fsm" in args.policy:
        console.print(f"[red]{args.model} decides on its own values (fibers): the fsm policy trains on one "
                      f"recorded graph per batch, which such models do not have; use --policy depth agenda")
        return 2
    plans = [False if p == "off" else p for p in args.plan]
    with console.status("preparing policies (fsm trains on held-out mini-batches)"):
        policies, facts = harness.resolve_policies(workload, args.policy, args.train, args.policy_file, args.seed)
    impls = harness.build_impls(workload, policies, args.train, plans, args.plan_objective)
    total = len(impls) * (1 + args.repeats * len(workload.batches))
    mode = "training" if args.train else "inference"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"{args.model} {mode}", total=total)
        harness.measure(workload, impls, args.train, args.repeats,
                        progress=lambda what: progress.update(task, advance=1, description=f"{args.model} {mode}: {what}"))
    rows = harness.summarize(workload, impls, args.batch_size)
    title = (f"{args.model} {mode}, hidden {args.hidden}, batch {args.batch_size}, {args.threads} thread(s), "
             f"median of {args.repeats * len(workload.batches)} mini-batches")
    report.print_table(rows, title, args.train, console)
    if workload.decides:   # one graph per flush round, not per batch: no schedule comparison
        schedules = []
        console.print(f"'vs manual' is vs {workload.baseline_name}; flush rounds per call: "
                      + ", ".join(f"{r['impl']} {r['rounds']:.0f}" for r in rows if "rounds" in r))
    else:
        schedules = harness.schedule_rows(workload, policies, args.train)
        console.print(report.schedule_table(f"{args.model}: batches over the same {len(workload.batches)} "
                                            f"mini-batches", schedules))
    if "fsm_training_s" in facts:
        console.print(f"fsm trained on {len(workload.held_out)} held-out mini-batches in "
                      f"{facts['fsm_training_s']:.2f} s ({facts['fsm_training'].get('episodes', '?')} episodes)")
    if args.json:
        report.write_json(args.json, {"command": "phalanx " + " ".join(map(shlex.quote, sys.argv[1:])),
                                      "model": args.model, "hidden": args.hidden, "batch_size": args.batch_size,
                                      "train": args.train, "environment": report.environment(args.threads),
                                      "rows": rows, "schedules": schedules, "policy_training": facts})
        console.print(f"wrote {args.json}")
    return 0


def _explain(args) -> int:
    from .api import Batcher
    from .schedule import format_schedule

    torch.set_num_threads(args.threads)
    workload = WORKLOADS[args.model](args.batch_size, args.hidden, 1, args.seed)
    model = workload.copy_model()
    batcher = Batcher(workload.phalanx_fn(model, args.train), policy=args.policy, profile=True)
    batch = workload.batches[0]
    for _ in range(2):                   # the first call warms up: batching probes, fsm training
        batcher.stats.per_op.clear()
        results = batcher(batch)
        if args.train:
            workload.reduce(results).backward()
    graph = batcher.record(batch)
    schedule = batcher.policy.schedule(graph)
    console = _console()
    console.print(f"[bold]{args.model}[/bold], {len(batch)} instances: {batcher.stats}")
    console.print("op types:")
    for sid in graph.used_sids:
        sig = graph.sigs[sid]
        mode = sig.kernel.mode if sig.kernel is not None else "-"
        console.print(f"  {sid:3d}  {int((graph.node_sig == sid).sum()):6d} nodes  {mode:6s}  {sig.describe()}")
    from rich.table import Table

    profile = Table(title="where the time goes (second call, per op type)", title_justify="left")
    for col in ("op type", "batches", "nodes", "nodes/batch", "forward ms", "backward ms"):
        profile.add_column(col, justify="left" if col == "op type" else "right")
    for name, row in sorted(batcher.stats.per_op.items(), key=lambda kv: -kv[1]["forward_s"] - kv[1]["backward_s"]):
        profile.add_row(name, str(row["batches"]), str(row["nodes"]), f"{row['nodes'] / max(row['batches'], 1):.1f}",
                        f"{1e3 * row['forward_s']:.2f}", f"{1e3 * row['backward_s']:.2f}" if args.train else "-")
    console.print(profile)
    console.print(format_schedule(graph, schedule), markup=False, highlight=False)
    return 0


def _console():
    from rich.console import Console

    console = Console()
    # Piped output (CI logs, files) gets a width that fits the whole table.
    return console if console.is_terminal else Console(width=170)


def _schedules(args) -> int:
    workload = WORKLOADS[args.model](args.batch_size, args.hidden, args.batches, args.seed)
    policies, _ = harness.resolve_policies(workload, args.policy, False, args.policy_file, args.seed)
    rows = harness.schedule_rows(workload, policies, False, args.optimal_max_nodes)
    _console().print(report.schedule_table(
        f"{args.model}, batch {args.batch_size}: batches over {len(workload.batches)} mini-batches", rows))
    if args.json:
        report.write_json(args.json, {"command": "phalanx " + " ".join(map(shlex.quote, sys.argv[1:])), "rows": rows})
    return 0


def _policy_train(args) -> int:
    from .schedule.fsm import FSMPolicy

    workload = WORKLOADS[args.model](args.batch_size, args.hidden, 0, args.seed)
    samples = workload.held_out[:args.samples]
    start = time.perf_counter()
    policy = FSMPolicy.train(workload.phalanx_fn(workload.model, args.train), samples, encoding=args.encoding,
                             seed=args.seed, max_episodes=args.max_episodes, progress=True)
    policy.save(args.out)
    meta = policy.metadata
    _console().print(f"trained on {len(samples)} mini-batches of {args.batch_size} in {time.perf_counter() - start:.2f} s; "
                     f"greedy batches / lower bound = {meta.get('best_ratio', float('nan')):.3f}; wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phalanx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", choices=sorted(WORKLOADS))
    common.add_argument("--batch-size", type=int, default=64)
    common.add_argument("--hidden", type=int, default=256)
    common.add_argument("--threads", type=int, default=1)
    common.add_argument("--seed", type=int, default=0)

    bench = sub.add_parser("bench", parents=[common], help="eager vs manual vs phalanx policies, side by side")
    bench.add_argument("--policy", nargs="+", default=["depth", "agenda", "fsm"],
                       choices=["depth", "agenda", "fsm"])
    bench.add_argument("--policy-file", metavar="FILE", help="use this saved fsm policy instead of training one")
    bench.add_argument("--plan", nargs="+", default=["off"], choices=["off", "auto", "instance", "producer", "pqtree"],
                       help="memory planning strategies to compare (off = schedule-order layout)")
    bench.add_argument("--plan-objective", default="bytes", choices=["bytes", "lists"],
                       help="planner objective: bytes read in place, or operand lists read in place")
    bench.add_argument("--train", action="store_true", help="forward + backward + SGD step")
    bench.add_argument("--batches", type=int, default=4, help="distinct mini-batches of real data")
    bench.add_argument("--repeats", type=int, default=3, help="timed rounds over those mini-batches")
    bench.add_argument("--json", metavar="FILE")
    bench.set_defaults(run=_bench)

    schedules = sub.add_parser("schedules", parents=[common],
                               help="batches of every policy vs the lower bound and the exact optimum")
    schedules.add_argument("--policy", nargs="+", default=["depth", "agenda", "fsm"], choices=["depth", "agenda", "fsm"])
    schedules.add_argument("--policy-file", metavar="FILE")
    schedules.add_argument("--batches", type=int, default=4)
    schedules.add_argument("--optimal-max-nodes", type=int, default=200)
    schedules.add_argument("--json", metavar="FILE")
    schedules.set_defaults(run=_schedules)

    policy = sub.add_parser("policy", help="learned batching policies")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    policy_train = policy_sub.add_parser("train", parents=[common], help="learn an fsm policy and save it")
    policy_train.add_argument("--out", required=True, metavar="FILE")
    policy_train.add_argument("--samples", type=int, default=4, help="sample mini-batches to learn on")
    policy_train.add_argument("--encoding", default="sort", choices=["sort", "base", "max"])
    policy_train.add_argument("--max-episodes", type=int, default=1000)
    policy_train.add_argument("--train", action="store_true", help="learn on the training graph (loss)")
    policy_train.set_defaults(run=_policy_train)

    explain = sub.add_parser("explain", parents=[common], help="record one mini-batch; show op types and schedule")
    explain.add_argument("--policy", default="depth", choices=["depth", "agenda", "fsm"])
    explain.add_argument("--train", action="store_true", help="profile forward and backward of the loss")
    explain.set_defaults(run=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
