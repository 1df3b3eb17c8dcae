"""Database work from async code (consumers), off the event loop."""

import asyncio
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar

from channels.db import database_sync_to_async
from django.db import OperationalError

try:
    from psycopg_pool import PoolTimeout
except ImportError:  # no Postgres driver: nothing is pooled
    PoolTimeout = None

# One pool for the process, not the event loop's default executor: its threads (and
# the pooled database connection each one holds) outlive any one loop, and their
# number stays below the connection pool's size (DB_POOL_MAX).
_EXECUTOR = ThreadPoolExecutor(
    max_workers=int(os.environ.get("DB_THREADS", "8")), thread_name_prefix="natter-db"
)


def db_call(func):
    """Wrap an ORM-using function to run on the database threads, closing stale connections.

    Channels' default runs every consumer's database work on ONE shared thread
    (STACK-NOTES trap 4): a process's queries then queue behind each other while
    most of their time is spent waiting on Postgres. Each service call is its own
    transaction and a consumer awaits its calls one at a time, so running them on
    a pool keeps every socket's order and lets sockets overlap their waits.
    """
    threaded = database_sync_to_async(func, thread_sensitive=False, executor=_EXECUTOR)

    @functools.wraps(func)
    async def call(*args, **kwargs):
        global _unreachable_until
        if time.monotonic() < _unreachable_until:
            raise OperationalError("The database is unreachable; retry shortly.")
        # Work done on the thread may schedule follow-ups (doorbells) back on this loop.
        CALLER_LOOP.set(asyncio.get_running_loop())
        try:
            return await threaded(*args, **kwargs)
        except OperationalError as exc:
            if PoolTimeout is not None and isinstance(exc.__cause__, PoolTimeout):
                _unreachable_until = time.monotonic() + UNREACHABLE_S
            raise

    return call


# When the pool could not hand out a connection within DB_POOL_TIMEOUT (Postgres is
# down), the calls of the next UNREACHABLE_S fail at once (503 `unavailable`) instead
# of each waiting that long in turn: a socket handles its frames in order, so every
# frame would otherwise hold the next ones back for the whole outage.
UNREACHABLE_S = 1.0
_unreachable_until = 0.0


# The event loop that handed work to a database thread, if any (see events.py).
CALLER_LOOP: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar(
    "natter_caller_loop", default=None
)
