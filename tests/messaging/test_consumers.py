"""The WebSocket consumer through WebsocketCommunicator on channels-redis."""

import uuid
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from apps.messaging import events, services
from apps.messaging.models import InboxEntry
from config.asgi import application
from tests.conftest import b64
from tests.messaging.helpers import inbox, send

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_batches"),
]


def socket(token: str | None = None, origin: str = "http://127.0.0.1") -> WebsocketCommunicator:
    headers = [(b"origin", origin.encode())]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return WebsocketCommunicator(application, "/ws/v1/", headers=headers)


async def connected(device) -> tuple[WebsocketCommunicator, dict]:
    ws = socket(device.token)
    ok, _ = await ws.connect()
    assert ok
    hello = await ws.receive_json_from()
    return ws, hello


async def frames_until(ws, kind: str, limit: int = 1000) -> list[dict]:
    out = []
    for _ in range(limit):
        frame = await ws.receive_json_from(timeout=5)
        out.append(frame)
        if frame["type"] == kind:
            return out
    raise AssertionError(f"no {kind} frame")


@database_sync_to_async
def make_chat(people):
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    InboxEntry.objects.all().delete()
    return alice, bob, a1, b1, conversation


def send_frame(conversation, device, body=b"hi", client_id=None, frame_id="f1"):
    return {
        "type": "send",
        "id": frame_id,
        "client_id": str(client_id or uuid.uuid4()),
        "conversation": conversation.public_id,
        "kind": "text",
        "ciphertexts": [{"device": device.public_id, "envelope": "message", "body": b64(body)}],
    }


async def test_unauthenticated_socket_is_closed_with_4401(people):
    ws = socket("not-a-token")
    ok, _ = await ws.connect()
    assert ok
    assert (await ws.receive_output())["code"] == 4401
    await ws.disconnect()


async def test_session_cookie_from_foreign_origin_is_refused(people):
    ws = socket(None, origin="https://evil.example")
    await ws.connect()
    assert (await ws.receive_output())["code"] == 4401


async def test_hello_then_drained_on_an_empty_inbox(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, hello = await connected(b1)
    assert hello["type"] == "hello" and hello["device"] == b1.public_id
    assert hello["window"] == settings.NATTER["WINDOW"] and hello["heartbeat_s"] > 0
    assert await ws.receive_json_from() == {"type": "drained"}
    await ws.disconnect()


async def test_send_is_acked_then_pushed_to_the_recipient_socket(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    wa, _ = await connected(a1)
    wb, _ = await connected(b1)
    await frames_until(wa, "drained")
    await frames_until(wb, "drained")
    await wa.send_json_to(send_frame(conversation, b1, b"goodnight"))
    ack = await wa.receive_json_from()
    assert ack["type"] == "ack" and ack["ref"] == "f1" and ack["seq"] == 1
    pushed = await wb.receive_json_from(timeout=5)
    assert pushed["type"] == "event" and pushed["event"]["message_id"] == ack["message_id"]
    assert pushed["event"]["body"] == b64(b"goodnight")
    # The recipient acks: the sender's socket gets the delivered receipt.
    await wb.send_json_to({"type": "ack", "cursor": pushed["cursor"]})
    receipt = await wa.receive_json_from(timeout=5)
    assert receipt["event"]["type"] == "receipt" and receipt["event"]["status"] == "delivered"
    await wa.disconnect()
    await wb.disconnect()


async def test_backlog_is_pushed_in_order_in_windows_then_drained(people, settings):
    settings.NATTER = {**settings.NATTER, "WINDOW": 10}
    alice, bob, a1, b1, conversation = await make_chat(people)
    for _ in range(25):
        await database_sync_to_async(send)(a1, conversation, [b1])
    ws, _ = await connected(b1)
    seqs, drained_after = [], None
    while drained_after is None:
        window = [await ws.receive_json_from() for _ in range(10 if len(seqs) < 20 else 6)]
        if len(seqs) < 20:
            assert await ws.receive_nothing(timeout=0.2)  # the window is full: nothing more
        for frame in window:
            if frame["type"] == "drained":
                drained_after = len(seqs)
            else:
                seqs.append(frame["event"]["seq"])
        await ws.send_json_to(
            {"type": "ack", "cursor": window[-1 if window[-1]["type"] == "event" else -2]["cursor"]}
        )
    assert seqs == list(range(1, 26)) and drained_after == 25
    await ws.disconnect()


async def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(a1)
    await frames_until(ws, "drained")
    await ws.send_to(text_data="{not json")
    assert (await ws.receive_json_from())["code"] == "bad_request"
    await ws.send_json_to({"type": "warp", "id": 7})
    assert await ws.receive_json_from() == {
        "type": "error",
        "ref": 7,
        "code": "unknown_type",
        "message": "Unknown frame type 'warp'.",
    }
    await ws.send_json_to({**send_frame(conversation, b1), "client_id": "nope"})
    error = await ws.receive_json_from()
    assert error["code"] == "bad_request" and "client_id" in error["fields"]
    await ws.send_json_to({"type": "ping", "id": "p"})
    assert await ws.receive_json_from() == {"type": "pong", "ref": "p"}
    await ws.disconnect()


async def test_device_mismatch_frame_names_missing_devices(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(a1)
    await frames_until(ws, "drained")
    frame = send_frame(conversation, b1)
    frame["ciphertexts"] = []
    await ws.send_json_to(frame)
    error = await ws.receive_json_from()
    assert error["code"] == "device_mismatch" and error["missing"] == [b1.public_id]
    assert error["extra"] == [] and error["ref"] == "f1"
    await ws.disconnect()


async def test_oversized_frame_is_refused_with_too_large(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(a1)
    await frames_until(ws, "drained")
    await ws.send_to(text_data="x" * (settings.NATTER["FRAME_MAX_BYTES"] + 1))
    error = await ws.receive_json_from()
    assert error["code"] == "too_large" and error["max_bytes"] == settings.NATTER["FRAME_MAX_BYTES"]
    await ws.disconnect()


async def test_frame_size_is_counted_in_utf8_bytes_not_characters(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(a1)
    await frames_until(ws, "drained")
    # 100,000 characters, 300,000 bytes: over the 256 KiB limit.
    await ws.send_json_to({"type": "ping", "pad": "€" * 100_000})
    assert (await ws.receive_json_from())["code"] == "too_large"
    await ws.disconnect()


async def test_repeated_abuse_closes_the_socket_with_4429(people, settings):
    settings.NATTER = {**settings.NATTER, "ABUSE_ERRORS": 5}
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(a1)
    await frames_until(ws, "drained")
    for _ in range(6):
        await ws.send_to(text_data="junk")
    codes = [await ws.receive_output() for _ in range(7)]
    assert codes[-1] == {"type": "websocket.close", "code": 4429}
    await ws.disconnect()


async def test_unavailable_answers_do_not_count_as_abuse(people, settings):
    """An outage answers every frame `unavailable`; a client retrying is not abusive.

    Found by the fault suite (tests/faults, Postgres stopped): every socket that kept
    sending through a 10 s database outage was closed for good with 4429.
    """
    from django.db import OperationalError

    settings.NATTER = {**settings.NATTER, "ABUSE_ERRORS": 5}
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(a1)
    await frames_until(ws, "drained")
    with mock.patch.object(services, "message_send_many", side_effect=OperationalError("down")):
        for i in range(8):
            await ws.send_json_to(send_frame(conversation, b1, frame_id=f"s{i}"))
            frame = await ws.receive_json_from(timeout=5)
            assert (frame["code"], frame["ref"]) == ("unavailable", f"s{i}")
    await ws.send_json_to({"type": "ping", "id": "p"})
    assert await ws.receive_json_from(timeout=5) == {"type": "pong", "ref": "p"}
    await ws.disconnect()


async def test_a_second_socket_of_the_same_device_closes_the_first_with_4409(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    first, _ = await connected(b1)
    await frames_until(first, "drained")
    second, _ = await connected(b1)
    assert (await first.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4409}
    await second.disconnect()


async def test_logout_closes_the_devices_socket_with_4401(people):
    from apps.accounts.services import device_revoke

    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(b1)
    await frames_until(ws, "drained")
    await database_sync_to_async(device_revoke)(device=b1)
    assert (await ws.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}


async def test_a_lost_doorbell_is_recovered_by_the_next_ping(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(b1)
    await frames_until(ws, "drained")
    with mock.patch.object(events, "_group_send_all"):
        await database_sync_to_async(send)(a1, conversation, [b1])
    assert await ws.receive_nothing(timeout=0.3)
    await ws.send_json_to({"type": "ping"})
    frames = [await ws.receive_json_from(), await ws.receive_json_from()]
    assert {f["type"] for f in frames} == {"pong", "event"}
    await ws.disconnect()


async def test_an_unacked_event_comes_back_after_reconnect(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    await database_sync_to_async(send)(a1, conversation, [b1])
    ws, _ = await connected(b1)
    event = await ws.receive_json_from()
    await ws.disconnect()
    ws, _ = await connected(b1)
    again = await ws.receive_json_from()
    assert again == event
    await ws.send_json_to({"type": "ack", "cursor": again["cursor"], "id": 1})
    assert (await frames_until(ws, "ok"))[-1] == {"type": "ok", "ref": 1}
    await ws.disconnect()
    ws, _ = await connected(b1)
    assert await ws.receive_json_from() == {"type": "drained"}
    await ws.disconnect()


async def test_acks_in_steps_each_delete_their_events_and_a_repeat_is_harmless(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    for _ in range(3):
        await database_sync_to_async(send)(a1, conversation, [b1])
    ws, _ = await connected(b1)
    events = [f for f in await frames_until(ws, "drained") if f["type"] == "event"]
    cursors = [e["cursor"] for e in events]
    remaining = database_sync_to_async(lambda: [row["cursor"] for row in inbox(b1)])
    await ws.send_json_to({"type": "ack", "cursor": cursors[1], "id": 1})
    assert (await frames_until(ws, "ok"))[-1] == {"type": "ok", "ref": 1}
    assert await remaining() == [cursors[2]]
    # The next ack starts from the oldest event still in flight.
    await ws.send_json_to({"type": "ack", "cursor": cursors[2], "id": 2})
    await frames_until(ws, "ok")
    assert await remaining() == []
    # Nothing in flight: the same ack again is answered and deletes nothing more.
    await ws.send_json_to({"type": "ack", "cursor": cursors[2], "id": 3})
    assert (await frames_until(ws, "ok"))[-1] == {"type": "ok", "ref": 3}
    await ws.disconnect()


async def test_read_frame_moves_the_pointer(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    await database_sync_to_async(send)(a1, conversation, [b1])
    ws, _ = await connected(b1)
    await frames_until(ws, "drained")
    await ws.send_json_to(
        {"type": "read", "id": "r", "conversation": conversation.public_id, "up_to_seq": 1}
    )
    assert (await frames_until(ws, "ok"))[-1] == {"type": "ok", "ref": "r", "read_seq": 1}
    await ws.disconnect()


async def test_an_error_in_a_list_item_is_reported_not_crashed_on(people):
    alice, bob, a1, b1, conversation = await make_chat(people)
    ws, _ = await connected(a1)
    await frames_until(ws, "drained")
    frame = send_frame(conversation, b1)
    frame["ciphertexts"][0]["envelope"] = "carrier-pigeon"
    await ws.send_json_to(frame)
    error = await ws.receive_json_from()
    assert error["code"] == "bad_request" and "ciphertexts" in error["fields"]
    await ws.disconnect()
