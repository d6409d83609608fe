"""The learning curve of a run as a PNG: training loss per step (and its running mean) on the left
axis, dev accuracy at each evaluation and the majority-class baseline on the right."""
from __future__ import annotations

import numpy as np


def running_mean(values: list[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or window <= 1:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (cumsum[i + 1] - cumsum[lo]) / (i + 1 - lo)
    return out


def learning_curve(path: str, history, title: str, baseline: float | None = None,
                   test_accuracy: float | None = None) -> None:
    """Write ``path`` (PNG). ``history``: loop.History."""
    import matplotlib

    matplotlib.use("Agg")   # files only; never a display
    import matplotlib.pyplot as plt

    fig, loss_ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    loss_ax.plot(history.step, history.loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss (step)")
    window = max(1, len(history.loss) // 30)
    loss_ax.plot(history.step, running_mean(history.loss, window), color="tab:blue", linewidth=1.6,
                 label=f"train loss (mean of {window})")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("train loss (mean cross-entropy)", color="tab:blue")
    acc_ax = loss_ax.twinx()
    acc_ax.plot(history.dev_step, history.dev_accuracy, "o-", color="tab:red", markersize=3.5, label="dev accuracy")
    if baseline is not None:
        acc_ax.axhline(baseline, color="gray", linestyle="--", linewidth=1,
                       label=f"majority-class baseline, dev ({baseline:.3f})")
    if test_accuracy is not None:
        acc_ax.axhline(test_accuracy, color="tab:green", linestyle=":", linewidth=1.2,
                       label=f"test accuracy, best dev checkpoint ({test_accuracy:.3f})")
    acc_ax.set_ylabel("accuracy", color="tab:red")
    acc_ax.set_ylim(0, 1)
    lines = loss_ax.get_legend_handles_labels()
    more = acc_ax.get_legend_handles_labels()
    acc_ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    loss_ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
