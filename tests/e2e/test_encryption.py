"""End-to-end encryption through a live server: the SDK encrypts, the server sees ciphertext only."""

import asyncio
import base64
import random
import subprocess
import uuid

import pytest
import redis
from django.conf import settings
from django.db import connections

from natter_client import NatterClient
from natter_client.wire import Event

pytestmark = [pytest.mark.asyncio]

PASSWORD = "a long pass phrase 42"


async def person(url: str, name: str, device: str = "laptop") -> NatterClient:
    client = NatterClient(url)
    handle = f"{name}_{uuid.uuid4().hex[:8]}"
    await client.register(handle, PASSWORD, name.title())
    await client.login(handle, PASSWORD, device_name=device)
    return client


async def texts(client: NatterClient, conn, count: int, timeout: float = 15) -> list:
    """The next `count` decrypted messages on a connection."""
    got = []
    async with asyncio.timeout(timeout):
        async for item in client.receive(conn):
            if item.type == "message":
                got.append(item)
                if len(got) == count:
                    return got
    return got


async def raw_messages(client: NatterClient, count: int, timeout: float = 15) -> list[Event]:
    """Take `count` message events off the inbox without opening them, and ack them."""
    got = []
    async with client.connect("longpoll", auto_ack=True, poll_timeout=2) as conn:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got.append(await conn.next_event(type="message"))
    return got


async def test_two_sdk_clients_talk_encrypted_and_a_second_device_sees_sent_messages(
    natter_server,
):
    url = natter_server.url
    alice, bob = await person(url, "alice"), await person(url, "bob")
    alice_phone = NatterClient(url)
    await alice_phone.login(alice.user["username"], PASSWORD, device_name="phone")
    conversation = (await alice.direct_conversation(bob.user_id))["id"]

    async with (
        bob.connect("ws", auto_ack=False) as bob_conn,
        alice.connect("longpoll", auto_ack=False, poll_timeout=2) as alice_conn,
        alice_phone.connect("ws", auto_ack=False) as phone_conn,
    ):
        ack = await alice.send_text(conversation, "hello Bob, this is end-to-end")
        (got,) = await texts(bob, bob_conn, 1)
        assert got.text == "hello Bob, this is end-to-end"
        assert got["message_id"] == ack.message_id and got["envelope"] == "prekey"
        (copy,) = await texts(alice_phone, phone_conn, 1)
        assert copy.text == "hello Bob, this is end-to-end"

        await bob.send_text(conversation, "hi Alice", reply_to_seq=ack.seq, connection=bob_conn)
        (reply,) = await texts(alice, alice_conn, 1)
        assert reply.text == "hi Alice" and reply["reply_to_seq"] == ack.seq
        assert reply["envelope"] == "message"  # Bob answers in the session Alice began
        (to_phone,) = await texts(alice_phone, phone_conn, 1)
        assert to_phone.text == "hi Alice" and to_phone["envelope"] == "prekey"  # a new session

        for i in range(5):
            await alice.send_text(conversation, f"turn {i}")
            (item,) = await texts(bob, bob_conn, 1)
            assert item.text == f"turn {i}" and item["envelope"] == "message"
            await bob.send_text(conversation, f"answer {i}", connection=bob_conn)
            (item,) = await texts(alice, alice_conn, 1)
            assert item.text == f"answer {i}"

    assert await alice.safety_number(bob.user_id) == await bob.safety_number(alice.user_id)
    for client in (alice, bob, alice_phone):
        await client.aclose()


async def test_a_device_added_later_is_reached_after_a_device_mismatch(natter_server):
    url = natter_server.url
    alice, bob = await person(url, "alice"), await person(url, "bob")
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    await alice.send_text(conversation, "before the tablet")  # caches Bob's device list
    tablet = NatterClient(url)
    await tablet.login(bob.user["username"], PASSWORD, device_name="tablet")
    ack = await alice.send_text(conversation, "after the tablet")  # mismatch, claim, resend
    async with tablet.connect("ws", auto_ack=False) as conn:
        (got,) = await texts(tablet, conn, 1)
    assert got.text == "after the tablet" and got["message_id"] == ack.message_id
    for client in (alice, bob, tablet):
        await client.aclose()


async def test_out_of_order_and_duplicated_deliveries_decrypt_exactly_once(natter_server):
    url = natter_server.url
    alice, bob = await person(url, "alice"), await person(url, "bob")
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    sent = [f"message {i}" for i in range(12)]
    for text in sent:
        await alice.send_text(conversation, text)
    events = await raw_messages(bob, len(sent))
    # Shuffle, and deliver some twice: once as the same event, once under another
    # message id (what a replaying server could do): the ratchet refuses the replay.
    rng = random.Random(7)
    shuffled = events[:1] + rng.sample(events[1:], len(events) - 1)
    replays = [
        Event(e.cursor, {**e.data, "message_id": f"m_{rng.randrange(1, 2**60)}"})
        for e in rng.sample(events, 4)
    ]
    opened = []
    for event in shuffled + rng.sample(shuffled, 5):
        item = await bob.open(event)
        if item is not None:
            assert item.error is None, item.error
            opened.append(item.text)
    assert sorted(opened) == sorted(sent)
    for replay in replays:  # refused: nothing is shown twice
        item = await bob.open(replay)
        assert item is None or item.content is None
    for client in (alice, bob):
        await client.aclose()


async def test_a_group_of_five_keeps_talking_and_rotates_keys_when_someone_is_removed(
    natter_server,
):
    url = natter_server.url
    people = [await person(url, name) for name in ("ann", "ben", "cat", "dan", "eve")]
    ann, ben, cat, dan, eve = people
    group = (await ann.create_group("Five", [p.user_id for p in people[1:]]))["id"]
    conns = {p.user_id: await p.connect("ws", auto_ack=False).__aenter__() for p in people}
    try:

        async def everyone_reads(sender: NatterClient, text: str) -> dict:
            got = {}
            for p in people:
                if p is sender or p.user_id not in conns:
                    continue
                (item,) = await texts(p, conns[p.user_id], 1)
                assert item.text == text, (p.user["username"], item)
                got[p.user_id] = item
            return got

        for p in people:
            await p.send_text(group, f"hello from {p.user['username']}")
            await everyone_reads(p, f"hello from {p.user['username']}")

        before = ben.keystore.own_sender_keys[group].key.key_id
        await ann.remove_member(group, eve.user_id)
        await conns.pop(eve.user_id).__aexit__(None, None, None)
        # Ben's client reads the removal from his inbox before his next send.
        async with asyncio.timeout(10):
            async for item in ben.receive(conns[ben.user_id]):
                if item.type == "group" and item.get("action") == "removed":
                    break
        await ben.send_text(group, "after eve left")
        got = await everyone_reads(ben, "after eve left")
        assert ben.keystore.own_sender_keys[group].key.key_id != before

        # Eve's client, handed the very event Cat received, cannot open it: neither
        # the new sender key, pairwise to Cat, nor the group body it opens.
        seen_by_cat = got[cat.user_id].event.data
        item = await eve.open(Event(0, {**seen_by_cat, "message_id": "m_1"}))
        assert item is not None and item.content is None
        group_only = {**seen_by_cat, "message_id": "m_2", "envelope": "group"}
        group_only["body"] = group_only.pop("group_body", None) or seen_by_cat["body"]
        item = await eve.open(Event(0, group_only))
        assert item is not None and item.content is None
        assert "no sender key" in item.error

        # The four who remain go on talking.
        await dan.send_text(group, "still here")
        await everyone_reads(dan, "still here")
    finally:
        for conn in conns.values():
            await conn.__aexit__(None, None, None)
        for p in people:
            await p.aclose()


async def test_a_member_added_later_cannot_read_earlier_group_messages(natter_server):
    url = natter_server.url
    ann, ben, fay = [await person(url, n) for n in ("ann", "ben", "fay")]
    group = await ann.create_group("Later", [ben.user_id])
    await ann.send_text(group["id"], "before fay")
    async with ben.connect("ws", auto_ack=False) as conn:
        (early,) = await texts(ben, conn, 1)
        assert early.text == "before fay"
        await ann.add_members(group["id"], [fay.user_id])
        await ann.send_text(group["id"], "welcome fay")
        (late,) = await texts(ben, conn, 1)
    async with fay.connect("ws", auto_ack=False) as conn:
        (welcome,) = await texts(fay, conn, 1)
    assert welcome.text == "welcome fay"
    # The earlier body, handed to Fay by anyone, does not open with what she was given.
    forged = Event(0, {**early.event.data, "message_id": f"m_{uuid.uuid4().int >> 66}"})
    item = await fay.open(forged)
    assert item is not None and item.content is None
    for client in (ann, ben, fay):
        await client.aclose()


async def test_a_canary_plaintext_is_nowhere_on_the_server(natter_server):
    url = natter_server.url
    alice, bob = await person(url, "alice"), await person(url, "bob")
    carol = await person(url, "carol")
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    group = await alice.create_group("Canary", [bob.user_id, carol.user_id])
    canary = f"canary-{uuid.uuid4().hex}"
    await alice.send_text(conversation, f"direct {canary}")
    await alice.send_text(group["id"], f"group {canary}")
    # Let the fan-out run, so the group body sits in every inbox.
    await asyncio.sleep(1.0)

    needles = _encodings(canary)
    db = connections["default"].settings_dict
    dump = await asyncio.to_thread(
        subprocess.run,
        [
            "pg_dump",
            "--data-only",
            "-h",
            db.get("HOST") or "127.0.0.1",
            "-p",
            str(db.get("PORT") or 5432),
            "-U",
            db.get("USER") or "postgres",
            db["NAME"],
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    dump = dump.stdout
    assert b"messaging_inboxentry" in dump  # the dump really holds the inbox
    redis_values = _redis_contents(redis.Redis.from_url(settings.REDIS_URL))
    logs = b"".join(
        (natter_server.logs / f"{name}.log").read_bytes() for name in ("daphne", "worker")
    )
    for where, blob in (("the database", dump), ("Redis", redis_values), ("the logs", logs)):
        for needle in needles:
            assert needle not in blob, f"the canary was found in {where}"

    # And the recipients do read it.
    async with bob.connect("ws", auto_ack=False) as conn:
        got = await texts(bob, conn, 2)
    assert sorted(g.text for g in got) == sorted([f"direct {canary}", f"group {canary}"])
    for client in (alice, bob, carol):
        await client.aclose()


def _redis_contents(store: redis.Redis) -> bytes:
    """Every key and value of the Redis database, read type by type (DUMP may compress)."""
    parts = []
    for key in store.scan_iter(count=1000):
        kind = store.type(key)
        if kind == b"string":
            value = [store.get(key) or b""]
        elif kind == b"list":
            value = store.lrange(key, 0, -1)
        elif kind == b"hash":
            value = [b"%s=%s" % kv for kv in store.hgetall(key).items()]
        elif kind == b"set":
            value = list(store.smembers(key))
        elif kind == b"zset":
            value = store.zrange(key, 0, -1)
        elif kind == b"stream":
            value = [repr(entry).encode() for entry in store.xrange(key)]
        else:
            value = []
        parts.append(key + b"\0" + b"\0".join(value))
    return b"\n".join(parts)


def _encodings(canary: str) -> list[bytes]:
    """The canary as text, hex and base64 at each of the three alignments."""
    raw = canary.encode()
    found = [raw, raw.hex().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)[4:-4]
        found.append(encoded)
    return found
