"""bench.floor: Natter's frames for a direct message, relayed by daphne with no work.

It is a floor for the latency benchmark only if it costs the same frames as Natter:
the same client runs against it unchanged, and its events carry Natter's fields.
"""

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from apps.common import ids
from apps.messaging.selectors import message_event
from bench.load import connection as bench_connection
from bench.population import make_pairs
from tests.bench_apps import serving

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def floor_url(tmp_path: Path):
    with serving("bench.floor:application", tmp_path) as url:
        yield url


def natter_message_fields() -> set[str]:
    now = datetime.now(UTC)
    return set(message_event(1, "c", 1, 1, 1, 1, "text", now, None, "message", b"x", None))


def test_the_floor_relays_a_message_and_its_receipt_with_natters_fields(floor_url):
    sender, receiver, conversation = make_pairs(1, "floor")[0]

    async def exchange():
        a = bench_connection(floor_url, sender.token)
        b = bench_connection(floor_url, receiver.token)
        await a.start()
        await b.start()
        try:
            assert a.hello["device"] == sender.device_id
            ack = await a.send(conversation, {receiver.device_id: b"ciphertext"}, timeout=5)
            event = await b.next_event(timeout=5)
            receipt = await a.next_event(timeout=5)  # sent when b's client acks
        finally:
            await a.aclose()
            await b.aclose()
        return ack, event, receipt

    ack, event, receipt = asyncio.run(exchange())
    assert (ack.conversation, ack.seq) == (conversation, 1)
    assert event.type == "message" and event["body"] == b"ciphertext"
    assert event["message_id"] == ack.message_id
    assert event["sender"] == {"user": sender.user_id, "device": sender.device_id}
    assert set(event.data) == natter_message_fields()
    assert receipt.type == "receipt"
    assert (receipt["status"], receipt["up_to_seq"]) == ("delivered", 1)
    assert receipt["by_user"] == receiver.user_id
    assert ids.decode(ids.CONVERSATION, receipt["conversation"])
