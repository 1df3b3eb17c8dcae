"""Presence, typing and heartbeats on the socket (WebsocketCommunicator, Redis layer)."""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async

from apps.accounts import services as accounts
from apps.accounts.models import User
from apps.messaging.models import Conversation, InboxEntry, Membership
from apps.presence import services
from apps.presence.store import get_store
from tests.presence.helpers import (
    direct_chat,
    next_of,
    none_of,
    open_socket,
    status_of,
    subscribe,
)

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_batches"),
]


@database_sync_to_async
def users_with_devices(people, *names, devices=1):
    out = []
    for name in names:
        user = people.user(f"{name}_{time.monotonic_ns() % 10**8}")
        user.devices_ = [people.device(user, f"{name}-{i}") for i in range(devices)]
        out.append(user)
    return out


@database_sync_to_async
def refreshed(user):
    user.refresh_from_db()
    return user


def online(user) -> bool:
    return get_store().statuses(user_ids=[user.id], now=time.time())[user.id].online


# --- Subscriptions and snapshots -----------------------------------------------------


async def test_subscribing_answers_a_snapshot_at_once_then_ok(people):
    alice, bob, carol = await users_with_devices(people, "alice", "bob", "carol")
    a = await open_socket(alice.devices_[0])
    b = await open_socket(bob.devices_[0])
    await b.disconnect()  # bob was here a moment ago: his last_seen is written
    await asyncio.sleep(0.5)
    bob = await refreshed(bob)
    assert bob.last_seen is not None

    c = await open_socket(carol.devices_[0])
    nobody = User(id=12345)  # no such user: answered like a hidden one
    snapshot = await subscribe(c, alice, bob, nobody)
    assert snapshot == [
        {"type": "presence", "user": alice.public_id, "status": "online", "last_seen": None},
        {
            "type": "presence",
            "user": bob.public_id,
            "status": "offline",
            "last_seen": services.iso(bob.last_seen),
        },
        {"type": "presence", "user": "u_12345", "status": "offline", "last_seen": None},
    ]
    for ws in (a, c):
        await ws.disconnect()


async def test_watchers_see_online_at_once_and_offline_after_the_grace(people):
    alice, carol = await users_with_devices(people, "alice", "carol")
    c = await open_socket(carol.devices_[0])
    assert status_of((await subscribe(c, alice))[0]) == ("offline", None)

    a = await open_socket(alice.devices_[0])
    frame = await next_of(c, "presence")
    assert frame == {
        "type": "presence",
        "user": alice.public_id,
        "status": "online",
        "last_seen": None,
    }

    left_at = time.time()
    await a.disconnect()
    assert await none_of(c, "presence", within=0.2) == []  # not before the grace (0.3 s)
    frame = await next_of(c, "presence", timeout=2)
    assert frame["status"] == "offline"
    alice = await refreshed(alice)
    assert frame["last_seen"] == services.iso(alice.last_seen)
    assert abs(alice.last_seen.timestamp() - left_at) < 1
    await c.disconnect()


async def test_a_reconnect_within_the_grace_is_not_announced(people, settings):
    settings.NATTER = {**settings.NATTER, "PRESENCE_GRACE_S": 1}
    alice, carol = await users_with_devices(people, "alice", "carol")
    a = await open_socket(alice.devices_[0])
    c = await open_socket(carol.devices_[0])
    assert status_of((await subscribe(c, alice))[0]) == ("online", None)
    for _ in range(3):  # a flapping network
        await a.disconnect()
        await asyncio.sleep(0.1)
        a = await open_socket(alice.devices_[0])
    assert await none_of(c, "presence", within=1.5) == []
    assert online(alice)
    await a.disconnect()
    assert status_of(await next_of(c, "presence", timeout=3))[0] == "offline"
    await c.disconnect()


async def test_a_second_socket_of_the_same_device_does_not_flap_presence(people):
    alice, carol = await users_with_devices(people, "alice", "carol")
    first = await open_socket(alice.devices_[0])
    c = await open_socket(carol.devices_[0])
    await subscribe(c, alice)
    second = await open_socket(alice.devices_[0])
    assert (await first.receive_output(timeout=5))["code"] == 4409
    await first.disconnect()  # the old socket's release must not touch the new entry
    assert await none_of(c, "presence", within=0.8) == []
    assert online(alice)
    for ws in (second, c):
        await ws.disconnect()


async def test_a_new_subscription_replaces_the_set(people):
    alice, bob, carol = await users_with_devices(people, "alice", "bob", "carol")
    c = await open_socket(carol.devices_[0])
    await subscribe(c, alice)
    assert [f["user"] for f in await subscribe(c, bob, ref="s2")] == [bob.public_id]
    a = await open_socket(alice.devices_[0])
    b = await open_socket(bob.devices_[0])
    frames = await none_of(c, "presence", within=0.5)
    assert [(f["user"], f["status"]) for f in frames] == [(bob.public_id, "online")]
    for ws in (a, b, c):
        await ws.disconnect()


async def test_more_than_100_users_in_a_subscription_is_bad_request(people):
    [carol] = await users_with_devices(people, "carol")
    c = await open_socket(carol.devices_[0])
    await c.send_json_to(
        {"type": "presence.subscribe", "id": "big", "user_ids": [f"u_{i}" for i in range(1, 102)]}
    )
    error = await next_of(c, "error")
    assert (
        error["code"] == "bad_request" and error["ref"] == "big" and "user_ids" in error["fields"]
    )
    await c.send_json_to({"type": "presence.subscribe", "id": "bad", "user_ids": ["c_1"]})
    assert (await next_of(c, "error"))["code"] == "bad_request"
    await c.disconnect()


# --- Privacy ---------------------------------------------------------------------------


async def test_visibility_nobody_hides_online_and_last_seen_from_everyone_but_oneself(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    await database_sync_to_async(accounts.user_update)(user=alice, last_seen_visibility="nobody")
    await direct_chat(alice, bob)  # even a contact sees nothing
    b = await open_socket(bob.devices_[0])
    await subscribe(b, alice)
    a = await open_socket(alice.devices_[0])
    assert status_of((await subscribe(a, alice))[0]) == ("online", None)  # oneself: yes
    await a.disconnect()
    assert await none_of(b, "presence", within=1) == []
    assert status_of((await subscribe(b, alice, ref="s2"))[0]) == ("offline", None)
    await b.disconnect()


async def test_visibility_contacts_shows_presence_to_people_sharing_a_chat_only(people):
    alice, bob, carol = await users_with_devices(people, "alice", "bob", "carol")
    await database_sync_to_async(accounts.user_update)(user=alice, last_seen_visibility="contacts")
    await direct_chat(alice, bob)
    b = await open_socket(bob.devices_[0])
    c = await open_socket(carol.devices_[0])
    await subscribe(b, alice)
    await subscribe(c, alice)

    a = await open_socket(alice.devices_[0])
    assert status_of(await next_of(b, "presence")) == ("online", None)
    await a.disconnect()
    offline = await next_of(b, "presence", timeout=3)
    assert offline["status"] == "offline" and offline["last_seen"] is not None
    # The stranger never heard a thing, and its snapshot says nothing either.
    assert await none_of(c, "presence", within=0.2) == []
    assert status_of((await subscribe(c, alice, ref="s2"))[0]) == ("offline", None)
    for ws in (b, c):
        await ws.disconnect()


async def test_a_changed_visibility_reaches_watchers_at_once(people):
    alice, carol = await users_with_devices(people, "alice", "carol")
    a = await open_socket(alice.devices_[0])
    c = await open_socket(carol.devices_[0])
    assert status_of((await subscribe(c, alice))[0]) == ("online", None)
    await database_sync_to_async(accounts.user_update)(user=alice, last_seen_visibility="nobody")
    assert status_of(await next_of(c, "presence")) == ("offline", None)
    await database_sync_to_async(accounts.user_update)(user=alice, last_seen_visibility="everyone")
    assert status_of(await next_of(c, "presence")) == ("online", None)
    for ws in (a, c):
        await ws.disconnect()


# --- Typing ------------------------------------------------------------------------------


async def test_typing_reaches_every_device_of_the_other_member_and_never_an_inbox(people):
    [alice] = await users_with_devices(people, "alice", devices=2)
    [bob] = await users_with_devices(people, "bob", devices=2)
    conversation = await direct_chat(alice, bob)
    await database_sync_to_async(lambda: InboxEntry.objects.all().delete())()
    a1, a2 = [await open_socket(d) for d in alice.devices_]
    b1, b2 = [await open_socket(d) for d in bob.devices_]

    await a1.send_json_to(
        {"type": "typing", "id": "t1", "conversation": conversation.public_id, "state": "composing"}
    )
    assert await next_of(a1, "ok") == {"type": "ok", "ref": "t1"}
    expected = {
        "type": "typing",
        "conversation": conversation.public_id,
        "user": alice.public_id,
        "state": "composing",
    }
    assert await next_of(b1, "typing") == expected
    assert await next_of(b2, "typing") == expected
    await a1.send_json_to(
        {"type": "typing", "conversation": conversation.public_id, "state": "paused"}
    )
    assert (await next_of(b1, "typing"))["state"] == "paused"
    assert await none_of(a2, "typing", within=0.3) == []  # not to the typist's own devices
    assert await database_sync_to_async(InboxEntry.objects.count)() == 0
    for ws in (a1, a2, b1, b2):
        await ws.disconnect()


async def test_typing_where_you_are_not_a_member_is_not_member(people):
    alice, bob, carol = await users_with_devices(people, "alice", "bob", "carol")
    conversation = await direct_chat(alice, bob)
    c = await open_socket(carol.devices_[0])
    for target in (conversation.public_id, "c_99999"):
        await c.send_json_to(
            {"type": "typing", "id": "t", "conversation": target, "state": "composing"}
        )
        error = await next_of(c, "error")
        assert error["code"] == "not_member" and error["ref"] == "t"
    await c.disconnect()


async def test_typing_is_rate_limited_per_device_with_retry_after(people, settings):
    settings.NATTER = {**settings.NATTER, "TYPING_RATE": 3}
    alice, bob = await users_with_devices(people, "alice", "bob")
    conversation = await direct_chat(alice, bob)
    a = await open_socket(alice.devices_[0])
    for i in range(4):
        await a.send_json_to(
            {
                "type": "typing",
                "id": i,
                "conversation": conversation.public_id,
                "state": "composing",
            }
        )
    replies = [await next_of(a, t) for t in ("ok", "ok", "ok", "error")]
    assert replies[3]["code"] == "rate_limited" and 1 <= replies[3]["retry_after"] <= 10
    await a.disconnect()


@database_sync_to_async
def big_group(members):
    conversation = Conversation.objects.create(kind=Conversation.Kind.GROUP, title="crowd")
    Membership.objects.bulk_create(
        [Membership(conversation=conversation, user_id=u) for u in members]
    )
    return conversation


async def test_typing_in_a_conversation_of_more_than_50_members_is_dropped(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    extras = await database_sync_to_async(
        lambda: User.objects.bulk_create([User(username=f"x{i}_{alice.id}") for i in range(49)])
    )()
    crowd = await big_group([alice.id, bob.id, *(u.id for u in extras)])
    a = await open_socket(alice.devices_[0])
    b = await open_socket(bob.devices_[0])
    await a.send_json_to(
        {"type": "typing", "id": "t", "conversation": crowd.public_id, "state": "composing"}
    )
    assert await next_of(a, "ok") == {"type": "ok", "ref": "t"}
    assert await none_of(b, "typing", within=0.5) == []
    for ws in (a, b):
        await ws.disconnect()


async def test_closing_a_socket_while_composing_tells_the_others_paused(people):
    alice, bob = await users_with_devices(people, "alice", "bob")
    conversation = await direct_chat(alice, bob)
    a = await open_socket(alice.devices_[0])
    b = await open_socket(bob.devices_[0])
    await a.send_json_to(
        {"type": "typing", "conversation": conversation.public_id, "state": "composing"}
    )
    assert (await next_of(b, "typing"))["state"] == "composing"
    await a.disconnect()
    assert (await next_of(b, "typing"))["state"] == "paused"
    await b.disconnect()


# --- Heartbeats ------------------------------------------------------------------------


async def test_a_silent_socket_is_closed_with_4408_and_its_device_goes_offline(people, settings):
    settings.NATTER = {**settings.NATTER, "HEARTBEAT_S": 0.2}
    alice, bob = await users_with_devices(people, "alice", "bob")
    silent = await open_socket(alice.devices_[0])
    pinging = await open_socket(bob.devices_[0])
    opened = time.monotonic()

    async def keep_pinging():
        for _ in range(12):
            await pinging.send_json_to({"type": "ping"})
            await asyncio.sleep(0.1)

    pinger = asyncio.ensure_future(keep_pinging())
    closed = await silent.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4408}
    # 2.5 × 0.2 s; the upper bound leaves room for a loaded machine.
    assert 0.45 < time.monotonic() - opened < 2.5
    await pinger
    # The pinging socket stayed open all along: twelve pongs, no close.
    assert [(await pinging.receive_json_from())["type"] for _ in range(12)] == ["pong"] * 12
    await asyncio.sleep(0.4)  # the grace
    assert not online(alice) and online(bob)
    assert (await refreshed(alice)).last_seen is not None
    await silent.disconnect()
    await pinging.disconnect()


async def test_every_frame_counts_as_a_heartbeat(people, settings):
    settings.NATTER = {**settings.NATTER, "HEARTBEAT_S": 0.2}
    [alice] = await users_with_devices(people, "alice")
    ws = await open_socket(alice.devices_[0])
    for _ in range(10):  # 1 s of bad frames and reads, no ping
        await ws.send_to(text_data="not json")
        await next_of(ws, "error")
        await asyncio.sleep(0.1)
    assert online(alice)
    assert [
        d["transport"] for d in get_store().devices_of_user(user_id=alice.id, now=time.time())
    ] == ["ws"]
    await ws.disconnect()


async def test_after_redis_is_flushed_the_next_heartbeats_repair_presence(people, settings):
    settings.NATTER = {**settings.NATTER, "HEARTBEAT_S": 0.2}
    alice, carol = await users_with_devices(people, "alice", "carol")
    a = await open_socket(alice.devices_[0])
    c = await open_socket(carol.devices_[0])
    assert status_of((await subscribe(c, alice))[0]) == ("online", None)
    get_store().client.flushdb()  # the registry and the layer's groups are gone
    await asyncio.sleep(0.15)
    for ws in (c, a):  # the next heartbeats re-register and re-join
        await ws.send_json_to({"type": "ping"})
        await next_of(ws, "pong")
    assert online(alice)
    await a.disconnect()
    assert status_of(await next_of(c, "presence", timeout=3))[0] == "offline"
    await c.disconnect()


async def test_messaging_goes_on_when_the_registry_is_unreachable(people, settings):
    settings.NATTER = {**settings.NATTER, "PRESENCE_REDIS_URL": "redis://127.0.0.1:1/0"}
    alice, bob = await users_with_devices(people, "alice", "bob")
    conversation = await direct_chat(alice, bob)
    a = await open_socket(alice.devices_[0])  # connects, although it cannot register
    b = await open_socket(bob.devices_[0])
    await a.send_json_to(
        {
            "type": "send",
            "id": "s1",
            "client_id": "5d0b2a43-3c38-4f5e-9a55-0d7b3c6b2a11",
            "conversation": conversation.public_id,
            "kind": "text",
            "ciphertexts": [
                {"device": bob.devices_[0].public_id, "envelope": "message", "body": "aGk="}
            ],
        }
    )
    assert (await next_of(a, "ack"))["ref"] == "s1"
    assert (await next_of(b, "event"))["event"]["type"] == "message"
    await a.send_json_to(
        {"type": "typing", "id": "t", "conversation": conversation.public_id, "state": "paused"}
    )
    # Typing travels on the channel layer and is limited in the cache's Redis: it
    # does not need the registry either.
    assert (await next_of(a, "ok"))["ref"] == "t"
    for ws in (a, b):
        await ws.disconnect()
