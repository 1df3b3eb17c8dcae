"""bench.floor_receipts: the durable floor plus the contract's durable `delivered` receipt.

It bounds what the contract's writes cost only if it really makes them: the
recipient's ack deletes the message's row and stores the receipt as a row of the
sender's device before the receipt is pushed, and the sender's ack deletes that row.
"""

import asyncio
from pathlib import Path

import orjson
import pytest

from apps.common import ids
from bench.load import connection as bench_connection
from bench.load import pairs_traffic
from bench.population import make_pairs
from tests.bench_apps import floor_rows, serving, serving_process

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receipts_floor_url(tmp_path: Path):
    with serving("bench.floor_receipts:application", tmp_path) as url:
        yield url


def test_the_recipients_ack_stores_the_receipt_and_the_senders_ack_deletes_it(
    receipts_floor_url,
):
    sender, receiver, conversation = make_pairs(1, "receipts")[0]
    sender_device = ids.decode(ids.DEVICE, sender.device_id)

    async def exchange():
        a = bench_connection(receipts_floor_url, sender.token, auto_ack=False)
        b = bench_connection(receipts_floor_url, receiver.token, auto_ack=False)
        await a.start()
        await b.start()
        try:
            await a.send(conversation, {receiver.device_id: b"first"}, timeout=5)
            event = await b.next_event(timeout=5)
            await b.ack(event.cursor)
            receipt = await a.next_event(timeout=5)  # pushed once the ack's statement committed
            at_the_receipt = await asyncio.to_thread(floor_rows)
            await a.ack(receipt.cursor)
            for _ in range(50):  # the ack is not answered: wait for its delete
                after_the_senders_ack = await asyncio.to_thread(floor_rows)
                if not after_the_senders_ack:
                    break
                await asyncio.sleep(0.05)
        finally:
            await a.aclose()
            await b.aclose()
        return event, receipt, at_the_receipt, after_the_senders_ack

    event, receipt, at_the_receipt, after_the_senders_ack = asyncio.run(exchange())
    assert event.type == "message" and event["body"] == b"first"
    assert (receipt.type, receipt["status"], receipt["up_to_seq"]) == ("receipt", "delivered", 1)
    # The message's row is gone; the receipt is stored for the sender's device.
    [(device_id, body)] = at_the_receipt
    assert device_id == sender_device
    assert orjson.loads(body)["status"] == "delivered"
    assert after_the_senders_ack == []


def test_the_generators_senders_ack_their_receipts(tmp_path: Path):
    """bench.load's senders take their events as a client does, so the receipts they
    are owed do not pile up in their inboxes while a benchmark runs."""
    pairs = make_pairs(3, "acking")
    with serving_process("bench.floor_receipts:application", tmp_path) as (url, pid):
        result = asyncio.run(
            pairs_traffic([url], [pid], pairs, window=1, seconds=1.5, warmup=0.5, rate=20)
        )
        left = floor_rows()
    assert result["delivered_per_s"] > 0
    # Only the rows of the last moments can be waiting for their ack.
    assert len(left) <= 6, left
