"""Presence and typing for long-poll devices: REST in, `ephemeral` out."""

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from rest_framework.test import APIClient

from apps.messaging.models import InboxEntry
from apps.presence.store import get_store
from config.asgi import application
from tests.messaging.helpers import send
from tests.presence.helpers import direct_chat, next_of, open_socket, status_of
from tests.presence.test_consumers import online, users_with_devices

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_batches"),
]


def poll(device, query: str) -> HttpCommunicator:
    headers = [(b"authorization", f"Bearer {device.token}".encode())]
    communicator = HttpCommunicator(application, "GET", "/api/v1/events", headers=headers)
    communicator.scope["query_string"] = query.encode()
    return communicator


async def answer(device, query: str, timeout: float = 10) -> dict:
    response = await poll(device, query).get_response(timeout=timeout)
    assert response["status"] == 200, response["body"]
    return json.loads(response["body"])


@database_sync_to_async
def rest(device, method: str, path: str, body=None):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {device.token}")
    response = getattr(client, method)(path, body, format="json")
    return response.status_code, (response.json() if response.content else None), response


async def waiting(device, query: str) -> asyncio.Future:
    task = asyncio.ensure_future(answer(device, query, timeout=15))
    await asyncio.sleep(0.5)  # in the wait now
    assert not task.done()
    return task


async def test_a_long_poll_is_a_heartbeat_that_puts_its_device_online(people):
    alice, carol = await users_with_devices(people, "alice", "carol")
    c = await open_socket(carol.devices_[0])
    await c.send_json_to({"type": "presence.subscribe", "user_ids": [alice.public_id]})
    assert status_of(await next_of(c, "presence")) == ("offline", None)
    await answer(alice.devices_[0], "timeout=0")
    assert status_of(await next_of(c, "presence")) == ("online", None)
    [entry] = get_store().devices_of_user(user_id=alice.id, now=time.time())
    assert entry["transport"] == "longpoll"
    await c.disconnect()


async def test_subscriptions_over_rest_answer_a_snapshot_and_refuse_more_than_100(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    a = await open_socket(alice.devices_[0])
    status, body, _ = await rest(
        bob.devices_[0], "put", "/api/v1/presence/subscriptions", {"user_ids": [alice.public_id]}
    )
    assert status == 200
    assert body == {
        "presence": [
            {"type": "presence", "user": alice.public_id, "status": "online", "last_seen": None}
        ]
    }
    status, body, _ = await rest(
        bob.devices_[0],
        "put",
        "/api/v1/presence/subscriptions",
        {"user_ids": [f"u_{i}" for i in range(1, 102)]},
    )
    assert status == 400 and body["error"]["code"] == "bad_request"
    await a.disconnect()


async def test_a_waiting_poll_answers_at_once_with_a_presence_change(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    await rest(
        bob.devices_[0], "put", "/api/v1/presence/subscriptions", {"user_ids": [alice.public_id]}
    )
    held = await waiting(bob.devices_[0], "timeout=10")
    a = await open_socket(alice.devices_[0])
    body = await asyncio.wait_for(held, 3)
    assert body["events"] == []
    assert body["ephemeral"] == [
        {"type": "presence", "user": alice.public_id, "status": "online", "last_seen": None}
    ]
    await a.disconnect()


async def test_a_change_between_two_polls_comes_with_the_next_poll_once(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    await rest(
        bob.devices_[0], "put", "/api/v1/presence/subscriptions", {"user_ids": [alice.public_id]}
    )
    a = await open_socket(alice.devices_[0])  # while bob is not polling
    started = time.monotonic()
    body = await answer(bob.devices_[0], "timeout=10")
    assert time.monotonic() - started < 2
    assert [status_of(f) for f in body["ephemeral"]] == [("online", None)]
    assert (await answer(bob.devices_[0], "timeout=0"))["ephemeral"] == []
    await a.disconnect()


async def test_a_waiting_poll_answers_at_once_with_typing(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    conversation = await direct_chat(alice, bob)
    await answer(bob.devices_[0], "timeout=0&limit=500")  # ack nothing, but drain
    await database_sync_to_async(lambda: InboxEntry.objects.all().delete())()
    a = await open_socket(alice.devices_[0])
    held = await waiting(bob.devices_[0], "timeout=10")
    await a.send_json_to(
        {"type": "typing", "conversation": conversation.public_id, "state": "composing"}
    )
    body = await asyncio.wait_for(held, 3)
    assert body["ephemeral"] == [
        {
            "type": "typing",
            "conversation": conversation.public_id,
            "user": alice.public_id,
            "state": "composing",
        }
    ]
    assert body["events"] == []
    assert await database_sync_to_async(InboxEntry.objects.count)() == 0
    await a.disconnect()


async def test_a_poll_with_events_waiting_answers_at_once_and_its_ephemeral_is_empty(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    conversation = await direct_chat(alice, bob)
    await database_sync_to_async(send)(alice.devices_[0], conversation, [bob.devices_[0]])
    started = time.monotonic()
    body = await answer(bob.devices_[0], "timeout=10")
    assert time.monotonic() - started < 2
    assert [e["event"]["type"] for e in body["events"]][-1] == "message"
    assert body["ephemeral"] == []


async def test_typing_over_rest_reaches_sockets_and_is_limited_like_the_socket(people, settings):
    settings.NATTER = {**settings.NATTER, "TYPING_RATE": 2}
    alice, bob, carol = await users_with_devices(people, "alice", "bob", "carol")
    conversation = await direct_chat(alice, bob)
    a = await open_socket(alice.devices_[0])
    body = {"conversation": conversation.public_id, "state": "composing"}
    status, _, _ = await rest(bob.devices_[0], "post", "/api/v1/typing", body)
    assert status == 204
    frame = await next_of(a, "typing")
    assert frame["user"] == bob.public_id and frame["state"] == "composing"

    status, error, _ = await rest(carol.devices_[0], "post", "/api/v1/typing", body)
    assert status == 404 and error["error"]["code"] == "not_member"

    await rest(bob.devices_[0], "post", "/api/v1/typing", body)
    status, error, response = await rest(bob.devices_[0], "post", "/api/v1/typing", body)
    assert status == 429 and error["error"]["code"] == "rate_limited"
    assert response["Retry-After"] == str(error["error"]["retry_after"])
    assert online(alice)
    await a.disconnect()
