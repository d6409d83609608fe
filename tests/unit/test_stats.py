"""Stats.as_dict: a plain, independent copy of the public fields, without touching the graphs kept
for the lower bound (copying those cost gigabytes and seconds per call on fibers models)."""
import pytest

from phalanx.runtime.fibers import FiberStats
from phalanx.stats import Stats


class Uncopyable:
    def __deepcopy__(self, memo):
        raise AssertionError("as_dict copied a graph kept for the lower bound")


def test_as_dict_copies_public_fields_and_leaves_the_graphs_alone():
    stats = Stats(policy="depth", nodes=10, batches=4, record_s=0.002, fibers=FiberStats(rounds=3, decisions=[1, 2]))
    stats.add_op_time("cell Node", 5, 0.001)
    stats.add_graph(Uncopyable())
    stats._lower_bound = 3                   # what the graph's bound would be: nothing to compute here
    out = stats.as_dict()
    assert not any(k.startswith("_") for k in out)
    assert out["fibers"] == {"rounds": 3, "decision_rounds": 0, "decisions": [1, 2], "round_batches": [],
                             "round_nodes": []}
    assert out["lower_bound"] == 3 and out["record_us_per_node"] == pytest.approx(200.0)
    assert out["per_op"] == {"cell Node": {"batches": 1, "nodes": 5, "forward_s": 0.001, "backward_s": 0.0}}
    # Independent of later calls: the stats object is reused call after call.
    stats.add_op_time("cell Node", 5, 0.001)
    stats.fibers.decisions.append(9)
    assert out["per_op"]["cell Node"]["batches"] == 1 and out["fibers"]["decisions"] == [1, 2]
