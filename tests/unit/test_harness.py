"""bench/harness.py: how implementations are timed side by side and compared."""
import statistics

from phalanx.bench.harness import paired_ratio


def test_paired_ratio_follows_each_pair_not_the_drift():
    # Steps run manual, this, manual, this, ...; the machine slows 3x between the 4th manual step and
    # its twin. Every pair but that one says 2x; the ratio of the medians says 0.67x.
    manual = [2.0, 2.0, 2.0, 2.0, 6.0, 6.0, 6.0]
    this = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]
    assert statistics.median(manual) / statistics.median(this) < 1
    assert paired_ratio(manual, this) == 2.0
    assert paired_ratio(manual, this[:-1]) is None     # not timed step for step
    assert paired_ratio([], []) is None

