"""bench.load's stall figures: the longest time with no delivery, and time in such gaps."""

from bench.load import Arrivals


def test_a_gap_of_a_tenth_of_a_second_or_more_counts_as_stalled():
    arrivals = Arrivals()
    for now in [0.0, 0.002, 0.004, 0.504, 0.506, 0.656, 0.657]:
        arrivals.arrived(now)
    assert arrivals.figures() == {"longest_gap_ms": 500.0, "stalled_s": 0.65}


def test_no_deliveries_or_one_is_no_gap():
    arrivals = Arrivals()
    assert arrivals.figures() == {"longest_gap_ms": 0.0, "stalled_s": 0.0}
    arrivals.arrived(1.0)
    assert arrivals.figures() == {"longest_gap_ms": 0.0, "stalled_s": 0.0}
