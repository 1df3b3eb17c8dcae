"""Doorbells that carry their events: a socket up to date pushes them without a read.

The inbox stays the truth: what a doorbell carries must be exactly what reading
the inbox would have pushed, and whenever the socket is not exactly where the
carried events begin (a gap, a full window, rings crossing), it reads instead.
"""

import asyncio
from unittest import mock

import pytest
from channels.db import database_sync_to_async

from apps.messaging import batching, events, services
from apps.messaging.models import InboxEntry, Message
from tests.messaging.helpers import inbox, send
from tests.messaging.test_consumers import connected, frames_until, make_chat, send_frame

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_batches"),
]


def reads() -> int:
    """How many inbox reads this process's sockets have made so far."""
    return batching._batchers()["read"].batches


async def chat_online(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    wa, _ = await connected(a1)
    wb, _ = await connected(b1)
    await frames_until(wa, "drained")
    await frames_until(wb, "drained")
    return a1, b1, conversation, wa, wb


async def stored(device) -> list[dict]:
    """The device's inbox as event frames, as a read would push them."""
    return [{"type": "event", **item} for item in await database_sync_to_async(inbox)(device)]


async def test_a_message_and_its_receipt_are_pushed_as_carried_equal_to_the_stored_rows(people):
    a1, b1, conversation, wa, wb = await chat_online(people)
    before = reads()
    await wa.send_json_to(send_frame(conversation, b1, b"carried"))
    assert (await wa.receive_json_from())["type"] == "ack"
    pushed = await wb.receive_json_from(timeout=5)
    assert reads() == before
    assert await stored(b1) == [pushed]
    await wb.send_json_to({"type": "ack", "cursor": pushed["cursor"]})
    receipt = await wa.receive_json_from(timeout=5)
    assert receipt["event"]["type"] == "receipt" and receipt["event"]["status"] == "delivered"
    assert reads() == before
    assert await stored(a1) == [receipt]
    await wa.disconnect()
    await wb.disconnect()


async def test_a_ring_through_redis_carries_its_events_too(people):
    a1, b1, conversation, wa, wb = await chat_online(people)
    # As if the recipient's socket were on another process: its ring goes through
    # the channel layer (msgpack over Redis), not through memory.
    events._LOCAL[asyncio.get_running_loop()].pop(b1.id)
    before = reads()
    await wa.send_json_to(send_frame(conversation, b1, b"over redis"))
    pushed = await wb.receive_json_from(timeout=5)
    assert reads() == before
    assert await stored(b1) == [pushed]
    await wa.disconnect()
    await wb.disconnect()


def _skip_a_cursor(device, message_id: int) -> None:
    # A fan-out that runs again skips the row it wrote before, leaving the cursor it
    # reserved for it unused.
    services.inbox_append(
        [InboxEntry(device_id=device.id, type="message", message_id=message_id, envelope="group")],
        ignore_conflicts=True,
    )
    assert InboxEntry.objects.filter(device_id=device.id, message_id=message_id).count() == 1


async def test_after_a_cursor_gap_the_inbox_is_read_once_then_events_are_taken_as_carried(people):
    a1, b1, conversation, wa, wb = await chat_online(people)
    first = await database_sync_to_async(send)(a1, conversation, [b1])
    pushed = await wb.receive_json_from(timeout=5)
    await database_sync_to_async(_skip_a_cursor)(b1, first.message.id)
    assert await wb.receive_nothing(timeout=0.3)  # that ring found nothing new

    before = reads()
    await database_sync_to_async(send)(a1, conversation, [b1], body=b"after the gap")
    second = await wb.receive_json_from(timeout=5)
    assert second["cursor"] == pushed["cursor"] + 2 and second["event"]["seq"] == 2
    assert reads() == before + 1  # not where the carried events begin: read
    await database_sync_to_async(send)(a1, conversation, [b1], body=b"carried again")
    third = await wb.receive_json_from(timeout=5)
    assert third["event"]["seq"] == 3
    assert reads() == before + 1  # the read passed the gap: taken as carried
    assert await stored(b1) == [pushed, second, third]
    await wa.disconnect()
    await wb.disconnect()


async def test_carried_events_wait_for_room_in_the_window(people, settings):
    settings.NATTER = {**settings.NATTER, "WINDOW": 2}
    a1, b1, conversation, wa, wb = await chat_online(people)
    for n in range(3):
        await database_sync_to_async(send)(a1, conversation, [b1], body=b"m%d" % n)
    window = [await wb.receive_json_from(timeout=5) for _ in range(2)]
    assert [f["event"]["seq"] for f in window] == [1, 2]
    assert await wb.receive_nothing(timeout=0.3)  # full: the third waits in the inbox
    await wb.send_json_to({"type": "ack", "cursor": window[0]["cursor"], "id": 1})
    assert await wb.receive_json_from(timeout=5) == {"type": "ok", "ref": 1}
    third = await wb.receive_json_from(timeout=5)
    assert third["event"]["seq"] == 3
    assert await stored(b1) == window[1:] + [third]
    await wa.disconnect()
    await wb.disconnect()


async def test_a_large_body_is_rung_plainly_and_read_from_the_inbox(people):
    a1, b1, conversation, wa, wb = await chat_online(people)
    before = reads()
    body = b"x" * (services.CARRY_MAX_BYTES + 1)
    await database_sync_to_async(send)(a1, conversation, [b1], body=body)
    pushed = await wb.receive_json_from(timeout=5)
    assert reads() == before + 1
    assert await stored(b1) == [pushed]
    message = await database_sync_to_async(Message.objects.get)()
    assert pushed["event"]["message_id"] == message.public_id
    await wa.disconnect()
    await wb.disconnect()


async def test_rings_that_cross_push_each_event_once_in_order(people):
    a1, b1, conversation, wa, wb = await chat_online(people)
    rings = []
    # Hold both doorbells back, then ring them in the wrong order, as two processes'
    # rings can cross on the way.
    with mock.patch.object(events, "_group_send_all", side_effect=rings.extend):
        await database_sync_to_async(send)(a1, conversation, [b1], body=b"first")
        await database_sync_to_async(send)(a1, conversation, [b1], body=b"second")
    (_, first), (_, second) = rings
    assert second["after"] == first["last"]
    (listener,) = events._LOCAL[asyncio.get_running_loop()][b1.id]
    before = reads()
    listener.doorbell(second)  # not where its events begin: the inbox is read
    pushed = [await wb.receive_json_from(timeout=5) for _ in range(2)]
    assert [f["event"]["seq"] for f in pushed] == [1, 2]
    assert reads() == before + 1
    listener.doorbell(first)  # all it announced is pushed: nothing, and no read
    assert await wb.receive_nothing(timeout=0.3)
    assert reads() == before + 1
    await wa.disconnect()
    await wb.disconnect()
