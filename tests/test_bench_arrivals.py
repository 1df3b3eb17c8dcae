"""bench.load's stall figures: the longest time with no delivery, time in such gaps, and
the generator's own collector passes."""

import gc

from bench.load import Arrivals, CollectorPauses


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


def test_the_generators_own_collector_passes_are_timed_while_measuring():
    with CollectorPauses() as pauses:
        garbage = [[i] for i in range(50_000)]
        del garbage
        gc.collect()
    figures = pauses.figures()
    assert figures["generator_gc_full_passes"] >= 1
    assert figures["generator_gc_s"] > 0
    assert figures["generator_gc_longest_ms"] >= 0
    assert pauses not in gc.callbacks  # nothing timed once the measurement ends
    gc.collect()
    assert pauses.figures() == figures
