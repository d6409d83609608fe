"""``phalanx train MODEL``: options, the progress display and the final report (the CLI's parser
only adds these options and calls ``main``)."""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from . import checkpoint as ckpt
from .distributed import init_from_env, shutdown
from .loop import DEFAULTS, TrainConfig, Trainer
from .tasks import TASKS

# Options a resumed run takes from its checkpoint unless given; given ones must agree with it.
RESUMED = ("hidden", "lr", "batch_size", "seed", "policy", "eval_every", "max_sentences")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def default(key):
        return ", ".join(f"{m} {DEFAULTS[m][key]}" for m in sorted(DEFAULTS))

    parser.add_argument("model", choices=sorted(TASKS), help="tagger: UPOS per token (BiLSTM); treelstm: UPOS of "
                        "the sentence root (binary TreeLSTM over the binarized dependency tree)")
    parser.add_argument("--epochs", type=int, help=f"passes over the training split (default: {default('epochs')})")
    parser.add_argument("--hidden", type=int, help=f"hidden and embedding size (default: {default('hidden')})")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default: {default('lr')})")
    parser.add_argument("--batch-size", type=int,
                        help=f"global mini-batch, split over the ranks (default: {default('batch_size')})")
    parser.add_argument("--seed", type=int, help="seed of weights, data order and every RNG (default: 0)")
    parser.add_argument("--policy", choices=["depth", "agenda", "fsm"],
                        help="batching policy for training (default: fsm, learned before training on 4 "
                             "training mini-batches and saved with every checkpoint)")
    parser.add_argument("--out", metavar="DIR", help="checkpoints, metrics.json, learning-curve.png "
                        "(default: runs/MODEL)")
    parser.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (e.g. DIR/last.pt); the run "
                        "continues exactly as if it had not stopped (default: none, a fresh run)")
    parser.add_argument("--eval-every", type=int, metavar="STEPS",
                        help="dev accuracy (and checkpoints) every STEPS steps (default: 0 = every epoch)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in all, writing DIR/last.pt "
                        "(default: none)")
    parser.add_argument("--max-sentences", type=int, help="use at most this many sentences per split "
                        "(default: all: 1801 train, 200 dev, 2077 test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    parser.add_argument("--measure-throughput", action="store_true",
                        help="instead of training: time --throughput-steps steps on the same global batches "
                             "with 1 and with 2 local processes (gloo), and print sentences/s (default: off)")
    parser.add_argument("--throughput-steps", type=int, default=20, help="timed steps per measurement (default: 20)")
    parser.add_argument("--throughput-rounds", type=int, default=2,
                        help="measurements per process count, in alternating order; the fastest is kept (default: 2)")


def _config(args) -> TrainConfig:
    given = {k: getattr(args, k) for k in ("epochs", "hidden", "lr", "batch_size", "seed", "policy", "eval_every",
                                           "max_steps", "max_sentences")}
    given["threads"] = args.threads
    given["out"] = args.out or os.path.join("runs", args.model)
    if args.resume:
        saved = ckpt.load(args.resume)["config"]
        for key in RESUMED:
            if given[key] is None:
                given[key] = saved.get(key)
            elif key != "hidden" and given[key] != saved.get(key):   # hidden: a shape error names the file
                raise ckpt.CheckpointError(
                    f"checkpoint {args.resume} was trained with --{key.replace('_', '-')} {saved.get(key)!r}, "
                    f"this run asks for {given[key]!r}; omit the option to continue with the checkpoint's")
        if given["epochs"] is None:
            given["epochs"] = saved.get("epochs")
    return TrainConfig.with_defaults(args.model, **given)


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=150)


def main(args) -> int:
    torch.set_num_threads(args.threads)
    config = _config(args)
    console = _console()
    if args.measure_throughput:
        return _throughput(config, args.throughput_steps, args.throughput_rounds, console)
    ctx = init_from_env()
    try:
        return _train(config, args.resume, ctx, console)
    finally:
        shutdown(ctx)


def _train(config: TrainConfig, resume: str | None, ctx, console) -> int:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    start = time.perf_counter()
    task = TASKS[config.model](config.max_sentences)
    trainer = Trainer(task, config, ctx, resume=resume)
    main_rank = ctx.is_main
    if main_rank:
        console.print(f"[bold]{config.model}[/bold]: {len(task.train)} train / {len(task.dev)} dev / {len(task.test)} "
                      f"test examples, vocabulary {len(task.vocab)}, hidden {config.hidden}, batch {config.batch_size}"
                      f" over {ctx.world_size} process(es), Adam lr {config.lr}, policy {config.policy}, seed "
                      f"{config.seed}" + (f"; resumed at step {trainer.global_step} from {resume}" if resume else ""))
    total = config.epochs * trainer.steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    rate = {"t": time.perf_counter(), "sentences": 0, "value": 0.0}

    def on_step(t, batch, loss):
        now = time.perf_counter()
        rate["sentences"] += len(batch)
        if now - rate["t"] >= 1.0:   # throughput over the last second or more
            rate["value"] = rate["sentences"] / (now - rate["t"])
            rate["t"], rate["sentences"] = now, 0
        if progress is not None:
            progress.update(bar, completed=t.global_step, loss=loss, rate=rate["value"],
                            description=f"epoch {min(t.epoch + 1, config.epochs)}/{config.epochs}")

    def on_eval(t, accuracy, improved):
        if main_rank:
            note = " (best so far: saved best.pt)" if improved else ""
            console.print(f"step {t.global_step:5d}  epoch {t.epoch}  dev accuracy {accuracy:.4f}{note}")

    progress = None
    if main_rank:
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:6.0f} sent/s"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        bar = progress.add_task("training", total=total, completed=trainer.global_step, loss=float("nan"), rate=0.0)
        progress.start()
    try:
        trainer.train_steps(on_step=on_step, on_eval=on_eval)
    finally:
        if progress is not None:
            progress.stop()
    if not main_rank:
        return 0
    last = os.path.join(config.out, "last.pt")
    trainer.save(last)
    if trainer.epoch < config.epochs:
        console.print(f"stopped at step {trainer.global_step} (--max-steps); resume with --resume {last}")
        return 0
    best = os.path.join(config.out, "best.pt")
    if os.path.exists(best):
        trainer.load_weights(best)
    test_accuracy = trainer.accuracy(task.test)
    baseline = task.majority_accuracy(task.test)
    wall = time.perf_counter() - start
    unit = "tokens" if config.model == "tagger" else "sentences (root UPOS)"
    console.print(f"test accuracy {test_accuracy:.4f} over {task.loss_terms(task.test)} {unit} "
                  f"(best dev {trainer.best_dev:.4f}); majority-class baseline {baseline:.4f} "
                  f"(always {_tag(task.majority_class())}); wall time {wall:.1f} s in this process")
    metrics = {"model": config.model, "config": vars(config), "world_size": ctx.world_size,
               "test_accuracy": test_accuracy, "majority_baseline_test": baseline,
               "majority_baseline_dev": task.majority_accuracy(task.dev), "best_dev_accuracy": trainer.best_dev,
               "steps": trainer.global_step, "wall_s": wall, "history": trainer.history.to_dict(),
               "resumed_from": resume}
    with open(os.path.join(config.out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    from .plot import learning_curve

    png = os.path.join(config.out, "learning-curve.png")
    learning_curve(png, trainer.history, f"phalanx train {config.model}: hidden {config.hidden}, batch "
                   f"{config.batch_size}, Adam lr {config.lr}, {config.epochs} epochs",
                   baseline=task.majority_accuracy(task.dev), test_accuracy=test_accuracy)
    console.print(f"wrote {best}, {last}, {os.path.join(config.out, 'metrics.json')}, {png}")
    return 0


def _tag(label: int) -> str:
    from ..data import UPOS_TAGS

    return UPOS_TAGS[label]


def _throughput(config: TrainConfig, steps: int, rounds: int, console) -> int:
    from rich.table import Table

    from .workers import measure_throughput

    with console.status(f"timing {steps} training steps with 1 and with 2 processes, {rounds} round(s)"):
        rows = measure_throughput(config, (1, 2), steps=steps, rounds=rounds)
    table = Table(title=f"{config.model} training throughput, same global batches of {config.batch_size}, hidden "
                        f"{config.hidden}, policy {config.policy}, gloo on 127.0.0.1", title_justify="left")
    for col in ("processes", "threads/process", "steps", "seconds (fastest)", "every round (s)", "sentences/s",
                "vs 1 process"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["processes"]), str(r["threads_per_process"]), str(r["steps"]), f"{r['seconds']:.2f}",
                      " ".join(f"{x:.2f}" for x in r["rounds_s"]), f"{r['sentences_per_s']:.1f}",
                      f"{r['speedup']:.2f}x")
    console.print(table)
    os.makedirs(config.out, exist_ok=True)
    path = os.path.join(config.out, "throughput.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"config": vars(config), "cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows},
                  f, indent=1)
        f.write("\n")
    console.print(f"wrote {path}")
    return 0
