"""Each server process reports how long it stopped serving: its event loop's lag and its
collector's pauses (`/metrics`), and bench.load reads them for its measuring window."""

import asyncio
import gc
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from apps.common import loopwatch
from bench.load import GeneratorLoopLag, ServerPauses, histogram_buckets, over, worst_bucket
from tests.bench_apps import serving_process


def lag_count(above: str | None = None) -> float:
    """Ticks so far (or those later than `above` seconds)."""
    count = REGISTRY.get_sample_value("natter_event_loop_lag_seconds_count") or 0.0
    if above is None:
        return count
    within = REGISTRY.get_sample_value("natter_event_loop_lag_seconds_bucket", {"le": above})
    return count - (within or 0.0)


def gc_count(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "natter_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


@pytest.mark.asyncio
async def test_a_blocked_event_loop_shows_as_a_late_tick():
    loopwatch.watch_event_loop()
    await asyncio.sleep(loopwatch.TICK_S * 3)
    ticks, late = lag_count(), lag_count(above="0.25")
    assert ticks >= 1

    time.sleep(0.3)  # noqa: ASYNC251 - holds the loop, as a slow call made on it would
    await asyncio.sleep(loopwatch.TICK_S * 3)

    # At least one: a collector pass of this (test) process could add another.
    assert lag_count(above="0.25") >= late + 1
    assert lag_count() >= ticks + 2


@pytest.mark.asyncio
async def test_watching_a_loop_twice_starts_one_ticker():
    loopwatch.watch_event_loop()
    loopwatch.watch_event_loop()
    tickers = [t for t in asyncio.all_tasks() if t.get_name() == "natter-loop-watch"]
    assert len(tickers) == 1


def test_collector_passes_are_timed_by_the_generation_they_collect():
    loopwatch.watch_collector()
    loopwatch.watch_collector()
    assert gc.callbacks.count(loopwatch._collector_timer) == 1
    full, young = gc_count(2), gc_count(0)
    gc.collect()
    gc.collect(0)
    assert gc_count(2) >= full + 1
    assert gc_count(0) >= young + 1


METRICS = """\
# HELP natter_event_loop_lag_seconds lag
# TYPE natter_event_loop_lag_seconds histogram
natter_event_loop_lag_seconds_bucket{le="0.05"} 90.0
natter_event_loop_lag_seconds_bucket{le="0.1"} 98.0
natter_event_loop_lag_seconds_bucket{le="0.25"} 99.0
natter_event_loop_lag_seconds_bucket{le="+Inf"} 100.0
natter_event_loop_lag_seconds_count 100.0
natter_event_loop_lag_seconds_sum 1.5
# HELP natter_gc_pause_seconds gc
# TYPE natter_gc_pause_seconds histogram
natter_gc_pause_seconds_bucket{generation="0",le="0.05"} 7.0
natter_gc_pause_seconds_bucket{generation="0",le="+Inf"} 7.0
natter_gc_pause_seconds_bucket{generation="2",le="0.05"} 1.0
natter_gc_pause_seconds_bucket{generation="2",le="+Inf"} 2.0
"""


def test_bench_reads_a_histograms_stalls_from_the_metrics_text():
    lag = histogram_buckets(METRICS, "natter_event_loop_lag_seconds")
    assert lag == {0.05: 90, 0.1: 98, 0.25: 99, float("inf"): 100}
    assert over(lag, 0.1) == 2
    assert worst_bucket(lag) == float("inf")
    collector = histogram_buckets(METRICS, "natter_gc_pause_seconds")  # generations summed
    assert collector == {0.05: 8, float("inf"): 9}
    assert over(collector, 0.05) == 1
    assert worst_bucket({0.05: 3, 0.1: 3, float("inf"): 3}) == 0.05
    assert worst_bucket({0.05: 0, float("inf"): 0}) is None


@pytest.mark.django_db(transaction=True)
def test_a_stopped_server_process_shows_its_stall_to_the_benchmark(tmp_path: Path):
    # A real daphne serving Natter: stopped for 0.3 s (SIGSTOP), its loop runs its
    # next timer 0.3 s late, and bench.load's reading of /metrics says so.
    with serving_process("config.asgi:application", tmp_path) as (url, pid):
        pauses = ServerPauses([url])
        time.sleep(loopwatch.TICK_S * 4)
        before = asyncio.run(pauses.read())
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(0.3)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(loopwatch.TICK_S * 4)
        after = asyncio.run(pauses.read())
    assert before is not None and sum(before["lag"].values()) > 0  # ticking already
    figures = ServerPauses.figures(before, after)
    assert figures["server_loop_lags_over_100ms"] >= 1
    assert figures["server_loop_lag_worst_le_s"] == 0.5  # 0.3 s: in (0.25, 0.5]


def test_without_access_to_metrics_the_figures_are_left_out():
    assert ServerPauses.figures(None, None) == {}


@pytest.mark.asyncio
async def test_the_generators_own_loop_lag_is_counted_for_its_window_only():
    loopwatch.watch_event_loop()
    await asyncio.sleep(loopwatch.TICK_S * 2)
    time.sleep(0.3)  # noqa: ASYNC251 - before the window: not counted
    await asyncio.sleep(loopwatch.TICK_S * 2)
    with GeneratorLoopLag() as lagged:
        await asyncio.sleep(loopwatch.TICK_S * 3)
        time.sleep(0.15)  # noqa: ASYNC251 - the generator's loop held up
        await asyncio.sleep(loopwatch.TICK_S * 3)
    figures = lagged.figures()
    assert figures["generator_loop_lags_over_100ms"] >= 1
    assert figures["generator_loop_lag_worst_le_s"] == 0.25  # 0.15 s: in (0.1, 0.25]
