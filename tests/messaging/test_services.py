"""The send / ack / read / expire services against Postgres."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.common.errors import BadRequest, DeviceMismatch, NotMember
from apps.messaging import services
from apps.messaging.models import InboxEntry, Membership, Message, Receipt
from tests.messaging.helpers import events_of, inbox, run_in_threads, run_interleaved, send

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(people):
    alice, bob = people.user("alice"), people.user("bob")
    a1, a2 = people.device(alice, "a-laptop"), people.device(alice, "a-phone")
    b1, b2 = people.device(bob, "b-laptop"), people.device(bob, "b-phone")
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    # Start from empty inboxes: logins put `device` events in them.
    for d in (a1, a2, b1, b2):
        InboxEntry.objects.filter(device=d).delete()
    return alice, bob, a1, a2, b1, b2, conversation


def test_direct_conversation_is_idempotent_per_pair(people):
    alice, bob = people.user(), people.user()
    first, created = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    again, created_again = services.conversation_direct_get_or_create(
        user=bob, other_user_id=alice.id
    )
    assert created and not created_again
    assert first.id == again.id


def test_send_writes_one_inbox_row_per_recipient_device_including_senders_others(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    result = send(a1, conversation, [a2, b1, b2], body=b"hello")
    assert not result.duplicate and result.message.seq == 1
    assert inbox(a1) == []
    for device in (a2, b1, b2):
        (item,) = inbox(device)
        event = item["event"]
        assert event["type"] == "message"
        assert event["seq"] == 1 and event["message_id"] == result.message.public_id
        assert event["sender"] == {"user": alice.public_id, "device": a1.public_id}
    assert Receipt.objects.filter(message=result.message).count() == 1


def test_resend_with_same_client_id_is_not_stored_twice(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    client_id = uuid.uuid4()
    first = send(a1, conversation, [a2, b1, b2], client_id=client_id)
    again = send(a1, conversation, [a2, b1, b2], client_id=client_id)
    assert again.duplicate and again.as_ack() == first.as_ack()
    assert Message.objects.count() == 1
    assert len(inbox(b1)) == 1


def test_device_mismatch_names_missing_and_extra_and_stores_nothing(chat, people):
    alice, bob, a1, a2, b1, b2, conversation = chat
    stranger = people.device(people.user())
    with pytest.raises(DeviceMismatch) as caught:
        send(a1, conversation, [a2, b1, stranger])
    assert caught.value.extra == {"missing": [b2.public_id], "extra": [stranger.public_id]}
    assert Message.objects.count() == 0
    conversation.refresh_from_db()
    assert conversation.last_seq == 0


def test_send_to_someone_elses_conversation_is_not_member(chat, people):
    *_, conversation = chat
    outsider = people.device(people.user())
    with pytest.raises(NotMember):
        send(outsider, conversation, [])


def test_reply_to_must_name_an_earlier_message(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    with pytest.raises(BadRequest):
        send(a1, conversation, [a2, b1, b2], reply_to_seq=1)
    conversation.refresh_from_db()
    assert conversation.last_seq == 0  # the failed send returned its seq


def test_ack_deletes_rows_and_sends_one_delivered_receipt_to_each_sender_device(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    for _ in range(3):
        send(a1, conversation, [a2, b1, b2])
    last = inbox(b1)[-1]["cursor"]
    services.inbox_ack(device=b1, cursor=last)
    assert inbox(b1) == []
    for device in (a1, a2):
        (receipt,) = events_of(device, "receipt")
        assert receipt["status"] == "delivered" and receipt["up_to_seq"] == 3
        assert receipt["by_user"] == bob.public_id
    # Bob's second device acking the same messages tells nobody anything new.
    services.inbox_ack(device=b2, cursor=inbox(b2)[-1]["cursor"])
    assert len(events_of(a1, "receipt")) == 1


def test_an_ack_with_a_lower_bound_deletes_only_its_span(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    for _ in range(4):
        send(a1, conversation, [a2, b1, b2])
    cursors = [row["cursor"] for row in inbox(b1)]
    # (cursors[0], cursors[2]]: the first row is below the bound and stays.
    services.inbox_ack_many(acks=[(b1, cursors[2], cursors[0])])
    assert [row["cursor"] for row in inbox(b1)] == [cursors[0], cursors[3]]
    # Two acks of one device in a batch cover both their spans.
    services.inbox_ack_many(acks=[(b1, cursors[0], 0), (b1, cursors[3], cursors[2])])
    assert inbox(b1) == []
    # A span that is empty or upside down deletes nothing.
    services.inbox_ack_many(acks=[(b2, cursors[1], cursors[1]), (b2, 0, 0)])
    assert len(inbox(b2)) == 4


def test_delivered_up_to_waits_for_a_message_only_an_offline_device_holds(chat, people):
    alice, bob, a1, a2, b1, b2, conversation = chat
    send(a1, conversation, [a2, b1, b2])  # seq 1 reaches b1 and b2
    b3 = people.device(bob, "b-tablet")  # a new device: it never gets seq 1
    InboxEntry.objects.filter(type="device").delete()
    send(a1, conversation, [a2, b1, b2, b3])  # seq 2
    services.inbox_ack(device=b3, cursor=inbox(b3)[-1]["cursor"])
    # Seq 2 reached Bob but seq 1 did not yet: "delivered up to 2" would be a lie.
    assert events_of(a1, "receipt") == []
    services.inbox_ack(device=b1, cursor=inbox(b1)[-1]["cursor"])
    (receipt,) = events_of(a1, "receipt")
    assert receipt["up_to_seq"] == 2


def test_an_ack_counts_its_own_receipts_delivered_and_stops_below_the_next_pending(chat):
    # The watermark stops below the first receipt still pending, and counts the ones
    # this very ack turned delivered as delivered.
    alice, bob, a1, a2, b1, b2, conversation = chat
    for _ in range(3):
        send(a1, conversation, [a2, b1, b2])
    services.inbox_ack(device=b1, cursor=inbox(b1)[1]["cursor"])  # seqs 1 and 2
    assert [r["up_to_seq"] for r in events_of(a1, "receipt")] == [2]
    assert Membership.objects.get(conversation=conversation, user=bob).delivered_seq == 2
    services.inbox_ack(device=b2, cursor=inbox(b2)[-1]["cursor"])  # seq 3 too
    assert [r["up_to_seq"] for r in events_of(a1, "receipt")] == [2, 3]
    assert Receipt.objects.filter(delivered_at__isnull=True).count() == 0


def test_the_watermark_passes_the_members_own_messages_up_to_the_next_pending(chat):
    # Bob's own messages have no receipt of his, so they never hold his watermark
    # back: it stops only below the next message to him still pending.
    alice, bob, a1, a2, b1, b2, conversation = chat
    send(a1, conversation, [a2, b1, b2])  # seq 1, to Bob
    send(b2, conversation, [a1, a2, b1])  # seqs 2 and 3, Bob's own
    send(b2, conversation, [a1, a2, b1])
    send(a1, conversation, [a2, b1, b2])  # seq 4, to Bob
    services.inbox_ack(device=b1, cursor=inbox(b1)[0]["cursor"])  # seq 1 only
    assert [r["up_to_seq"] for r in events_of(a1, "receipt")] == [3]
    services.inbox_ack(device=b1, cursor=inbox(b1)[-1]["cursor"])
    assert [r["up_to_seq"] for r in events_of(a1, "receipt")] == [3, 4]
    assert Membership.objects.get(conversation=conversation, user=bob).delivered_seq == 4


@pytest.mark.django_db(transaction=True)
def test_two_devices_acking_at_once_deliver_everything_once(people):
    alice, bob = people.user(), people.user()
    a1, b1, b2 = people.device(alice), people.device(bob), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    InboxEntry.objects.filter(device__in=[a1, b1, b2]).delete()
    for _ in range(30):
        send(a1, conversation, [b1, b2])
    start = threading.Barrier(2)

    def acker(device):
        cursors = [i["cursor"] for i in inbox(device)]
        start.wait(timeout=10)
        for n in range(2, len(cursors), 3):
            services.inbox_ack(device=device, cursor=cursors[n])

    run_in_threads(lambda: acker(b1), lambda: acker(b2))
    assert Receipt.objects.filter(delivered_at__isnull=True).count() == 0
    assert InboxEntry.objects.filter(device__in=[b1, b2]).count() == 0
    assert Membership.objects.get(conversation=conversation, user=bob).delivered_seq == 30
    seqs = [r["up_to_seq"] for r in events_of(a1, "receipt")]
    assert seqs == sorted(set(seqs)) and seqs[-1] == 30  # each range told once, in order


@pytest.mark.django_db(transaction=True)
def test_two_devices_delivering_different_messages_at_once_move_the_watermark_past_both(
    people,
):
    # b1 got seq 1 alone (b2 came later); b1 acks seq 1 while b2 acks seq 2. Each
    # ack finds the other's receipt pending until the other commits: the second to
    # lock the membership must read the first pending seq after the first commits,
    # or it stops below seq 1's receipt, the first stops below seq 2's, and the
    # sender never hears "delivered up to 2".
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    send(a1, conversation, [b1])  # seq 1
    b2 = people.device(bob)
    send(a1, conversation, [b1, b2])  # seq 2
    InboxEntry.objects.filter(type="device").delete()
    first_seq1 = inbox(b1)[0]["cursor"]
    only_seq2 = inbox(b2)[0]["cursor"]
    run_interleaved(
        lambda: services.inbox_ack(device=b1, cursor=first_seq1),
        lambda: services.inbox_ack(device=b2, cursor=only_seq2),
    )
    assert Receipt.objects.filter(delivered_at__isnull=True).count() == 0
    assert Membership.objects.get(conversation=conversation, user=bob).delivered_seq == 2
    assert [r["up_to_seq"] for r in events_of(a1, "receipt")][-1] == 2


@pytest.mark.django_db(transaction=True)
def test_an_expiry_and_an_ack_at_once_move_the_watermark_past_both(people):
    # Seq 1 reached only b1, which never acks it; past retention it expires while b2
    # acks seq 2. The expiry waits for the ack's lock on the membership, and must
    # read the first pending seq after the ack commits, or it stops below seq 2.
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    old = send(a1, conversation, [b1]).message  # seq 1
    b2 = people.device(bob)
    send(a1, conversation, [b1, b2])  # seq 2
    InboxEntry.objects.filter(type="device").delete()
    long_ago = timezone.now() - timedelta(days=settings.NATTER["RETENTION_DAYS"] + 1)
    Message.objects.filter(id=old.id).update(created_at=long_ago)
    InboxEntry.objects.filter(message_id=old.id).update(created_at=long_ago)
    only_seq2 = inbox(b2)[0]["cursor"]
    run_interleaved(
        lambda: services.inbox_ack(device=b2, cursor=only_seq2),
        services.inbox_expire,
    )
    assert Membership.objects.get(conversation=conversation, user=bob).delivered_seq == 2
    receipts = [(r["status"], r["up_to_seq"]) for r in events_of(a1, "receipt")]
    assert ("expired", 1) in receipts and receipts[-1] == ("delivered", 2)


def test_read_moves_pointer_and_sends_one_batched_read_receipt(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    for _ in range(4):
        send(a1, conversation, [a2, b1, b2])
    assert services.conversation_read(device=b1, conversation_id=conversation.id, up_to_seq=3) == 3
    (receipt,) = events_of(a1, "receipt")
    assert receipt["status"] == "read" and receipt["up_to_seq"] == 3
    # Reading again up to the same point sends nothing; beyond last_seq is clamped.
    services.conversation_read(device=b2, conversation_id=conversation.id, up_to_seq=3)
    assert services.conversation_read(device=b2, conversation_id=conversation.id, up_to_seq=99) == 4
    assert [r["up_to_seq"] for r in events_of(a1, "receipt")] == [3, 4]
    assert Receipt.objects.filter(read_at__isnull=False).count() == 4


def test_nothing_of_a_body_remains_once_every_recipient_device_acked(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    send(a1, conversation, [a2, b1, b2], body=b"goodnight")
    for device in (a2, b1, b2):
        services.inbox_ack(device=device, cursor=inbox(device)[-1]["cursor"])
    assert not InboxEntry.objects.filter(type="message").exists()
    assert not InboxEntry.objects.filter(body__isnull=False).exists()


def test_expiry_drops_old_rows_and_tells_the_sender_what_never_arrived(chat, settings):
    alice, bob, a1, a2, b1, b2, conversation = chat
    settings.NATTER = {**settings.NATTER, "RETENTION_DAYS": 30}
    send(a1, conversation, [a2, b1, b2])
    send(a1, conversation, [a2, b1, b2])
    later = timezone.now() + timedelta(days=31)
    result = services.inbox_expire(now=later)
    assert result["receipts_expired"] == 2
    assert not InboxEntry.objects.filter(type="message").exists()
    (receipt,) = events_of(a1, "receipt")
    assert receipt["status"] == "expired" and receipt["seqs"] == [1, 2]
    assert receipt["by_user"] == bob.public_id
    # Past retention the metadata goes too; running again finds nothing more to say.
    assert result["messages_deleted"] == 2 and not Message.objects.exists()
    assert not Receipt.objects.exists()
    assert services.inbox_expire(now=later)["receipts_expired"] == 0


def test_reading_past_an_expired_message_leaves_it_expired(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    send(a1, conversation, [a2, b1, b2])
    Receipt.objects.update(expired_at=timezone.now())  # seq 1 never arrived
    send(a1, conversation, [a2, b1, b2])
    services.conversation_read(device=b1, conversation_id=conversation.id, up_to_seq=2)
    states = dict(Receipt.objects.values_list("message__seq", "read_at"))
    assert states[1] is None and states[2] is not None


def test_cursors_strictly_increase_per_device(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    for _ in range(5):
        send(a1, conversation, [a2, b1, b2])
    cursors = [i["cursor"] for i in inbox(b1)]
    assert cursors == sorted(cursors) and len(set(cursors)) == 5


def test_send_query_count_is_pinned(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    send(a1, conversation, [a2, b1, b2])
    with CaptureQueriesContext(connection) as queries:
        send(a1, conversation, [a2, b1, b2])
    # The checks (client id, members, devices) and the seq, cursors, message, inbox
    # rows and receipt in one statement, in a savepoint (the test's transaction;
    # outside one it commits by itself: test_send_batch.py).
    assert len(queries) == 3, [q["sql"] for q in queries]


def test_ack_query_count_is_pinned(chat):
    alice, bob, a1, a2, b1, b2, conversation = chat
    for _ in range(20):
        send(a1, conversation, [a2, b1, b2])
    last = inbox(b1)[-1]["cursor"]
    with CaptureQueriesContext(connection) as queries:
        services.inbox_ack(device=b1, cursor=last)
    # delete (with the group-body flag), receipts locked and updated in one statement,
    # memberships locked with last_seq and the first pending seq, watermark, the
    # senders' devices, cursors, receipt rows, savepoints: the same for 20 messages as
    # for one, and for a batch of devices as for one.
    assert len(queries) == 9, [q["sql"] for q in queries]


@pytest.mark.django_db(transaction=True)
def test_concurrent_senders_get_gapless_seq(people):
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    errors = []

    def worker(sender, recipient):
        try:
            for _ in range(15):
                send(sender, conversation, [recipient])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(a1, b1)) for _ in range(3)]
    threads += [threading.Thread(target=worker, args=(b1, a1)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seqs = sorted(Message.objects.filter(conversation=conversation).values_list("seq", flat=True))
    assert seqs == list(range(1, 91))
    cursors = [i["cursor"] for i in inbox(b1)]
    assert cursors == sorted(set(cursors))


@pytest.mark.django_db(transaction=True)
def test_concurrent_resends_of_one_client_id_store_one_message(people):
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    client_id = uuid.uuid4()
    results, barrier = [], threading.Barrier(6)

    def worker():
        barrier.wait()
        try:
            results.append(send(a1, conversation, [b1], client_id=client_id))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert len({r.message.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert Message.objects.count() == 1
