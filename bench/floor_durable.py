"""The durable floor: bench.floor's relay plus the least a store-and-forward must store.

`bench.load --app bench.floor_durable:application` runs the generator against
daphne processes serving this. It is bench/floor.py with two statements added, the
least that the contract asks of a server that keeps messages until they are
delivered (PROTOCOL: durable before the sender's ack, nothing left once delivered):

- a send's recipient rows are inserted, in autocommit, before its ack is sent;
- a recipient's ack deletes the rows it covers.

Both go through Natter's own group commit (apps.messaging.batching), set as Natter
sets it, so a burst of sends is one statement and one commit, as in Natter. No
membership, device set, seq, receipt or watermark is kept or checked, and nothing
is pushed again: rows pushed to a socket that closes before acking them stay in
the table (a floor, not a server).

What it measures is a latency that no durable server on this stack (daphne,
Channels, psycopg, Postgres and the generator, all on this machine) goes much
below here: a diagnostic, never a result against a target.
"""

import base64
import collections
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()  # before the models are imported below

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.urls import re_path  # noqa: E402

from apps.common import ids  # noqa: E402
from apps.common.asgi import SessionsForCookies  # noqa: E402
from apps.common.db import db_call, pg_array  # noqa: E402
from apps.common.loopwatch import LoopWatch  # noqa: E402
from apps.messaging.batching import _Batcher as Batcher  # noqa: E402
from bench.floor import FloorConsumer, natter_router  # noqa: E402

TABLE = "bench_floor_inbox"


@db_call
def _create_table() -> None:
    """Create the rows' table once; two processes starting at once take turns."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} "
            "(id bigserial PRIMARY KEY, device_id bigint NOT NULL, body bytea NOT NULL)"
        )


def store_rows(
    groups: list[list[tuple[int, bytes]]], *, deleting: list[int] | None = None
) -> list[list[int]]:
    """Insert each group's rows (device, body) in one statement, committed at once,
    after deleting the rows `deleting` names in the same statement if it is given.

    Returns each group's row ids, in the order of its rows.
    """
    rows = [row for group in groups for row in group]
    gone = f"gone AS (DELETE FROM {TABLE} WHERE id = ANY(%s::bigint[]))," if deleting else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH {gone} r AS (
                SELECT nextval(pg_get_serial_sequence('{TABLE}', 'id')) AS id, n, device, body
                FROM unnest(%s::bigint[], %s::bytea[]) WITH ORDINALITY AS u(device, body, n)
            ), stored AS (
                INSERT INTO {TABLE} (id, device_id, body) SELECT id, device, body FROM r
            )
            SELECT id FROM r ORDER BY n
            """,
            [
                *([pg_array(deleting)] if deleting else []),
                pg_array(device for device, _ in rows),
                [body for _, body in rows],
            ],
        )
        ids_in_order = iter([row[0] for row in cursor.fetchall()])
    return [[next(ids_in_order) for _ in group] for group in groups]


def _delete_many(acks: list[list[int]]) -> list[None]:
    """The rows each ack covers, all deleted and committed at once."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {TABLE} WHERE id = ANY(%s::bigint[])",
            [pg_array(row_id for ack in acks for row_id in ack)],
        )
    return [None] * len(acks)


_table_created = False  # in this process

# Natter's own group commit (apps.messaging.batching), set as Natter sets it: sends
# that arrive while one batch is written form the next (two at once under a flood),
# acks wait ACK_GATHER_MS for company. A daphne process runs one event loop, so one
# of each serves the process (Natter keeps them per loop for its tests' loops).
_SENDS = Batcher(store_rows, lanes=2)  # each send's rows, ids back in order
_ACKS = Batcher(_delete_many, gather_s=settings.NATTER["ACK_GATHER_MS"] / 1000)


class DurableFloorConsumer(FloorConsumer):
    """bench.floor's relay, with the send stored before its ack and deleted on the ack."""

    async def connect(self):
        global _table_created
        if not _table_created:
            await _create_table()
            _table_created = True
        self.rows: collections.deque[tuple[int, int]] = collections.deque()  # (cursor, row)
        await super().connect()

    async def on_send(self, frame: dict, ref):
        ciphertexts = frame["ciphertexts"]
        self.pending_rows = collections.deque(
            await _SENDS.call(
                [
                    (ids.decode(ids.DEVICE, c["device"]), base64.b64decode(c["body"]))
                    for c in ciphertexts
                ]
            )
        )
        await super().on_send(frame, ref)

    async def relay(self, device_id: int, message: dict):
        if message["event"]["type"] == "message":
            message = {**message, "row": self.pending_rows.popleft()}
        await super().relay(device_id, message)

    async def floor_push(self, message: dict):
        if "row" in message:
            self.rows.append((self.cursor + 1, message["row"]))
        await super().floor_push(message)

    async def on_ack(self, cursor: int):
        covered = self.rows_upto(cursor)
        if covered:
            await _ACKS.call(covered)
        await super().on_ack(cursor)

    def rows_upto(self, cursor: int) -> list[int]:
        """The stored rows of the events pushed up to `cursor`, which an ack covers."""
        covered = []
        while self.rows and self.rows[0][0] <= cursor:
            covered.append(self.rows.popleft()[1])
        return covered


# Watched as Natter's own application is (config/asgi.py), for the same figures.
application = LoopWatch(
    ProtocolTypeRouter(
        {
            "http": natter_router.application_mapping["http"],
            "websocket": SessionsForCookies(
                URLRouter([re_path(r"^ws/v1/?$", DurableFloorConsumer.as_asgi())])
            ),
        }
    )
)
