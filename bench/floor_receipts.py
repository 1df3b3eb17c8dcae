"""The receipts floor: the durable floor plus the contract's durable `delivered` receipt.

`bench.load --app bench.floor_receipts:application` runs the generator against it.
It is bench/floor_durable.py with the one more write the contract asks for a
direct message (PROTOCOL: a receipt is an event of the sender's inbox, delivered
at least once like any other):

- a send's rows are inserted before its ack, as in the durable floor;
- the recipient's ack deletes its rows and stores the `delivered` receipt it owes
  each sender as a row of that sender's device, in the same statement and commit;
- the sender's ack of the receipt deletes that row.

So a message costs three commits, as in Natter (the send, the recipient's ack,
the sender's ack of the receipt), where the durable floor takes two. Still no
membership, device set, seq, receipt table or watermark is kept or checked. What
separates this floor from Natter is Natter's own work, not the contract's writes:
a diagnostic, never a result against a target.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()  # before the models are imported below

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import re_path  # noqa: E402

from apps.common import jsonutil  # noqa: E402
from apps.common.asgi import SessionsForCookies  # noqa: E402
from apps.common.loopwatch import LoopWatch  # noqa: E402
from apps.messaging.batching import _Batcher as Batcher  # noqa: E402
from bench.floor import natter_router  # noqa: E402
from bench.floor_durable import DurableFloorConsumer, store_rows  # noqa: E402


def _ack_many(acks: list[tuple[list[int], list[tuple[int, bytes]]]]) -> list[list[int]]:
    """Each ack's (rows it covers, receipts it owes as (sender device, body)): all the
    rows deleted and all the receipts inserted in one statement, committed at once.

    Returns each ack's receipt row ids, in the order of its receipts.
    """
    return store_rows(
        [owed for _, owed in acks], deleting=[row for covered, _ in acks for row in covered]
    )


# Acks gather for company as in Natter (apps.messaging.batching, ACK_GATHER_MS).
_ACKS = Batcher(_ack_many, gather_s=settings.NATTER["ACK_GATHER_MS"] / 1000)


class ReceiptsFloorConsumer(DurableFloorConsumer):
    """The durable floor, with each `delivered` receipt stored until its sender acks it."""

    async def on_ack(self, cursor: int):
        covered = self.rows_upto(cursor)
        receipts = self.receipts_upto(cursor)
        if not (covered or receipts):
            return
        rows = await _ACKS.call(
            (covered, [(sender, jsonutil.dumpb(event)) for sender, event in receipts])
        )
        for (sender, event), row in zip(receipts, rows, strict=True):
            await self.relay(
                sender, {"type": "floor.push", "event": event, "from_device": None, "row": row}
            )


# Watched as Natter's own application is (config/asgi.py), for the same figures.
application = LoopWatch(
    ProtocolTypeRouter(
        {
            "http": natter_router.application_mapping["http"],
            "websocket": SessionsForCookies(
                URLRouter([re_path(r"^ws/v1/?$", ReceiptsFloorConsumer.as_asgi())])
            ),
        }
    )
)
