"""phalanx: batch per-instance PyTorch models.

Commands: bench (eager vs manual vs phalanx policies vs peers, side by side; --all for the whole
zoo with plots), schedules (batches per policy vs the lower bound and the optimum), policy train
(learn and save an fsm policy), explain (draw and diagnose what the scheduler did) and train
(train a model on UD English EWT: dev accuracy, checkpoints, test accuracy; phalanx/train/)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import torch

from rich.markup import escape

from .bench import harness, report
from .errors import PhalanxError
from .bench.workloads import WORKLOADS, design_hidden

def _settings(args):
    from .bench.suite import Settings

    chosen = dict(policies=tuple(args.policy), plans=tuple(False if p == "off" else p for p in args.plan),
                  plan_objective=args.plan_objective, cells=tuple(c == "on" for c in args.cells),
                  reuse=tuple({"off": False, "on": True, "plans": "plans"}[r] for r in args.reuse), train=args.train, seed=args.seed, threads=args.threads,
                  peers=tuple(args.peers), policy_file=args.policy_file)
    for name in ("fsm_seconds", "fsm_episodes"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    given = {k: v for k, v in (("hidden", args.hidden), ("batches", args.batches), ("repeats", args.repeats)) if v is not None}
    if args.batch_size is not None:
        given["batch_sizes"] = (args.batch_size,)
    base = Settings.quick() if args.quick else Settings()
    if not args.all and "batch_sizes" not in given:
        given["batch_sizes"] = (64,) if not args.quick else (32,)
    return Settings(**{**base.__dict__, **chosen, **given})


def _bench(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench import suite

    if (args.model is None) == (not args.all):
        raise SystemExit("phalanx bench: give one MODEL or --all")
    if args.all and args.policy_file:
        raise SystemExit("phalanx bench: --policy-file holds one model's policy; use it without --all")
    if args.scaling:
        return _scaling(args)
    settings = _settings(args)
    if not args.all:
        settings.models = (args.model,)
    torch.set_num_threads(settings.threads)
    console = _console()
    mode = "training" if settings.train else "inference"
    total = sum(suite.progress_units(settings, m) for m in settings.models) * len(settings.batch_sizes)
    command = "phalanx " + " ".join(map(shlex.quote, sys.argv[1:] if args.argv is None else args.argv))
    start = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(mode, total=total)
        done = {"units": 0}

        def tick(where: str, what: str | None) -> None:
            if what is not None:
                progress.update(task, advance=1, description=f"{where} {mode}: {what}")
                return
            # One model at one batch size finished: count its units as done (it may have run fewer).
            done["units"] += suite.progress_units(settings, where.split(" ")[0])
            progress.update(task, completed=done["units"])

        def save(payloads: list[dict], complete: bool = False) -> None:
            for payload in payloads:
                payload["command"] = command
                payload["environment"] = report.environment(settings.threads)
            if args.json and args.all:      # after every model: a stopped run keeps what it measured
                report.write_json(args.json, {"command": command, "complete": complete,
                                              "wall_s": time.perf_counter() - start, "payloads": payloads})

        payloads = suite.run_all(settings, tick, save)
    save(payloads, complete=True)
    if args.all:
        console.print(report.settings_line(payloads, settings.threads), highlight=False, markup=False)
        for model in settings.models:
            for t in report.zoo_tables(model, [p for p in payloads if p["model"] == model]):
                console.print(t)
    else:
        p = payloads[0]
        title = (f"{p['model']} {mode}, hidden {p['hidden']}, batch {p['batch_size']}, {settings.threads} thread(s), "
                 f"median over {report.rounds(p)}; paired: median of manual/this over steps run back "
                 f"to back")
        report.print_tables(p["rows"], title, settings.train, console)
        if p["schedules"]:
            console.print(report.schedule_table(f"{p['model']}: batches over the same {p['batches']} mini-batches",
                                                p["schedules"]))
    for note in dict.fromkeys(n for p in payloads for n in p["notes"]):
        console.print(note, highlight=False, markup=False)
    for p in payloads:
        for line in report.notes(p["rows"]):
            console.print(f"{p['model']} b={p['batch_size']}: {line}", highlight=False, markup=False)
    for line in report.fsm_lines(payloads):
        console.print(line, highlight=False, markup=False)
    if args.all:
        console.print(report.summary_table(payloads))
        per_model: dict[str, float] = {}
        for p in payloads:
            per_model[p["model"]] = per_model.get(p["model"], 0.0) + p["wall_s"]
        console.print(f"wall time {time.perf_counter() - start:.0f} s; per model (both batch sizes, fsm training "
                      "and peers included): " + ", ".join(f"{m} {s:.0f} s" for m, s in per_model.items()),
                      highlight=False, markup=False)
    gaps = report.gap_lines(payloads)
    if gaps:
        console.print("against DyNet's fastest strategy, same thread count:", highlight=False)
    for line in gaps:
        console.print(line, highlight=False, markup=False)
    if args.json:
        if not args.all:
            report.write_json(args.json, payloads[0])
        console.print(f"wrote {args.json}", highlight=False)
    if args.plot:
        from .bench import plots

        for path in plots.write_all(payloads, args.plot):
            console.print(f"wrote {path}", highlight=False)
    return 0


def _scaling(args) -> int:
    from .bench import scaling

    if args.all or args.peers or args.policy_file or args.plan != ["off"]:
        raise SystemExit("phalanx bench: --scaling times one model with plain policies "
                         "(no --all, --peers, --policy-file or --plan)")
    torch.set_num_threads(args.threads)
    console = _console()
    with console.status("scaling") as status:
        payload = scaling.run_scaling(
            args.model, args.scaling, args.hidden or design_hidden(args.model), list(args.policy), args.train,
            instances=args.scaling_instances, repeats=args.repeats or 3, eager_max=args.eager_max, seed=args.seed,
            progress=lambda what: status.update(f"scaling {args.model}: {escape(what)}"))
    payload["command"] = "phalanx " + " ".join(map(shlex.quote, sys.argv[1:] if args.argv is None else args.argv))
    payload["environment"] = report.environment(args.threads)
    console.print(scaling.scaling_table(payload))
    if args.json:
        report.write_json(args.json, payload)
        console.print(f"wrote {args.json}", highlight=False)
    return 0


def _explain(args) -> int:
    from .api import Batcher
    from .debug.explain import explain

    torch.set_num_threads(args.threads)
    workload = WORKLOADS[args.model](args.batch_size, args.hidden, 1, args.seed)
    if not workload.batches:
        raise SystemExit(f"phalanx explain: not enough {args.model} instances for one batch of {args.batch_size}")
    model = workload.copy_model()
    batcher = Batcher(workload.phalanx_fn(model, args.train), policy=args.policy, profile=True)
    with torch.set_grad_enabled(args.train):
        explanation = explain(batcher, workload.batches[0], out=args.out, train=args.train,
                              reduce=workload.reduce if args.train else None)
    console = _console()
    console.print(explanation.text(), markup=False, highlight=False)
    if args.out:
        console.print(f"wrote {args.out}", highlight=False)
    return 0


def _console():
    from rich.console import Console

    # A terminal's own width (or $COLUMNS); piped output (CI logs, files) gets 100 columns. Every
    # table is built to fit 80.
    console = Console()
    return console if console.is_terminal or os.environ.get("COLUMNS") else Console(width=100)


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" unless the option has no default or its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] \
                or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def _model_options(parser: argparse.ArgumentParser, optional_model: bool = False) -> None:
    models = ", ".join(sorted(WORKLOADS))
    if optional_model:
        parser.add_argument("model", nargs="?", choices=sorted(WORKLOADS), metavar="MODEL",
                            help=f"workload to run ({models}); or --all")
        parser.add_argument("--batch-size", type=int, help="instances per mini-batch (default: 64; --quick: 32; "
                            "--all: 8 and 64, --all --quick: 8 and 32)")
        parser.add_argument("--hidden", type=int, help="hidden size (default: DESIGN's per model, 256 and "
                            "MV-RNN 64; --quick: 64)")
    else:
        parser.add_argument("model", choices=sorted(WORKLOADS), metavar="MODEL", help=f"workload ({models})")
        parser.add_argument("--batch-size", type=int, default=64, help="instances per mini-batch")
        parser.add_argument("--hidden", type=int, default=256, help="hidden size")
    parser.add_argument("--threads", type=int, default=1, help="torch (and peer) threads")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and policy training")


def _ablation(args) -> int:
    from .bench.ablation import print_tables, run_ablation

    torch.set_num_threads(args.threads)
    payloads = []
    for model in args.models:
        for hidden in args.hidden:
            payloads.append(run_ablation(model, hidden, args.batch_size, args.train, args.batches, args.repeats,
                                         args.policy, tuple(args.variants)))
            print_tables(payloads[-1:])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"argv": args.argv, "threads": args.threads, "payloads": payloads}, f, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phalanx", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    policies = ["depth", "agenda", "fsm"]

    def add(parent, name, text, optional_model=False):
        p = parent.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)
        if name != "policy":
            _model_options(p, optional_model)
        return p

    bench = add(sub, "bench", "eager vs manual vs phalanx policies (and peers), side by side", optional_model=True)
    bench.add_argument("--all", action="store_true", help="every model at two batch sizes: tables per model")
    bench.add_argument("--quick", action="store_true", help="small sizes, one timed mini-batch (about a minute)")
    bench.add_argument("--policy", nargs="+", default=policies, choices=policies, metavar="POLICY",
                       help="phalanx policies to time: depth, agenda, fsm")
    bench.add_argument("--policy-file", metavar="FILE", help="use this saved fsm policy instead of training one")
    bench.add_argument("--fsm-seconds", type=float, help="budget of each fsm training on held-out mini-batches, "
                       "in seconds (default: 10; --quick: 1); the output says how many episodes ran")
    bench.add_argument("--fsm-episodes", type=int, help="episode budget of each fsm training (default: 1000)")
    bench.add_argument("--plan", nargs="+", default=["off"], choices=["off", "auto", "instance", "producer", "pqtree"],
                       metavar="PLAN", help="memory planning strategies to compare: off (schedule-order layout), "
                       "auto, instance, producer, pqtree")
    bench.add_argument("--plan-objective", default="bytes", choices=["bytes", "lists"],
                       help="planner objective: bytes read in place, or operand lists read in place")
    bench.add_argument("--cells", nargs="+", default=["on"], choices=["off", "on"],
                       help="Batcher(cells=...) to compare: on (traced programs: input split, hoisting, merged "
                       "matmuls, in-place inference; the default) and/or off (the cells' own code on stacked rows, "
                       "checked by the probe); 'off' rows end in +probe")
    bench.add_argument("--reuse", nargs="+", default=["off"], choices=["off", "on", "plans"],
                       help="Batcher(reuse=...) to compare: on replays each instance's recording from an earlier "
                       "epoch (every batch is seen once before timing; reuse_plans=False, as for shuffled "
                       "epochs); plans also reuses a whole mini-batch's plan when the same one comes again (an "
                       "evaluation loop); their rows end in +reuse and +reuse+plans")
    bench.add_argument("--train", action="store_true", help="time forward + backward + SGD step")
    bench.add_argument("--batches", type=int, help="distinct mini-batches of real data (default: 4; --quick: 1)")
    bench.add_argument("--repeats", type=int, help="timed rounds over those mini-batches (default: 3; --quick: 2)")
    bench.add_argument("--peers", nargs="*", default=[], choices=["dynet"],
                       help="other systems to time on the same workload (needs pip install 'phalanx[peers]')")
    bench.add_argument("--scaling", nargs="+", type=int, metavar="SIZE",
                       help="instead: us per instance and per node at these batch sizes (e.g. 1 8 64 256 1024)")
    bench.add_argument("--scaling-instances", type=int, default=256,
                       help="--scaling: instances timed per round at every batch size (at least one mini-batch)")
    bench.add_argument("--eager-max", type=int, default=64,
                       help="--scaling: skip eager above this batch size (its per-instance cost is flat)")
    bench.add_argument("--json", metavar="FILE", help="write every row and setting as JSON")
    bench.add_argument("--plot", metavar="DIR", help="write PNG plots (throughput, batches, time split)")
    bench.set_defaults(run=_bench)

    schedules = add(sub, "schedules", "batches of every policy vs the lower bound and the exact optimum")
    schedules.add_argument("--policy", nargs="+", default=policies, choices=policies, metavar="POLICY",
                           help="policies to compare: depth, agenda, fsm")
    schedules.add_argument("--policy-file", metavar="FILE", help="use this saved fsm policy instead of training one")
    schedules.add_argument("--batches", type=int, default=4, help="mini-batches to schedule")
    schedules.add_argument("--optimal-max-nodes", type=int, default=200,
                           help="run the exact optimum only on graphs up to this many nodes")
    schedules.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    schedules.set_defaults(run=_schedules)

    policy = add(sub, "policy", "learned batching policies")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_train = add(policy_sub, "train", "learn an fsm policy on held-out mini-batches and save it")
    policy_train.add_argument("--out", required=True, metavar="FILE", help="where to save the policy (JSON)")
    policy_train.add_argument("--samples", type=int, default=4, help="sample mini-batches to learn on")
    policy_train.add_argument("--encoding", default="sort", choices=["sort", "base", "max"],
                              help="frontier encoding of the learned table")
    policy_train.add_argument("--max-episodes", type=int, default=1000, help="Q-learning episodes at most")
    policy_train.add_argument("--train", action="store_true", help="learn on the training graph (loss)")
    policy_train.set_defaults(run=_policy_train)

    explain = add(sub, "explain", "draw and diagnose what the scheduler did for one small mini-batch")
    explain.set_defaults(batch_size=4)
    explain.add_argument("--policy", default="depth", choices=policies, help="batching policy")
    explain.add_argument("--train", action="store_true", help="profile forward and backward of the loss")
    explain.add_argument("--out", metavar="FILE", help="draw the graph and the batch timeline (.png or .svg)")
    explain.set_defaults(run=_explain)

    from .bench.ablation import VARIANTS
    from .bench.workloads import WORKLOADS

    ablation = sub.add_parser("ablation", formatter_class=_HelpFormatter,
                              help="the ahead-of-time cell optimizations switched off one at a time, side by side",
                              description="the ahead-of-time cell optimizations switched off one at a time, "
                              "side by side with manual, in one run per model and hidden size")
    ablation.add_argument("models", nargs="+", choices=sorted(WORKLOADS), metavar="MODEL",
                          help=f"workloads ({', '.join(sorted(WORKLOADS))})")
    ablation.add_argument("--hidden", nargs="+", type=int, default=[64, 256], help="hidden sizes")
    ablation.add_argument("--batch-size", type=int, default=64, help="instances per mini-batch")
    ablation.add_argument("--train", action="store_true", help="time forward + backward + SGD step")
    ablation.add_argument("--policy", default="depth", choices=policies, help="batching policy of every variant")
    ablation.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="V",
                          help=f"variants to time ({', '.join(VARIANTS)})")
    ablation.add_argument("--batches", type=int, default=4, help="distinct mini-batches of real data")
    ablation.add_argument("--repeats", type=int, default=3, help="timed rounds over those mini-batches")
    ablation.add_argument("--threads", type=int, default=1, help="torch threads")
    ablation.add_argument("--json", metavar="FILE", help="write every row as JSON")
    ablation.set_defaults(run=_ablation)

    from .train import command as train_command

    train = sub.add_parser("train", help="train a model on UD English EWT: dev accuracy, checkpoints, test accuracy")
    train_command.add_arguments(train)
    train.set_defaults(run=train_command.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except PhalanxError as e:
        # Bad input (a policy file, a model): one clear line, no traceback.
        print(f"phalanx: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
