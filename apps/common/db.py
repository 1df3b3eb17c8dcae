"""Database work from async code (consumers), off the event loop."""

import os
from concurrent.futures import ThreadPoolExecutor

from channels.db import database_sync_to_async

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
    return database_sync_to_async(func, thread_sensitive=False, executor=_EXECUTOR)
