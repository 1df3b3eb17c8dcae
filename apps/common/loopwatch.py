"""How long each server process stops serving: its event loop's lag and its collector's pauses.

Every socket of a daphne process is served by one event loop. Anything that holds
it (a slow call made on the loop, a long garbage-collector pass, the GIL held by a
database thread) delays every socket of the process at once, which a latency
histogram shows only as a bad tail with no cause. Two histograms tell it apart:

- `natter_event_loop_lag_seconds`: a timer set TICK_S ahead, and how late the loop
  ran it. A well loop is late by well under a millisecond; a value near 0.2 s says
  the process served nobody for 0.2 s.
- `natter_gc_pause_seconds{generation}`: each pass of the garbage collector, timed
  from `gc.callbacks`.

Both start with the first connection or request a process serves (`LoopWatch`),
since daphne makes its loop itself and has no start-up hook.
"""

import asyncio
import gc
import time

from prometheus_client import Histogram

TICK_S = 0.05

LOOP_LAG = Histogram(
    "natter_event_loop_lag_seconds",
    f"How late the event loop ran a timer set {TICK_S} s ahead: time it served nobody.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
GC_PAUSE = Histogram(
    "natter_gc_pause_seconds",
    "Garbage-collector passes, by the oldest generation each collected.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
_GC_PAUSE_BY = [GC_PAUSE.labels(str(generation)) for generation in range(3)]


class CollectorTimer:
    """A `gc.callbacks` entry: the time from each pass's start to its stop, handed
    to `passed`. Also what bench.load times its own passes with."""

    def __init__(self):
        self.started = None

    def __call__(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self.started = now
        elif self.started is not None:
            self.passed(now - self.started, info["generation"])
            self.started = None

    def passed(self, seconds: float, generation: int) -> None:
        raise NotImplementedError


class _HistogramTimer(CollectorTimer):
    def passed(self, seconds: float, generation: int) -> None:
        _GC_PAUSE_BY[generation].observe(seconds)


_collector_timer = _HistogramTimer()


def watch_collector() -> None:
    """Time the collector's passes in this process (once, however often called)."""
    if _collector_timer not in gc.callbacks:
        gc.callbacks.append(_collector_timer)


async def _tick(loop: asyncio.AbstractEventLoop) -> None:
    while True:
        due = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        LOOP_LAG.observe(max(0.0, loop.time() - due))


_watched: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def watch_event_loop() -> None:
    """Time the running loop's lag from now on (once per loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _watched:
        for stale in [old for old in _watched if old.is_closed()]:
            del _watched[stale]
        # Kept here: the loop holds only a weak reference to a task.
        _watched[loop] = loop.create_task(_tick(loop), name="natter-loop-watch")


class LoopWatch:
    """ASGI middleware: start both watches with the first connection or request."""

    def __init__(self, app):
        self.app = app
        self.loop = None

    async def __call__(self, scope, receive, send):
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self.loop = loop
            watch_event_loop()
            watch_collector()
        return await self.app(scope, receive, send)
