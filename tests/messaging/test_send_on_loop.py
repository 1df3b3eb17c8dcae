"""A socket process's burst of sends, checked and written by one statement run on its
event loop (batching._send_batch_on_loop), and every way it hands a burst back to
the database thread."""

import asyncio
import uuid

import psycopg
import pytest
from channels.db import database_sync_to_async
from django.db import connection

from apps.common import db
from apps.common.errors import DeviceMismatch, RateLimited
from apps.messaging import batching, events, services
from apps.messaging.models import Conversation, InboxEntry, Message, Receipt
from tests.messaging.helpers import send

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_batches"),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's async driver"),
]


@database_sync_to_async
def known_chat(people):
    """A direct chat with one message sent, so this process knows it is direct."""
    a, b = people.user(), people.user()
    a1, b1 = people.device(a), people.device(b)
    conversation, _ = services.conversation_direct_get_or_create(user=a, other_user_id=b.id)
    send(a1, conversation, [b1])
    return a1, b1, conversation


def request(device, conversation, devices, client_id=None):
    return services.SendRequest(
        sender_device=device,
        conversation_id=conversation.id,
        client_id=client_id or uuid.uuid4(),
        kind="text",
        ciphertexts=[services.Ciphertext(d.id, "message", b"on the loop") for d in devices],
    )


class Doorbells:
    """A socket's stand-in for the rings of one device of this process."""

    def __init__(self, device_id):
        self.rings = []
        events.local_listen(device_id, self)

    def doorbell(self, message):
        self.rings.append(message)


@database_sync_to_async
def stored(conversation):
    messages = list(Message.objects.filter(conversation=conversation).order_by("seq"))
    rows = {m.id: list(InboxEntry.objects.filter(message=m)) for m in messages}
    receipts = {m.id: list(Receipt.objects.filter(message=m)) for m in messages}
    return messages, rows, receipts


async def test_a_burst_is_written_on_the_loops_own_connection_and_rung(people):
    a1, b1, conversation = await known_chat(people)
    bell = Doorbells(b1.id)
    used_before = len(db._loop_connections.get(asyncio.get_running_loop(), []))
    burst = [request(a1, conversation, [b1]) for _ in range(3)]
    results = await batching._send_batch_on_loop(burst)
    assert [r.message.seq for r in results] == [2, 3, 4]
    assert not any(r.duplicate for r in results)
    # The loop kept its connection for the next burst (none was open before).
    assert used_before == 0 and len(db._loop_connections[asyncio.get_running_loop()]) == 1
    messages, rows, receipts = await stored(conversation)
    assert [m.seq for m in messages] == [1, 2, 3, 4]
    for m in messages[1:]:
        assert [(r.device_id, r.body) for r in rows[m.id]] == [(b1.id, b"on the loop")]
        assert [r.user_id for r in receipts[m.id]] == [b1.user_id]
    await batching.settle()
    # One ring, carrying the three new events in order.
    (ring,) = bell.rings
    assert [item["event"]["seq"] for item in ring["items"]] == [2, 3, 4]


async def test_a_refused_burst_goes_to_the_thread_and_learns_why(people):
    a1, b1, conversation = await known_chat(people)
    burst = [request(a1, conversation, [b1]), request(a1, conversation, [])]
    good, refused = await batching._send_batch_on_loop(burst)
    assert isinstance(refused, DeviceMismatch)
    assert refused.as_dict()["missing"] == [b1.public_id]
    assert good.message.seq == 2  # the statement that refused took no seq
    messages, _, _ = await stored(conversation)
    assert [m.seq for m in messages] == [1, 2]


async def test_a_resend_of_a_stored_message_gets_its_original(people):
    a1, b1, conversation = await known_chat(people)
    (first,) = await batching._send_batch_on_loop([request(a1, conversation, [b1])])
    (again,) = await batching._send_batch_on_loop(
        [request(a1, conversation, [b1], client_id=first.message.client_id)]
    )
    assert again.duplicate and again.message.id == first.message.id
    messages, _, _ = await stored(conversation)
    assert [m.seq for m in messages] == [1, 2]


async def test_a_chat_new_to_the_process_is_read_on_the_thread_first(people):
    a1, b1, conversation = await known_chat(people)
    services._DIRECT_CHATS.discard(conversation.id)
    loop = asyncio.get_running_loop()
    (result,) = await batching._send_batch_on_loop([request(a1, conversation, [b1])])
    assert result.message.seq == 2
    assert not db._loop_connections.get(loop)  # the loop ran no statement
    assert conversation.id in services._DIRECT_CHATS  # the next burst will


async def test_each_send_takes_one_token_of_its_rate_limit(people, settings):
    settings.NATTER = {
        **settings.NATTER,
        "RATE_LIMITS": True,
        "SEND_RATE": 1,
        "SEND_BURST": 3,
    }
    a1, b1, conversation = await known_chat(people)  # took a token: two are left
    results = await batching._send_batch_on_loop(
        [request(a1, conversation, [b1]) for _ in range(3)]
    )
    # Refused on the loop, the third makes the burst go to the thread, which does
    # not take the first two's tokens again: they are stored.
    assert [r.message.seq for r in results[:2]] == [2, 3]
    assert isinstance(results[2], RateLimited)


async def test_a_send_to_a_chat_deleted_meanwhile_is_refused_as_a_non_members(people):
    a1, b1, conversation = await known_chat(people)
    # The chat's row is gone between the burst's start and its statement: the guard
    # refuses it, and the thread's reads refuse the send as a non-member's.
    await database_sync_to_async(Conversation.objects.filter(id=conversation.id).delete)()
    (result,) = await batching._send_batch_on_loop([request(a1, conversation, [b1])])
    assert result.as_dict()["code"] == "not_member"


async def test_a_resend_committed_while_the_statement_waited_is_found_on_the_thread(people):
    # The statement's checks passed (its snapshot had no such message), then it
    # waited for the chat's lock; meanwhile the same send was stored elsewhere, so
    # its insert breaks the client id's constraint. The thread finds the original.
    a1, b1, conversation = await known_chat(people)
    client_id = uuid.uuid4()
    other = await psycopg.AsyncConnection.connect(**{**db._loop_params(), "autocommit": False})
    try:
        await other.execute(
            "SELECT 1 FROM messaging_conversation WHERE id = %s FOR UPDATE", [conversation.id]
        )
        task = asyncio.ensure_future(
            batching._send_batch_on_loop([request(a1, conversation, [b1], client_id)])
        )
        watcher = await psycopg.AsyncConnection.connect(**db._loop_params())
        for _ in range(200):  # until the statement waits for the chat's lock
            cur = await watcher.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query LIKE 'WITH checked AS%%' AND wait_event_type = 'Lock'"
            )
            if (await cur.fetchone())[0]:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the statement never waited for the lock")
        await watcher.close()
        await other.execute(
            "INSERT INTO messaging_message (id, conversation_id, seq, sender_user_id,"
            " sender_device_id, client_id, kind, fanout_pending, created_at)"
            " VALUES (424242, %s, 99, %s, %s, %s, 'text', false, now())",
            [conversation.id, a1.user_id, a1.id, client_id],
        )
        await other.commit()
        (result,) = await task
    finally:
        await other.close()
    assert result.duplicate and result.message.id == 424242
    messages, _, _ = await stored(conversation)
    assert [m.seq for m in messages] == [1, 99]  # nothing else was written
