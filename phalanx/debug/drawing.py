"""Draws an Explanation with matplotlib: the graph laid out by depth (one color per batch) and the
batch timeline against the lower bound. No graph-layout library: rows are depths, and nodes of a
row are ordered by instance, then by batch, so one instance's nodes stay together."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PhalanxError

MAX_DRAWN_EDGES = 4000


def _colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def positions(graph, batch_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) per node: y = depth (sources on top), x = rank within its depth, spread to [0, 1]."""
    x = np.zeros(graph.num_nodes)
    y = -graph.node_depth.astype(float)
    for d in np.unique(graph.node_depth):
        at = np.flatnonzero(graph.node_depth == d)
        order = at[np.lexsort((batch_of[at], graph.node_inst[at]))]
        x[order] = (np.arange(len(order)) + 0.5) / len(order)
    return x, y


def draw(explanation, path: Path) -> Path:
    if path.suffix.lower() not in (".png", ".svg"):
        raise PhalanxError(f"explain: cannot draw to {path}: the file must end in .png or .svg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .explain import _batch_of

    g, sched = explanation.graph, explanation.schedule
    path.parent.mkdir(parents=True, exist_ok=True)
    if g.num_nodes == 0:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "empty mini-batch: nothing was recorded", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    batch_of = _batch_of(g, sched)
    colors = _colors(len(sched))
    fig, (ax_graph, ax_time) = plt.subplots(2, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [3, 2]},
                                           layout="constrained")
    x, y = positions(g, batch_of)
    producer, consumer = g.edges
    if len(producer) <= MAX_DRAWN_EDGES:
        for p, c in zip(producer.tolist(), consumer.tolist(), strict=True):
            ax_graph.plot([x[p], x[c]], [y[p], y[c]], color="0.8", linewidth=0.5, zorder=1)
    node_colors = [colors[b] for b in batch_of.tolist()]
    ax_graph.scatter(x, y, c=node_colors, s=max(8.0, 300.0 / max(g.num_nodes, 1) ** 0.5), zorder=2,
                     edgecolors="black", linewidths=0.3)
    ax_graph.set(title=f"recorded graph: {g.num_nodes} nodes, one color per batch ({len(sched)} batches, "
                       f"policy {sched.policy})", ylabel="depth", xticks=[])
    depths = sorted(set((-y).astype(int).tolist()))
    ax_graph.set_yticks([-d for d in depths][:: max(1, len(depths) // 12)],
                        [str(d) for d in depths][:: max(1, len(depths) // 12)])

    sizes = [len(b) for b in sched.batches]
    gathers = explanation.batch_gathers
    bars = ax_time.bar(range(len(sched)), sizes, color=colors, edgecolor="black", linewidth=0.3)
    for bar, n in zip(bars, gathers, strict=True):
        if n:
            bar.set_hatch("///")
    ax_time.axvline(explanation.bound - 0.5, color="red", linestyle="--", linewidth=1)
    ax_time.text(explanation.bound - 0.5, max(sizes, default=1), f" lower bound {explanation.bound}",
                 color="red", va="top", fontsize=8)
    if len(sched) <= 40:
        labels = [g.sigs[s].name.replace("cell ", "").replace("op ", "") for s in sched.sids]
        ax_time.set_xticks(range(len(sched)), labels, rotation=70, fontsize=6)
    ax_time.set(title="timeline: nodes per batch (hatched: an operand list was gathered)",
                xlabel="batch, in execution order", ylabel="nodes")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
