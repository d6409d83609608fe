"""Tabular Q-learning of an FSM policy table (ED-Batch), on several sample graphs of one model.

One episode schedules one sample graph (round robin over the samples) from its initial frontier
to the end. State = the frontier's encoding (fsm.encode), action = an op type in the frontier,
step = run all its ready nodes, reward = ``-1 + |ready(a)| / |typewise_frontier(a)|``
(typewise.py). Hyper-parameters follow ED-Batch: 10-step returns, discount 1, learning rate 0.4,
epsilon-greedy from 0.5, x0.9 per episode, floor 0.05, at most 1000 episodes.

NOTE: [Bootstrap] The n-step target is ``r_t + ... + r_{t+n-1} + max_a Q(s_{t+n}, a)``, the max
over the actions available in ``s_{t+n}`` (its frontier types). A state or action never updated
has Q = 0. Rewards are <= 0, so 0 is optimistic: untried actions look best, which drives
exploration, and their values fall to the truth as they are tried. (ED-Batch's reference code
started its running max at 0, so its bootstrap term was always 0 and Q-learning degenerated into
Monte-Carlo over n steps; we take the max over the state's own Q values.)

NOTE: [Reward] ``reward="typewise"`` (the default) is ED-Batch's shaped reward above; its episode
return is ``-#batches + sum of |ready| / |typewise frontier|``, which is NOT a monotone function of
the batch count: on lattices whose words all end at the last char, running chars first reaches the
lower bound but scores a lower return (chars blocked at the last position keep C's batches partial)
than the largest-ready-first schedule with more batches (e.g. 38 vs 33 over three samples of 16
lattices), so Q-learning may prefer the latter.
``reward="batch"`` (-1 per batch) is exactly the objective. Either way the kept table is the one
with the fewest greedy batches, so training never returns a table worse than the greedy fallback
on the samples.

Every ``eval_every`` episodes (and before the first) the greedy table ``argmax_a Q(s, a)`` is
scored: total batches over all samples, scheduled exactly as FSMPolicy would (greedy fallback in
unseen states). The best table is kept; training stops once it is within ``target_ratio`` (1%) of
the sum of the samples' lower bounds, after ``max_episodes``, or (optional) once ``max_seconds`` of
training have passed: a budget for callers that must finish in bounded time (``phalanx bench``),
at the price of determinism (how many episodes fit depends on the machine). ``stopped`` says which. Everything random draws from one ``numpy.random.Generator``
seeded by ``seed``, so training is deterministic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import PhalanxError
from ..ir.graph import GraphArrays
from .base import Frontier
from .bound import lower_bound
from .fsm import ENCODINGS, StateKey, TypeView, encode, stable_type_names
from .typewise import TypewiseFrontier, TypewiseLinks

REWARDS = ("typewise", "batch")

ProgressCallback = Callable[[int, int, int], None]
"""``callback(episode, best_greedy_batches, lower_bound_total)``, called after each evaluation."""


@dataclass
class TrainingResult:
    """The best greedy table found and how it was found."""

    table: dict[StateKey, int]
    type_names: list[str]
    encoding: str
    episodes: int
    best_batches: int
    lower_bound: int
    seed: int
    seconds: float
    samples: int
    reward: str
    history: list[tuple[int, int]] = field(default_factory=list)   # (episode, greedy batches)
    stopped: str = "episodes"      # "target" (within target_ratio), "episodes" or "seconds" (budget)

    @property
    def ratio(self) -> float:
        """Best greedy batches / lower bound, over all samples (1.0 for empty samples)."""
        return self.best_batches / self.lower_bound if self.lower_bound else 1.0

    def metadata(self) -> dict:
        return {"episodes": self.episodes, "best_batches": self.best_batches, "lower_bound": self.lower_bound,
                "best_ratio": round(self.ratio, 6), "seed": self.seed, "samples": self.samples, "reward": self.reward,
                "seconds": round(self.seconds, 3), "stopped": self.stopped}


class TrainingSample:
    """One training graph, prepared once: type ids (``type_index``: stable name -> type id), nearest
    same-type links, lower bound."""

    def __init__(self, graph: GraphArrays, type_index: dict[str, int]):
        self.graph = graph
        self.view = TypeView(graph, type_index)
        self.links = TypewiseLinks(graph)
        self.bound = lower_bound(graph)


def _greedy_batches(sample: TrainingSample, table: dict[StateKey, int], encoding: str) -> int:
    """Batches FSMPolicy would make on the sample with ``table`` (greedy fallback when unseen)."""
    frontier = Frontier(sample.graph)
    view = sample.view
    gid, sid_of_gid = view.gid, view.sid_of_gid
    steps = 0
    while not frontier.done:
        ordered = view.ordered(frontier)
        action = table.get(encode(encoding, [gid[s] for s in ordered]))
        frontier.run(ordered[0] if action is None else sid_of_gid[action])
        steps += 1
    return steps


def greedy_table(q_values: dict[StateKey, dict[int, float]]) -> dict[StateKey, int]:
    """``argmax_a Q(s, a)`` per state; ties go to the action listed first (most ready nodes when the
    state was first seen)."""
    return {key: max(q, key=q.__getitem__) for key, q in q_values.items()}


def train_table(graphs: Sequence[GraphArrays], *, encoding: str = "sort", seed: int = 0,
                max_episodes: int = 1000, max_seconds: float | None = None, eval_every: int = 50,
                target_ratio: float = 1.01,
                n_step: int = 10, learning_rate: float = 0.4, epsilon: float = 0.5, epsilon_decay: float = 0.9,
                epsilon_floor: float = 0.05, reward: str = "typewise", progress: bool = False,
                callback: ProgressCallback | None = None) -> TrainingResult:
    """Q-learn an FSM table on the sample ``graphs`` (see the module docstring).

    **Arguments:** ``graphs``: the sample graphs, visited round robin, one per episode.
    ``reward``: ``"typewise"`` (ED-Batch) or ``"batch"`` (-1 per batch); NOTE: [Reward].
    ``progress=True`` shows a rich progress bar (episode, best batches / lower bound);
    ``callback(episode, best, bound)`` is called after every evaluation. ``max_seconds``: stop
    after the first episode that ends past this many seconds of training (the table is scored then).
    The other arguments are the Q-learning hyper-parameters (module docstring).

    Returns the best greedy table seen at an evaluation (the one before any episode included, i.e.
    the pure greedy fallback); ``episodes`` is the number of episodes run."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if not graphs:
        raise PhalanxError("training an fsm policy needs at least one sample graph")
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    if n_step < 1 or eval_every < 1:
        raise ValueError("n_step and eval_every must be >= 1")
    start_time = time.perf_counter()
    type_names = sorted({names[int(s)] for g in graphs for names in [stable_type_names(g)] for s in g.used_sids})
    type_index = {name: i for i, name in enumerate(type_names)}
    samples = [TrainingSample(g, type_index) for g in graphs]
    bound_total = sum(s.bound for s in samples)
    rng = np.random.default_rng(seed)
    q_values: dict[StateKey, dict[int, float]] = {}

    def evaluate() -> tuple[int, dict[StateKey, int]]:
        table = greedy_table(q_values)
        return sum(_greedy_batches(s, table, encoding) for s in samples), table

    best_batches, best_table = evaluate()
    history = [(0, best_batches)]
    bar = _ProgressBar(max_episodes, bound_total) if progress else None
    episodes = 0
    try:
        if bar:
            bar.update(0, best_batches)
        if callback:
            callback(0, best_batches, bound_total)
        eps = epsilon
        out_of_time = False
        while True:
            if best_batches <= target_ratio * bound_total:
                stopped = "target"
                break
            if episodes >= max_episodes or out_of_time:
                stopped = "seconds" if out_of_time else "episodes"
                break
            q_learning_episode(samples[episodes % len(samples)], q_values, encoding, rng, eps, n_step, learning_rate,
                               reward)
            episodes += 1
            eps = max(epsilon_floor, eps * epsilon_decay)
            out_of_time = max_seconds is not None and time.perf_counter() - start_time >= max_seconds
            if episodes % eval_every == 0 or episodes == max_episodes or out_of_time:
                batches, table = evaluate()
                history.append((episodes, batches))
                if batches < best_batches:
                    best_batches, best_table = batches, table
                if callback:
                    callback(episodes, best_batches, bound_total)
            if bar:
                bar.update(episodes, best_batches)
    finally:
        if bar:
            bar.close()
    return TrainingResult(best_table, type_names, encoding, episodes, best_batches, bound_total, seed,
                          time.perf_counter() - start_time, len(samples), reward, history, stopped)


def q_learning_episode(sample: TrainingSample, q_values: dict[StateKey, dict[int, float]], encoding: str,
                       rng: np.random.Generator, eps: float, n_step: int, learning_rate: float,
                       reward: str = "typewise") -> None:
    """Schedule one sample epsilon-greedily, updating ``q_values`` (state key -> {action: Q}) in place
    with n-step returns as it goes (NOTE: [Bootstrap]). Draws from ``rng`` only."""
    frontier = Frontier(sample.graph)
    if frontier.done:
        return
    typewise = TypewiseFrontier(sample.graph, sample.links) if reward == "typewise" else None
    view = sample.view
    gid, sid_of_gid = view.gid, view.sid_of_gid
    counts = frontier.ready_counts()
    visited: list[dict[int, float]] = []   # Q row of s_t
    actions: list[int] = []
    rewards: list[float] = []

    def q_row(ordered: list[int]) -> dict[int, float]:
        gids = [gid[s] for s in ordered]
        key = encode(encoding, gids)
        row = q_values.get(key)
        if row is None:   # actions listed by ready count so argmax ties go to the greedy choice
            row = q_values[key] = dict.fromkeys(gids, 0.0)
        return row

    def update(tau: int, bootstrap: float) -> None:
        ret = sum(rewards[tau:tau + n_step]) + bootstrap
        row, action = visited[tau], actions[tau]
        row[action] += learning_rate * (ret - row[action])

    ordered = view.ordered(frontier)
    row = q_row(ordered)
    while True:
        if rng.random() < eps:
            action = gid[ordered[int(rng.integers(len(ordered)))]]
        else:
            action = max(row, key=row.__getitem__)
        sid = sid_of_gid[action]
        visited.append(row)
        actions.append(action)
        if typewise is None:
            rewards.append(-1.0)
            frontier.run(sid)
        else:
            rewards.append(-1.0 + int(counts[sid]) / int(typewise.size[sid]))
            typewise.run(frontier.run(sid))
        if frontier.done:
            break
        ordered = view.ordered(frontier)
        row = q_row(ordered)
        tau = len(rewards) - n_step
        if tau >= 0:   # NOTE: [Bootstrap]
            update(tau, max(row.values()))
    for tau in range(max(0, len(rewards) - n_step), len(rewards)):
        update(tau, 0.0)   # the terminal state is worth 0


class _ProgressBar:
    """A rich progress bar: episode, and best greedy batches / lower bound."""

    def __init__(self, total: int, bound: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bound = bound
        self.progress = Progress(TextColumn("fsm training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), transient=False)
        self.task = self.progress.add_task("", total=total)
        self.progress.start()

    def update(self, episode: int, best: int) -> None:
        self.progress.update(self.task, completed=episode,
                             description=f"best {best} batches / lower bound {self.bound}")

    def close(self) -> None:
        self.progress.stop()
