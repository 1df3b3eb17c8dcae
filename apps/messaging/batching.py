"""Group commit of a process's inbox work: sends and acks written together, pushes read together.

Each socket awaits its own call, but the calls that arrive while a batch is
running are served together by the next one: one transaction or query however
many sockets asked (all 255 members of a group are rung, read and ack the same
message at once). At low load a batch holds a single call, as before.
"""

import asyncio
import weakref

import psycopg
from django.conf import settings

from apps.common.db import db_call, execute_on_loop, unreachable
from apps.common.errors import NatterError
from apps.messaging import events, selectors, services

# A batch that ended this recently, holding company, makes the next one wait for more.
BUSY_WINDOW_S = 0.01


class _Batcher:
    """Collect calls while a batch runs; run the next batch with all of them."""

    def __init__(
        self,
        run_batch,
        *,
        gather_s: float = 0.0,
        gather_when_crowded_only: bool = False,
        busy_window_s: float = BUSY_WINDOW_S,
        lanes: int = 1,
        crowd: int = 16,
    ):
        # `run_batch`: list of requests -> list of results, same order; run on the
        # database threads, or awaited on the loop when it is a coroutine function.
        self.run = (  # built once, not per batch
            run_batch if asyncio.iscoroutinefunction(run_batch) else db_call(run_batch)
        )
        # How long a batch waits for company before it runs: a few milliseconds of
        # latency that turn a burst of calls into one batch. When crowded only, a
        # batch waits only if the one before it held company and ended within
        # `busy_window_s`: calls arrive faster than batches run. A call after a quiet
        # spell, or among calls that come one at a time, runs at once.
        self.gather_s = gather_s
        self.gather_when_crowded_only = gather_when_crowded_only
        self.busy_window_s = busy_window_s
        self.last_ended = float("-inf")  # the loop's time when a batch last ended
        self.last_size = 0  # how many calls that batch held
        # How many batches may be in the database at once: one, and more only while
        # at least `crowd` calls wait (a queue that one batch at a time cannot keep
        # up with). Below that a second batch would only split the work in smaller
        # transactions and add to everyone's latency.
        self.lanes = lanes
        self.crowd = crowd
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.active = 0
        self.batches = 0  # how many batches ran (and so how many transactions)

    @property
    def running(self) -> bool:
        return self.active > 0

    async def call(self, request):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        if self.active == 0 or (self.active < self.lanes and len(self.pending) >= self.crowd):
            self.active += 1
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            while self.pending:
                crowded = self.last_size > 1 and loop.time() - self.last_ended < self.busy_window_s
                if self.gather_s and (crowded or not self.gather_when_crowded_only):
                    await asyncio.sleep(self.gather_s)
                batch, self.pending = self.pending, []
                self.batches += 1
                try:
                    results = await self.run([request for request, _ in batch])
                except Exception as error:  # every waiting socket reports it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                self.last_ended, self.last_size = loop.time(), len(batch)
        finally:
            self.active -= 1


@db_call
def _send_batch_threaded(requests: list, refused: list | None) -> list:
    return services.message_send_many(requests=requests, refused=refused)


async def _send_batch_on_loop(requests: list) -> list:
    """A burst of sends, checked and written by one statement run on this loop.

    The database thread is for what cannot take that statement: a send repeated in
    the burst or refused by its rate limit, a group or media send, a chat new to
    this process, a check that failed (the threaded path tells each send what
    refused it) or a statement that failed (a resend stored meanwhile elsewhere: the
    threaded path finds it). Either way each send's rate limit is taken once.
    """
    if not _ON_POSTGRES or unreachable() or len({r.key for r in requests}) != len(requests):
        return await _send_batch_threaded(requests, None)
    refused = await services.asend_rate_limit_hits(requests)
    write = services.message_send_prepared(requests, refused)
    if write is not None:
        try:
            fetched = await execute_on_loop(write.sql, write.params)
        except psycopg.Error:
            # Nothing was written, or (the connection broke after the commit) the
            # threaded path finds the sends stored, as it finds any resend.
            fetched = None
        if fetched is not None:
            results = services.message_send_done(write, fetched, events.ring_doorbells)
            if results is not None:
                return results
    return await _send_batch_threaded(requests, refused)


_ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def _ack_batch(requests: list[tuple[object, int, int]]) -> list[None]:
    services.inbox_ack_many(acks=requests)
    return [None] * len(requests)


_loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def _batchers() -> dict:
    loop = asyncio.get_running_loop()
    batchers = _loops.get(loop)
    if batchers is None:
        batchers = _loops[loop] = {
            # An ack only deletes what was delivered and moves receipts: waiting a
            # little for the acks of the same burst is cheap and saves transactions.
            "ack": _Batcher(_ack_batch, gather_s=settings.NATTER["ACK_GATHER_MS"] / 1000),
            "read": _Batcher(selectors.inbox_after_many),
            # The sends that arrive while a batch is being written form the next
            # batch. Under a flood a second batch is written meanwhile (measured:
            # 1,661 → 1,926 delivered/s in bench.load throughput, 2 processes).
            # When sends come faster than batches run (the last batch held company)
            # a batch also waits a millisecond for more: on the loop a batch is
            # quick, so few sends wait for it, and a statement costs Postgres more
            # per message the fewer it carries. Sends that come one at a time are
            # written at once: at 500/s a wait after every batch cost the p50 a
            # millisecond and gathered almost nothing (benchmarks.md, eleventh
            # round).
            "send": _Batcher(
                _send_batch_on_loop, lanes=2, gather_s=0.001, gather_when_crowded_only=True
            ),
        }
    return batchers


async def settle() -> None:
    """Wait until this loop's batches and doorbells are done (tests: before a reset)."""
    from apps.messaging.events import IN_FLIGHT

    for _ in range(500):
        batchers = _loops.get(asyncio.get_running_loop(), {})
        if not IN_FLIGHT and not any(b.running or b.pending for b in batchers.values()):
            return
        await asyncio.sleep(0.01)


async def message_send(request: "services.SendRequest") -> "services.SendResult":
    """Store a send with the others of its burst; raise the error that refused it."""
    result = await _batchers()["send"].call(request)
    if isinstance(result, NatterError):
        raise result
    return result


async def inbox_ack(device, cursor: int, after: int = 0) -> None:
    """Ack a device's inbox in (after, cursor]; return once it is committed."""
    await _batchers()["ack"].call((device, cursor, after))


async def inbox_after(device_id: int, after_cursor: int, limit: int) -> list[dict]:
    """The next `limit` events of a device after `after_cursor`."""
    return await _batchers()["read"].call((device_id, after_cursor, limit))
