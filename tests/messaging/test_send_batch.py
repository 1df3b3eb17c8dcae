"""Sends stored together (message_send_many): one outcome per send, a fixed query cost."""

import uuid

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from apps.common.errors import BadRequest, DeviceMismatch, NotMember
from apps.groups import services as groups
from apps.messaging import services
from apps.messaging.models import Conversation, InboxEntry, Message, Receipt
from tests.messaging.helpers import events_of, send

pytestmark = pytest.mark.django_db


def request(device, conversation, devices, *, client_id=None, **kw):
    return services.SendRequest(
        sender_device=device,
        conversation_id=conversation.id,
        client_id=client_id or uuid.uuid4(),
        kind="text",
        ciphertexts=[services.Ciphertext(d.id, "message", b"body/%d" % d.id) for d in devices],
        **kw,
    )


@pytest.fixture
def chats(people):
    """Five pairs, each with a direct conversation: (sender, recipient, conversation)."""
    out = []
    for _ in range(5):
        a, b = people.user(), people.user()
        a1, b1 = people.device(a), people.device(b)
        conversation, _ = services.conversation_direct_get_or_create(user=a, other_user_id=b.id)
        out.append((a1, b1, conversation))
    return out


def test_a_burst_of_direct_sends_costs_the_queries_of_one_send(chats):
    for a1, b1, conversation in chats:
        send(a1, conversation, [b1])  # warm: the first send of a chat is no different
    burst = [request(a1, c, [b1]) for a1, b1, c in chats for _ in range(6)]
    with CaptureQueriesContext(connection) as queries:
        results = services.message_send_many(requests=burst)
    # One statement checks the sends (members, device sets, client ids) and writes
    # the seqs, cursors, messages, inbox rows and receipts, in the test's transaction
    # within a savepoint: the same 3 as one send (test_send_query_count_is_pinned).
    assert len(queries) == 3, [q["sql"] for q in queries]
    assert all(isinstance(r, services.SendResult) and not r.duplicate for r in results)
    for _, b1, conversation in chats:
        seqs = [
            r.message.seq
            for r, q in zip(results, burst, strict=True)
            if q.conversation_id == conversation.id
        ]
        assert seqs == [2, 3, 4, 5, 6, 7]  # in request order, gapless
        assert [e["seq"] for e in events_of(b1, "message")] == [1, 2, 3, 4, 5, 6, 7]
        assert Receipt.objects.filter(message__conversation=conversation).count() == 7


def test_one_refused_send_in_a_burst_fails_only_itself(chats, people):
    (a1, b1, c1), (a2, b2, c2), (a3, b3, c3) = chats[:3]
    stranger = people.device(people.user())
    earlier = send(a1, c1, [b1])
    repeated = uuid.uuid4()
    burst = [
        request(a1, c1, [b1]),  # fine: seq 2
        request(stranger, c1, [b1]),  # not a member
        request(a2, c2, []),  # misses b2
        request(a2, c2, [b2], reply_to_seq=5),  # replies to a message not sent yet
        request(a3, c3, [b3], client_id=repeated),  # fine: seq 1
        request(a3, c3, [b3], client_id=repeated),  # the same send twice in the burst
        request(a1, c1, [b1], client_id=earlier.message.client_id),  # a resend
        request(a2, c2, [b2]),  # fine: seq 1, the refused ones gave their seqs back
        request(a1, c1, [b1], group_body=b"x"),  # not a group
        request(a1, c1, [b1, b1]),  # a device twice
    ]
    results = services.message_send_many(requests=burst)
    assert results[0].message.seq == 2 and not results[0].duplicate
    assert isinstance(results[1], NotMember)
    assert isinstance(results[2], DeviceMismatch)
    assert results[2].as_dict()["missing"] == [b2.public_id]
    assert isinstance(results[3], BadRequest) and results[3].as_dict()["field"] == "reply_to_seq"
    assert results[4].message.seq == 1 and not results[4].duplicate
    assert results[5].duplicate and results[5].message.id == results[4].message.id
    assert results[6].duplicate and results[6].message.id == earlier.message.id
    assert results[7].message.seq == 1 and not results[7].duplicate
    assert isinstance(results[8], BadRequest) and results[8].as_dict()["field"] == "group_body"
    assert isinstance(results[9], BadRequest) and results[9].as_dict()["field"] == "ciphertexts"
    assert [e["seq"] for e in events_of(b1, "message")] == [1, 2]
    assert [e["seq"] for e in events_of(b2, "message")] == [1]
    assert [e["seq"] for e in events_of(b3, "message")] == [1]
    assert Message.objects.filter(conversation=c3).count() == 1


def test_a_reply_to_a_message_of_the_same_burst_is_stored(chats):
    a1, b1, conversation = chats[0]
    burst = [request(a1, conversation, [b1]), request(a1, conversation, [b1], reply_to_seq=1)]
    first, reply = services.message_send_many(requests=burst)
    assert (first.message.seq, reply.message.seq, reply.message.reply_to_seq) == (1, 2, 1)


def test_group_and_direct_sends_in_one_burst_each_take_their_path(chats, people):
    a1, b1, direct = chats[0]
    carol = people.user()
    people.device(carol)
    group = groups.group_create(creator=a1.user, title="Mixed", member_ids=[carol.id])
    burst = [
        request(a1, group, [], group_body=b"for everyone"),
        request(a1, direct, [b1]),
        request(a1, group, []),  # a group message needs its group body
    ]
    results = services.message_send_many(requests=burst)
    assert results[0].message.group_body == b"for everyone"
    assert results[1].message.seq == 1
    assert isinstance(results[2], BadRequest) and results[2].as_dict()["field"] == "group_body"
    # Fanned out by a worker after commit, as any group message.
    assert results[0].message.fanout_pending


def test_a_group_resend_that_raced_past_the_duplicate_check_gets_the_original(chats, people):
    a1, _, _ = chats[0]
    carol = people.user()
    people.device(carol)
    group = groups.group_create(creator=a1.user, title="Race", member_ids=[carol.id])
    send = request(a1, group, [], group_body=b"once")
    (original,) = services.message_send_many(requests=[send])
    # As if a resend from another process committed between the batch's duplicate
    # check and this store: the client_id constraint sends it to its original.
    again = services._message_send_one(send)
    assert again.duplicate and again.message.id == original.message.id
    assert Message.objects.filter(conversation=group, client_id=send.client_id).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_burst_outside_a_transaction_is_one_statement(people):
    a, b = people.user(), people.user()
    a1, b1, b2 = people.device(a), people.device(b), people.device(b)
    conversation, _ = services.conversation_direct_get_or_create(user=a, other_user_id=b.id)
    send(a1, conversation, [b1, b2])
    burst = [request(a1, conversation, [b1, b2], reply_to_seq=1) for _ in range(3)]
    with CaptureQueriesContext(connection) as queries:
        results = services.message_send_many(requests=burst)
    # No reads, no BEGIN, no COMMIT: the checked write commits by itself (a reply to
    # a seq that existed when it started takes this path too).
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert [r.message.seq for r in results] == [2, 3, 4]
    conversation.refresh_from_db()
    assert conversation.last_seq == 4
    for device in (b1, b2):
        assert [e["seq"] for e in events_of(device, "message")] == [1, 2, 3, 4]
        rows = InboxEntry.objects.filter(device=device, type="message").order_by("cursor")
        cursors = list(rows.values_list("cursor", flat=True))
        assert cursors == list(range(cursors[0], cursors[0] + 4))  # one each, in order
    assert Receipt.objects.filter(message__conversation=conversation, user=b).count() == 4
    stored = Message.objects.get(id=results[1].message.id)
    assert (stored.seq, stored.reply_to_seq, stored.sender_device_id) == (3, 1, a1.id)


def test_a_device_revoked_after_the_check_gets_no_row_and_the_others_theirs(chats, people):
    a1, b1, conversation = chats[0]
    b2 = people.device(b1.user)
    send(a1, conversation, [b1, b2])
    burst = [request(a1, conversation, [b1, b2]) for _ in range(2)]
    b2.revoked_at = b2.created_at
    b2.save(update_fields=["revoked_at"])
    results = services._direct_messages_write_at_once(
        burst, [0, 1], {conversation.id: {a1.user_id, b1.user_id}}
    )
    assert [r.message.seq for r in results.values()] == [2, 3]
    assert [e["seq"] for e in events_of(b1, "message")] == [1, 2, 3]
    assert InboxEntry.objects.filter(device=b2).count() == 1  # only the one sent before


def test_a_write_that_breaks_a_constraint_leaves_nothing_behind(chats):
    a1, b1, conversation = chats[0]
    earlier = send(a1, conversation, [b1])
    fresh = request(a1, conversation, [b1])
    resent = request(a1, conversation, [b1], client_id=earlier.message.client_id)
    members = {conversation.id: {a1.user_id, b1.user_id}}
    # As if the resend had committed elsewhere after this batch's duplicate check.
    with pytest.raises(IntegrityError):
        services._direct_messages_write_at_once([fresh, resent], [0, 1], members)
    conversation.refresh_from_db()
    assert conversation.last_seq == 1  # the reserved seqs were given back
    assert not Message.objects.filter(client_id=fresh.client_id).exists()
    assert [e["seq"] for e in events_of(b1, "message")] == [1]
    # The batch's fallback stores the fresh one and finds the resend's original.
    fresh_result, resent_result = services.message_send_many(requests=[fresh, resent])
    assert fresh_result.message.seq == 2 and not fresh_result.duplicate
    assert resent_result.duplicate and resent_result.message.id == earlier.message.id


def test_a_chat_deleted_after_the_check_refuses_only_its_own_sends(chats):
    (a1, b1, doomed_chat), (a2, b2, other_chat) = chats[:2]
    members = {c.id: {a.user_id, b.user_id} for a, b, c in chats[:2]}
    doomed, fine = request(a1, doomed_chat, [b1]), request(a2, other_chat, [b2])
    Conversation.objects.filter(id=doomed_chat.id).delete()
    results = services._direct_messages_write_at_once([doomed, fine], [0, 1], members)
    assert isinstance(results[0], NotMember)
    assert results[1].message.seq == 1
    assert not Message.objects.filter(client_id=doomed.client_id).exists()
    assert not InboxEntry.objects.filter(device=b1, type="message").exists()
    assert [e["seq"] for e in events_of(b2, "message")] == [1]


def sql_of(queries) -> list[str]:
    """Each statement of a capture, named by what it is."""
    names = []
    for q in queries:
        sql = q["sql"]
        if "checked AS (" in sql:
            names.append("checked write")
        elif "AS k(device, client)" in sql:
            names.append("reads")
        elif "inserted0 AS" in sql:
            names.append("write")
        elif "SAVEPOINT" not in sql:
            names.append(sql[:60])
    return names


@pytest.fixture
def warm_chat(people):
    """A direct chat with one message sent, so this process knows it is direct."""
    a, b = people.user(), people.user()
    a1, b1 = people.device(a), people.device(b)
    conversation, _ = services.conversation_direct_get_or_create(user=a, other_user_id=b.id)
    send(a1, conversation, [b1])
    assert conversation.id in services._DIRECT_CHATS
    return a1, b1, conversation


def revoked(device):
    device.revoked_at = device.created_at
    device.save(update_fields=["revoked_at"])
    return device


# Each send the checked write must refuse, with what refuses it as the reads would.
# (description, how to make the bad send from (people, a1, b1, conversation), check)
BAD_SENDS = {
    "not a member": (
        lambda people, a1, b1, c: request(people.device(people.user()), c, [b1]),
        lambda r, b1: isinstance(r, NotMember),
    ),
    "a device missing": (
        lambda people, a1, b1, c: request(a1, c, []),
        lambda r, b1: isinstance(r, DeviceMismatch) and r.as_dict()["missing"] == [b1.public_id],
    ),
    "a device extra": (
        lambda people, a1, b1, c: request(a1, c, [b1, people.device(people.user())]),
        lambda r, b1: isinstance(r, DeviceMismatch) and len(r.as_dict()["extra"]) == 1,
    ),
    "a revoked device": (
        lambda people, a1, b1, c: request(a1, c, [b1, revoked(people.device(b1.user))]),
        lambda r, b1: isinstance(r, DeviceMismatch) and len(r.as_dict()["extra"]) == 1,
    ),
    "a device without keys": (
        lambda people, a1, b1, c: request(a1, c, [b1, people.device(b1.user, keys=False)]),
        lambda r, b1: isinstance(r, DeviceMismatch) and len(r.as_dict()["extra"]) == 1,
    ),
    "a device twice": (
        lambda people, a1, b1, c: request(a1, c, [b1, b1]),
        lambda r, b1: isinstance(r, BadRequest) and r.as_dict()["field"] == "ciphertexts",
    ),
    "a resend": (
        lambda people, a1, b1, c: request(
            a1, c, [b1], client_id=Message.objects.get(conversation=c, seq=1).client_id
        ),
        lambda r, b1: r.duplicate and r.message.seq == 1,
    ),
    "a reply to a later seq": (
        lambda people, a1, b1, c: request(a1, c, [b1], reply_to_seq=9),
        lambda r, b1: isinstance(r, BadRequest) and r.as_dict()["field"] == "reply_to_seq",
    ),
}


@pytest.mark.parametrize("bad", BAD_SENDS)
def test_a_burst_the_checked_write_refuses_writes_nothing_and_is_checked_again(
    warm_chat, people, bad
):
    a1, b1, conversation = warm_chat
    make, refused_as = BAD_SENDS[bad]
    burst = [request(a1, conversation, [b1]), make(people, a1, b1, conversation)]
    with CaptureQueriesContext(connection) as queries:
        good, refused = services.message_send_many(requests=burst)
    # Tried as one statement, which wrote nothing; then read, checked and written
    # (a reply refused on the way takes the transaction of _direct_messages_store).
    names = sql_of(queries)
    assert names[:2] == ["checked write", "reads"] and names.count("checked write") == 1
    assert refused_as(refused, b1), refused
    assert good.message.seq == 2 and not good.duplicate  # no seq taken by the try
    assert [e["seq"] for e in events_of(b1, "message")] == [1, 2]
    conversation.refresh_from_db()
    assert conversation.last_seq == 2
    assert Receipt.objects.filter(message__conversation=conversation).count() == 2


def test_a_group_taken_for_a_direct_chat_goes_the_group_way(warm_chat, people):
    a1, _, _ = warm_chat
    carol = people.user()
    people.device(carol)
    group = groups.group_create(creator=a1.user, title="Mistaken", member_ids=[carol.id])
    services._DIRECT_CHATS.add(group.id)  # as if a wrong guess: the check catches it
    with CaptureQueriesContext(connection) as queries:
        (result,) = services.message_send_many(requests=[request(a1, group, [])])
    assert sql_of(queries)[:2] == ["checked write", "reads"]
    assert isinstance(result, BadRequest) and result.as_dict()["field"] == "group_body"
    assert not Message.objects.filter(conversation=group, kind="text").exists()


def test_a_chat_new_to_the_process_is_read_first_then_written_in_one_statement(people):
    a, b = people.user(), people.user()
    a1, b1 = people.device(a), people.device(b)
    conversation, _ = services.conversation_direct_get_or_create(user=a, other_user_id=b.id)
    with CaptureQueriesContext(connection) as queries:
        send(a1, conversation, [b1])
    assert sql_of(queries) == ["reads", "write"]
    with CaptureQueriesContext(connection) as queries:
        send(a1, conversation, [b1])
    assert sql_of(queries) == ["checked write"]


def test_the_checked_write_stores_a_receipt_for_each_member_but_the_sender(warm_chat, people):
    a1, b1, conversation = warm_chat
    a2, b2 = people.device(a1.user, "phone"), people.device(b1.user, "phone")
    with CaptureQueriesContext(connection) as queries:
        result = send(a1, conversation, [a2, b1, b2])
    assert sql_of(queries) == ["checked write"]
    receipts = Receipt.objects.filter(message=result.message)
    assert list(receipts.values_list("user_id", flat=True)) == [b1.user_id]
    for device in (a2, b1, b2):
        assert [e["seq"] for e in events_of(device, "message")][-1] == 2


def test_a_send_batchs_statement_text_is_built_once_for_every_size(warm_chat):
    a1, b1, conversation = warm_chat
    services.message_send_many(requests=[request(a1, conversation, [b1])])  # built here
    before = services._counters_sql.cache_info()
    for size in (1, 3, 7):
        services.message_send_many(requests=[request(a1, conversation, [b1]) for _ in range(size)])
    after = services._counters_sql.cache_info()
    assert (after.misses, after.hits) == (before.misses, before.hits + 3)
