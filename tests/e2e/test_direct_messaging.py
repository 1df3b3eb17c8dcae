"""Direct messaging end to end: the SDK against a live daphne and Celery worker."""

import asyncio
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from apps.messaging import events, services
from apps.messaging.models import InboxEntry, Message
from natter_client import NatterClient

pytestmark = [pytest.mark.asyncio]

PASSWORD = "a long pass phrase 42"


async def person(url: str, name: str, device: str = "laptop") -> NatterClient:
    client = NatterClient(url)
    handle = f"{name}_{uuid.uuid4().hex[:8]}"
    await client.register(handle, PASSWORD, name.title())
    await client.login(handle, PASSWORD, device_name=device)
    return client


async def another_device(url: str, of: NatterClient, device: str) -> NatterClient:
    client = NatterClient(url)
    await client.login(of.user["username"], PASSWORD, device_name=device)
    return client


async def chat(url: str):
    alice, bob = await person(url, "alice"), await person(url, "bob")
    conversation = await alice.direct_conversation(bob.user_id)
    return alice, bob, conversation["id"]


def for_devices(*clients: NatterClient, body: bytes = b"sealed") -> dict[str, bytes]:
    return {c.device_id: body for c in clients}


async def next_message(conn, timeout=10):
    return await conn.next_event(timeout=timeout, type="message")


@pytest.mark.parametrize(
    ("sender_transport", "recipient_transport"), [("ws", "longpoll"), ("longpoll", "ws")]
)
async def test_a_message_crosses_transports_with_both_checkmarks(
    natter_server, sender_transport, recipient_transport
):
    alice, bob, conversation = await chat(natter_server.url)
    async with alice.connect(sender_transport) as a, bob.connect(recipient_transport) as b:
        await a.wait_drained(timeout=10)
        await b.wait_drained(timeout=10)
        ack = await a.send(conversation, for_devices(bob, body=b"goodnight"))
        assert ack.seq == 1
        got = await next_message(b)
        assert got["body"] == b"goodnight" and got["message_id"] == ack.message_id
        assert got["sender"] == {"user": alice.user_id, "device": alice.device_id}
        delivered = await a.next_event(timeout=10, type="receipt")
        assert delivered["status"] == "delivered" and delivered["up_to_seq"] == 1
        await b.read(conversation, got["seq"])
        read = await a.next_event(timeout=10, type="receipt")
        assert read["status"] == "read" and read["up_to_seq"] == 1
    for c in (alice, bob):
        await c.aclose()


@pytest.mark.parametrize("transport", ["ws", "longpoll"])
async def test_450_queued_messages_drain_in_order(natter_server, transport):
    alice, bob, conversation = await chat(natter_server.url)
    sends = [alice.send(conversation, for_devices(bob, body=b"m%d" % i)) for i in range(450)]
    for batch in range(0, 450, 50):
        await asyncio.gather(*sends[batch : batch + 50])
    async with bob.connect(transport) as b:
        seqs = []
        while len(seqs) < 450:
            seqs.append((await next_message(b, timeout=20))["seq"])
        await b.wait_drained(timeout=10)
    assert seqs == list(range(1, 451))
    # Everything was acked: nothing of a body is left on the server.
    await asyncio.sleep(0.5)
    left = InboxEntry.objects.filter(device_id=int(bob.device_id[2:]), type="message")
    assert await database_sync_to_async(left.count)() == 0
    for c in (alice, bob):
        await c.aclose()


async def test_a_resend_with_the_same_client_id_is_stored_once(natter_server):
    alice, bob, conversation = await chat(natter_server.url)
    client_id = str(uuid.uuid4())
    async with alice.connect("ws") as a:
        first = await a.send(conversation, for_devices(bob), client_id=client_id)
        again = await a.send(conversation, for_devices(bob), client_id=client_id)
    over_rest = await alice.send(conversation, for_devices(bob), client_id=client_id)
    assert first == again == over_rest
    stored = Message.objects.filter(conversation_id=int(conversation[2:]))
    assert await database_sync_to_async(stored.count)() == 1
    async with bob.connect("longpoll") as b:
        await next_message(b)
        with pytest.raises(TimeoutError):
            await next_message(b, timeout=1)
    for c in (alice, bob):
        await c.aclose()


async def test_concurrent_senders_get_gapless_seq(natter_server):
    alice, bob, conversation = await chat(natter_server.url)
    alice2 = await another_device(natter_server.url, alice, "phone")
    senders = [(alice, (alice2, bob)), (alice2, (alice, bob)), (bob, (alice, alice2))]

    async def burst(client, recipients, transport):
        async with client.connect(transport) as conn:
            acks = []
            for _ in range(30):
                acks.append(await conn.send(conversation, for_devices(*recipients)))
            return acks

    results = await asyncio.gather(
        *(burst(c, r, t) for (c, r), t in zip(senders, ["ws", "longpoll", "ws"], strict=True))
    )
    seqs = sorted(ack.seq for acks in results for ack in acks)
    assert seqs == list(range(1, 91))
    for c in (alice, alice2, bob):
        await c.aclose()


@pytest.mark.parametrize("transport", ["ws", "longpoll"])
async def test_a_lost_doorbell_still_delivers(natter_server, transport):
    alice, bob, conversation = await chat(natter_server.url)
    # A long-poll that is already waiting misses the doorbell; its next poll finds it.
    async with bob.connect(transport, poll_timeout=3) as b:
        await b.wait_drained(timeout=10)

        @database_sync_to_async
        def send_without_doorbell():
            sender = services.Device.objects.get(id=int(alice.device_id[2:]))
            with mock.patch.object(events, "_group_send_all"):
                return services.message_send(
                    sender_device=sender,
                    conversation_id=int(conversation[2:]),
                    client_id=uuid.uuid4(),
                    kind="text",
                    ciphertexts=[services.Ciphertext(int(bob.device_id[2:]), "message", b"quiet")],
                )

        result = await send_without_doorbell()
        # The WebSocket finds it on its next heartbeat (2 s here), the long-poll on its
        # next request (3 s here).
        got = await next_message(b, timeout=10)
        assert got["message_id"] == result.message.public_id and got["body"] == b"quiet"
    for c in (alice, bob):
        await c.aclose()


async def test_an_unacked_event_comes_back_after_reconnect(natter_server):
    alice, bob, conversation = await chat(natter_server.url)
    ack = await alice.send(conversation, for_devices(bob))
    async with bob.connect("ws", auto_ack=False) as b:
        first = await next_message(b)
    async with bob.connect("ws", auto_ack=False) as b:
        again = await next_message(b)
        assert again["message_id"] == first["message_id"] == ack.message_id
        await b.ack(again.cursor)
        await asyncio.sleep(0.3)
    async with bob.connect("longpoll") as b:
        await b.wait_drained(timeout=10)
        with pytest.raises(TimeoutError):
            await next_message(b, timeout=1)
    for c in (alice, bob):
        await c.aclose()


async def test_expiry_on_the_worker_tells_the_sender(natter_server):
    from apps.messaging.tasks import inbox_expire_task

    alice, bob, conversation = await chat(natter_server.url)
    ack = await alice.send(conversation, for_devices(bob))

    @database_sync_to_async
    def age_everything():
        old = timezone.now() - timedelta(days=31)
        Message.objects.filter(conversation_id=int(conversation[2:])).update(created_at=old)
        InboxEntry.objects.filter(message__conversation_id=int(conversation[2:])).update(
            created_at=old
        )

    await age_everything()
    await database_sync_to_async(inbox_expire_task.delay)()
    async with alice.connect("ws") as a:
        receipt = await a.next_event(timeout=20, type="receipt")
    assert receipt["status"] == "expired" and receipt["seqs"] == [ack.seq]
    assert receipt["by_user"] == bob.user_id
    for c in (alice, bob):
        await c.aclose()
