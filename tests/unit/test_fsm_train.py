"""The training budget of fsm_train.train_table: it stops at the lower bound, after max_episodes,
or once max_seconds have passed (then scoring the table it has), and says which."""
import numpy as np

from phalanx.schedule.fsm_train import train_table
from tests.helpers import make_graph, random_root_cell_forest


def _hard_graphs():
    """Graphs whose greedy schedule is above the bound (greedy is the table before any episode)."""
    rng = np.random.default_rng(0)
    graphs = [random_root_cell_forest(rng, 16, 12) for _ in range(2)]
    untrained = train_table(graphs, max_episodes=0)
    assert untrained.best_batches > 1.01 * untrained.lower_bound and untrained.stopped == "episodes"
    return graphs, untrained


def test_time_budget_stops_after_the_episode_that_runs_past_it_and_scores_that_table():
    graphs, untrained = _hard_graphs()
    result = train_table(graphs, max_episodes=1000, max_seconds=1e-9, eval_every=50)
    assert result.stopped == "seconds" and result.episodes == 1
    assert result.history == [(0, untrained.best_batches), (1, result.history[1][1])]
    assert result.metadata()["stopped"] == "seconds"
    assert result.best_batches <= untrained.best_batches


def test_episode_budget_and_target_are_reported():
    graphs, _ = _hard_graphs()
    capped = train_table(graphs, max_episodes=7, eval_every=50, seed=3)
    assert capped.episodes == 7 and capped.history[-1][0] == 7
    assert capped.stopped == ("target" if capped.best_batches <= 1.01 * capped.lower_bound else "episodes")
    easy = make_graph([0, 0, 0, 1, 0], [[], [], [], [], [3]])
    reached = train_table([easy], max_seconds=60.0)
    assert reached.stopped == "target" and reached.ratio == 1.0
