"""The ``phalanx`` command: ``bench`` (side-by-side benchmark) and ``explain`` (one flush, shown)."""
from __future__ import annotations

import argparse
import shlex
import sys

import torch

from .bench import harness, report
from .bench.workloads import WORKLOADS


def _bench(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    torch.set_num_threads(args.threads)
    console = _console()
    workload = WORKLOADS[args.model](args.batch_size, args.hidden, args.batches, args.seed)
    if not workload.batches:
        console.print(f"[red]not enough {args.model} instances for one batch of {args.batch_size}")
        return 2
    plans = [False if p == "off" else p for p in args.plan]
    impls = harness.build_impls(workload, args.policy, args.train, plans)
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
    if args.json:
        report.write_json(args.json, {"command": "phalanx " + " ".join(map(shlex.quote, sys.argv[1:])),
                                      "model": args.model, "hidden": args.hidden, "batch_size": args.batch_size,
                                      "train": args.train, "environment": report.environment(args.threads),
                                      "rows": rows})
        console.print(f"wrote {args.json}")
    return 0


def _explain(args) -> int:
    from rich.console import Console

    from .api import Batcher
    from .schedule import format_schedule

    torch.set_num_threads(args.threads)
    workload = WORKLOADS[args.model](args.batch_size, args.hidden, 1, args.seed)
    model = workload.copy_model()
    batcher = Batcher(workload.phalanx_fn(model, False), policy=args.policy)
    batch = workload.batches[0]
    graph = batcher.record(batch)
    schedule = batcher.policy.schedule(graph)
    with torch.no_grad():
        batcher(batch)
    console = _console()
    console.print(f"[bold]{args.model}[/bold], {len(batch)} instances: {batcher.stats}")
    console.print("op types:")
    for sid in graph.used_sids:
        sig = graph.sigs[sid]
        mode = sig.kernel.mode if sig.kernel is not None else "-"
        console.print(f"  {sid:3d}  {int((graph.node_sig == sid).sum()):6d} nodes  {mode:6s}  {sig.describe()}")
    console.print(format_schedule(graph, schedule), markup=False, highlight=False)
    return 0


def _console():
    from rich.console import Console

    console = Console()
    # Piped output (CI logs, files) gets a width that fits the whole table.
    return console if console.is_terminal else Console(width=170)


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
    bench.add_argument("--policy", nargs="+", default=["depth", "agenda"])
    bench.add_argument("--plan", nargs="+", default=["off"], choices=["off", "auto", "instance", "pqtree"],
                       help="memory planning strategies to compare (off = schedule-order layout)")
    bench.add_argument("--train", action="store_true", help="forward + backward + SGD step")
    bench.add_argument("--batches", type=int, default=4, help="distinct mini-batches of real data")
    bench.add_argument("--repeats", type=int, default=3, help="timed rounds over those mini-batches")
    bench.add_argument("--json", metavar="FILE")
    bench.set_defaults(run=_bench)

    explain = sub.add_parser("explain", parents=[common], help="record one mini-batch; show op types and schedule")
    explain.add_argument("--policy", default="depth")
    explain.set_defaults(run=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
