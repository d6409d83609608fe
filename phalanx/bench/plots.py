"""PNG plots of ``bench --all`` payloads (bench/suite.py): throughput vs batch size per
implementation, batches vs the lower bound per policy, and the time split per stage. One figure
per kind, one panel per model."""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import NullFormatter, NullLocator

_STAGES = (("record_s", "record"), ("schedule_s", "schedule"), ("plan_s", "plan"), ("execute_s", "execute"),
           ("backward_s", "backward"))


def _figure(models: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, max(len(models), 1))
    rows = math.ceil(max(len(models), 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False,
                             layout="constrained")
    fig.suptitle(title)
    flat = list(axes.flat)
    for ax in flat[len(models):]:
        ax.set_visible(False)
    return plt, fig, dict(zip(models, flat, strict=False))


def _by_model(payloads: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for p in payloads:
        if p["rows"]:
            found.setdefault(p["model"], []).append(p)
    return {m: sorted(ps, key=lambda p: p["batch_size"]) for m, ps in found.items()}


def throughput(payloads: list[dict], path: Path) -> None:
    models = _by_model(payloads)
    plt, fig, axes = _figure(list(models), "instances/s vs batch size (higher is better)")
    for model, ps in models.items():
        ax = axes[model]
        impls = list(dict.fromkeys(r["impl"] for p in ps for r in p["rows"] if "instances_per_s" in r))
        for impl in impls:
            points = [(p["batch_size"], r["instances_per_s"]) for p in ps for r in p["rows"]
                      if r["impl"] == impl and "instances_per_s" in r]
            style = "--" if impl.startswith("dynet") else ":" if impl in ("eager", "manual") else "-"
            ax.plot(*zip(*points, strict=True), style, marker="o", label=impl)
        ax.set(title=model, xlabel="batch size", ylabel="instances/s", xscale="log", yscale="log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([p["batch_size"] for p in ps], [str(p["batch_size"]) for p in ps])
        ax.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    _save(plt, fig, path)


def batches_vs_bound(payloads: list[dict], path: Path) -> None:
    models = _by_model(payloads)
    plt, fig, axes = _figure(list(models), "batches / lower bound per policy (1.0 is the bound)")
    for model, ps in models.items():
        ax = axes[model]
        policies = [r["policy"] for r in ps[0]["schedules"] if r.get("batches") is not None and r["policy"] != "lower bound"]
        width = 0.8 / max(len(ps), 1)
        for k, p in enumerate(ps):
            ratios = {r["policy"]: r["vs_bound"] for r in p["schedules"] if r.get("batches") is not None}
            xs = [i + k * width for i in range(len(policies))]
            ax.bar(xs, [ratios.get(name, 0.0) for name in policies], width, label=f"batch {p['batch_size']}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + width * (len(ps) - 1) / 2 for i in range(len(policies))], policies)
        ax.set(title=model, ylabel="batches / lower bound")
        ax.legend(fontsize=7)
    _save(plt, fig, path)


def time_split(payloads: list[dict], path: Path) -> None:
    models = _by_model(payloads)
    plt, fig, axes = _figure(list(models), "time per stage, largest batch size (ms per mini-batch)")
    for model, ps in models.items():
        ax = axes[model]
        rows = [r for r in ps[-1]["rows"] if "record_s" in r]
        left = [0.0] * len(rows)
        for key, label in _STAGES:
            if key == "backward_s" and not any(r[key] for r in rows):
                continue
            ms = [1e3 * r[key] for r in rows]
            ax.barh([r["impl"] for r in rows], ms, left=left, label=label)
            left = [a + b for a, b in zip(left, ms, strict=True)]
        ax.set(title=f"{model}, batch {ps[-1]['batch_size']}", xlabel="ms")
        ax.invert_yaxis()
        ax.legend(fontsize=7, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(payloads: list[dict], directory: str) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "throughput.png", out / "batches_vs_bound.png", out / "time_split.png"]
    for draw, path in zip((throughput, batches_vs_bound, time_split), paths, strict=True):
        draw(payloads, path)
    return paths
