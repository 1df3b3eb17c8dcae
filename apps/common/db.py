"""Database work from async code (consumers), off the event loop."""

from channels.db import database_sync_to_async


def db_call(func):
    """Wrap an ORM-using function to run on the thread pool, closing stale connections.

    Channels' default runs every consumer's database work on ONE shared thread
    (STACK-NOTES trap 4): a process's queries then queue behind each other while
    most of their time is spent waiting on Postgres. Each service call is its own
    transaction and a consumer awaits its calls one at a time, so running them on
    the pool keeps every socket's order and lets sockets overlap their waits.
    """
    return database_sync_to_async(func, thread_sensitive=False)
