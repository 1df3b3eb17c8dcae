"""Database work from async code (consumers), off the event loop."""

import asyncio
import functools
import os
import re
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from django.db import OperationalError, connection

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


def unreachable() -> bool:
    """Whether the database was found unreachable within the last UNREACHABLE_S."""
    return time.monotonic() < _unreachable_until


# --- Statements run on the event loop ------------------------------------------------
#
# A socket process's hottest statement (a burst of sends, checked and written at
# once) runs on the event loop with psycopg's async driver: no hop to a database
# thread and back, and no GIL handed between them. Each loop keeps its own few
# connections (one per statement in flight), autocommit, preparing statements as
# Django's do.
_loop_connections: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list]" = (
    weakref.WeakKeyDictionary()
)


async def execute_on_loop(sql: str, params: list) -> list[tuple]:
    """Run one statement, committed by itself, on this loop's connection; its rows.

    Raises psycopg's errors as they are (the statement wrote nothing then, unless
    the connection broke after its commit, which the caller must allow for).
    """
    import psycopg

    idle = _loop_connections.setdefault(asyncio.get_running_loop(), [])
    conn = idle.pop() if idle else await psycopg.AsyncConnection.connect(**_loop_params())
    try:
        cursor = await conn.execute(sql, params)
        rows = await cursor.fetchall()
    except BaseException:
        if conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.close()
        else:
            idle.append(conn)
        raise
    idle.append(conn)
    return rows


async def close_loop_connections() -> None:
    """Close this loop's connections (tests: each test's loop is a new one)."""
    for conn in _loop_connections.pop(asyncio.get_running_loop(), []):
        await conn.close()


def _loop_params() -> dict:
    """psycopg's connection arguments for the default database, as Django's, minus
    Django's own cursor and adapters (its cursors are synchronous)."""
    from django.db import connections

    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.setdefault("connect_timeout", LOOP_CONNECT_TIMEOUT_S)
    return {**params, "autocommit": True}


LOOP_CONNECT_TIMEOUT_S = 5


# The event loop that handed work to a database thread, if any (see events.py).
CALLER_LOOP: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar(
    "natter_caller_loop", default=None
)


def pg_array(values, kind: str = "bigint") -> str:
    """A Postgres array literal of `values`, for a `%s::<kind>[]` parameter.

    psycopg dumps a list parameter element by element in Python (15-50 us for
    eight values: the largest single cost of a batch's statements on a loaded
    socket process); joining the literal here is 2-5 us. Strings are always
    quoted and escaped, so no text can end or split an element; None is NULL.
    """
    element = _ELEMENTS.get(kind, _quoted)
    return "{" + ",".join("NULL" if v is None else element(v) for v in values) + "}"


def opaque_array(kind: str = "bigint") -> str:
    """A `%s::<kind>[]` parameter whose length the planner cannot see, for unnest/ANY.

    Postgres estimates `unnest($1)` from the array when it plans with the values
    (a custom plan) and at 100 rows when it plans once for all values (a generic
    plan). The custom plans then always look cheaper, so a prepared statement was
    planned again on every call: 0.6 ms of planning against 0.2 ms of running for
    a send batch's first read, 28 % of Postgres's time at 500 msgs/s. Behind a
    scalar sub-select the length is unknown to both, the estimates are equal, and
    Postgres keeps the generic plan from the sixth call on.

    That plan is made for 100 elements, so use this only where such a plan is
    also right for a few: a lookup per element (LATERAL ... OFFSET 0), or rows
    found by key, which on any table large enough to matter are index lookups
    whatever the count (on a tiny table the plan may scan it, which costs little).
    """
    # The outer cast makes `= ANY(...)` take it as an array, not as a subquery.
    return f"(SELECT %s::{kind}[])::{kind}[]"


def compact_sql(sql: str) -> str:
    """`sql` with each run of whitespace outside its string literals made one space.

    psycopg converts a statement's %s placeholders with a regular expression and
    caches the result per statement text, but only for texts up to 4,096 bytes
    (MAX_CACHED_STATEMENT_LENGTH): a longer one is converted again on every call.
    The indentation of a checked send batch's statement took it past that, and
    its conversion was a twentieth of a loaded socket process's Python time.
    A `--` comment would swallow the rest of a one-line statement: refused.
    """
    parts = sql.split("'")
    for n in range(0, len(parts), 2):  # even parts lie outside the literals
        if "--" in parts[n]:
            raise ValueError("compact_sql: a -- comment would swallow the rest of the line")
        parts[n] = _WHITESPACE.sub(" ", parts[n])
    return "'".join(parts).strip()


_WHITESPACE = re.compile(r"\s+")


def _quoted(value) -> str:
    text = str(value)
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text + '"'


def _bytea(value) -> str:
    # Hex input ("\\x..."), its backslash escaped for the array's quoting.
    return '"\\\\x' + bytes(value).hex() + '"'


def _timestamp(value) -> str:
    return '"' + value.isoformat() + '"'


_ELEMENTS = {
    "bigint": str,
    "int": str,
    "integer": str,
    "boolean": lambda value: "t" if value else "f",
    "bytea": _bytea,
    "timestamptz": _timestamp,
    "uuid": str,
}


@dataclass(frozen=True)
class UnnestInsert:
    """Insert many rows with one array parameter per column (Postgres).

    `columns` maps each column to its Postgres type; `rows` are tuples in that order.
    The ORM's bulk_create sends a parameter per cell, and building and quoting them
    was the largest cost of a batch of sends on the socket process. With
    `skip_conflicts`, rows that break a unique constraint are skipped.
    """

    model: type
    columns: dict[str, str]
    rows: list[tuple]
    skip_conflicts: bool = False
    # (column, key, relation): `column` counts down from a value found in the same
    # statement. `relation` (a WITH clause of it, with columns id and value) gives
    # the value of each row's `key`; the row holds how far below it its own is.
    # Rows whose key the relation lacks are not inserted.
    numbered: tuple[str, str, str] | None = None
    where: str = ""  # a condition on the rows, named k."<column>"
    returning: str = ""

    @property
    def shape(self) -> tuple:
        """What the statement's text depends on (not the rows): a key for its cache."""
        return (
            self.model._meta.db_table,
            tuple(self.columns.items()),
            self.skip_conflicts,
            self.numbered,
            self.where,
            self.returning,
        )

    @property
    def sql(self) -> str:
        """The statement's text: the same string for every insert of its shape."""
        return _unnest_sql(self.shape)

    def statement(self) -> tuple[str, list]:
        return self.sql, self.params()

    def params(self) -> list[str]:
        return [
            pg_array(column, kind)
            for column, kind in zip(
                zip(*self.rows, strict=True), self.columns.values(), strict=True
            )
        ]


@functools.lru_cache(maxsize=256)
def _unnest_sql(shape: tuple) -> str:
    """The text of an UnnestInsert of this `shape`, built once."""
    table, columns, skip_conflicts, numbered, where, returning = shape
    names = ", ".join(f'"{name}"' for name, _ in columns)
    arrays = ", ".join(f"%s::{kind}[]" for _, kind in columns)
    if not (numbered or where):
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})"
    else:
        column, key, relation = numbered or (None, None, None)
        values = ", ".join(
            f'n.value - k."{name}"' if name == column else f'k."{name}"' for name, _ in columns
        )
        sql = f"INSERT INTO {table} ({names}) SELECT {values} FROM unnest({arrays}) AS k({names})"
        if relation:
            sql += f' JOIN {relation} AS n(id, value) ON n.id = k."{key}"'
        if where:
            sql += f" WHERE {where}"
    if skip_conflicts:
        sql += " ON CONFLICT DO NOTHING"
    if returning:
        sql += f" RETURNING {returning}"
    return sql


def insert_unnest_together(*inserts: UnnestInsert) -> None:
    """Run several inserts as one statement (data-modifying WITH clauses): one round
    trip to Postgres instead of one each. Foreign keys between them hold: they are
    checked after the statement (at commit, as they are deferred)."""
    statements = [insert.statement() for insert in inserts if insert.rows]
    if not statements:
        return
    *before, (last_sql, _) = statements
    clauses = ", ".join(f"w{n} AS ({sql})" for n, (sql, _) in enumerate(before))
    sql = f"WITH {clauses} {last_sql}" if before else last_sql
    with connection.cursor() as cur:
        cur.execute(sql, [param for _, params in statements for param in params])


class NoConnectionSweepMixin:
    """A consumer whose handlers never use the ORM on the event loop (db_call does).

    Channels' dispatch closes stale database connections before every handler,
    with a hop to the process's one shared sync thread: every frame and every
    doorbell of every socket queued behind that thread (13 % of a loaded socket
    process). Here each db_call closes its own connections on its own thread.
    """

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


DEADLOCK_RETRIES = 3


def retry_on_deadlock(func):
    """Run a function whose transaction Postgres may abort as a deadlock victim again.

    Batches of acks lock receipts then memberships; a read receipt locks its
    membership then its receipts. No single order serves both, and Postgres
    breaks the rare cycle by aborting one transaction (seen twice in a run of
    the suite): that one is rolled back whole, so running it again is safe.
    Inside an outer transaction nothing can be retried, so the error goes up.
    """

    @functools.wraps(func)
    def run(*args, **kwargs):
        if connection.in_atomic_block:
            return func(*args, **kwargs)
        for attempt in range(DEADLOCK_RETRIES):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                deadlock = getattr(exc.__cause__, "sqlstate", None) == "40P01"
                if not deadlock or attempt == DEADLOCK_RETRIES - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))

    return run
