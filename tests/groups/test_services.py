"""Groups against Postgres: events in order, fan-out exactly once, membership at seq."""

import random
import threading
import uuid

import pytest
from django.db import connections

from apps.common.errors import BadRequest, DeviceMismatch, NotMember
from apps.groups import services as groups
from apps.messaging import services
from apps.messaging.models import InboxEntry, Membership, Message, Receipt
from apps.messaging.selectors import inbox_after, message_receipts

pytestmark = pytest.mark.django_db


def group_send(device, group, body=b"sealed", extras=(), client_id=None):
    return services.message_send(
        sender_device=device,
        conversation_id=group.id,
        client_id=client_id or uuid.uuid4(),
        kind="text",
        ciphertexts=[services.Ciphertext(d.id, "prekey", b"sk-for-%d" % d.id) for d in extras],
        group_body=body,
    )


def events(device, type_=None):
    items = inbox_after(device_id=device.id, after_cursor=0, limit=10_000)
    return [i["event"] for i in items if type_ is None or i["event"]["type"] == type_]


def message_rows(message):
    return list(InboxEntry.objects.filter(message=message).values_list("device_id", flat=True))


@pytest.fixture
def trio(people):
    alice, bob, carol = people.user("alice"), people.user("bob"), people.user("carol")
    a1, a2 = people.device(alice, "a1"), people.device(alice, "a2")
    b1, c1 = people.device(bob, "b1"), people.device(carol, "c1")
    group = groups.group_create(creator=alice, title="Trio", member_ids=[bob.id, carol.id])
    return alice, bob, carol, a1, a2, b1, c1, group


def test_create_makes_the_creator_admin_and_tells_every_member_device(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    assert Membership.objects.get(conversation=group, user=alice).is_admin
    for device in (a1, a2, b1, c1):
        (created,) = events(device, "group")
        assert created["action"] == "created" and created["seq"] == 1
        assert set(created["user_ids"]) == {alice.public_id, bob.public_id, carol.public_id}


def test_a_group_message_is_acked_before_its_fan_out_and_reaches_each_device_once(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    result = group_send(a1, group, body=b"hello all")
    message = result.message
    assert message.fanout_pending and message_rows(message) == []
    assert services.message_fanout(message_id=message.id) == 3
    assert services.message_fanout(message_id=message.id) == 0  # idempotent
    assert sorted(message_rows(message)) == sorted([a2.id, b1.id, c1.id])
    (event,) = events(b1, "message")
    assert event["envelope"] == "group" and event["seq"] == 2
    import base64

    assert base64.b64decode(event["body"]) == b"hello all"
    assert Receipt.objects.filter(message=message).count() == 2  # bob and carol


def test_pairwise_extras_go_only_to_the_chosen_devices(trio, people):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    message = group_send(a1, group, extras=[b1]).message
    services.message_fanout(message_id=message.id)
    (for_bob,) = events(b1, "message")
    assert for_bob["envelope"] == "prekey" and "group_body" in for_bob
    (for_carol,) = events(c1, "message")
    assert for_carol["envelope"] == "group" and "group_body" not in for_carol
    outsider = people.device(people.user())
    with pytest.raises(DeviceMismatch) as caught:
        group_send(a1, group, extras=[outsider])
    assert caught.value.extra["extra"] == [outsider.public_id]


def test_a_group_message_needs_a_group_body(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    with pytest.raises(BadRequest):
        group_send(a1, group, body=None)


def test_a_removed_member_gets_removed_then_nothing_more(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    before = group_send(a1, group).message
    groups.group_member_remove(group_id=group.id, actor=alice, user_id=carol.id)
    after = group_send(a1, group).message
    services.message_fanout(message_id=after.id)
    # The removal fanned out the message still pending before it, so Carol got it
    # (she was a member at its seq) before her `removed` event.
    assert c1.id in message_rows(before) and c1.id not in message_rows(after)
    carol_events = events(c1)
    assert carol_events[-1]["type"] == "group" and carol_events[-1]["action"] == "removed"
    with pytest.raises(NotMember):
        group_send(c1, group)


def test_someone_added_after_a_message_does_not_get_it(trio, people):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    dave = people.user("dave")
    d1 = people.device(dave)
    before = group_send(a1, group).message
    groups.group_members_add(group_id=group.id, actor=alice, user_ids=[dave.id])
    after = group_send(a1, group).message
    services.message_fanout(message_id=after.id)
    services.message_fanout(message_id=before.id)
    assert d1.id not in message_rows(before) and d1.id in message_rows(after)
    (added,) = [e for e in events(d1, "group") if e["action"] == "added"]
    assert added["user_ids"] == [dave.public_id]
    # The newcomer's unread count starts at their join.
    membership = Membership.objects.get(conversation=group, user=dave)
    assert membership.read_seq == membership.joined_seq - 1


def test_only_admins_change_the_group(trio, people):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    with pytest.raises(groups.NotAdmin):
        groups.group_members_add(group_id=group.id, actor=bob, user_ids=[people.user().id])
    with pytest.raises(groups.NotAdmin):
        groups.group_member_remove(group_id=group.id, actor=bob, user_id=carol.id)
    with pytest.raises(groups.NotAdmin):
        groups.group_rename(group_id=group.id, actor=bob, title="Mine")
    groups.group_admin_promote(group_id=group.id, actor=alice, user_id=bob.id)
    groups.group_rename(group_id=group.id, actor=bob, title="Ours")
    group.refresh_from_db()
    assert group.title == "Ours"
    assert [e["action"] for e in events(c1, "group")] == ["created", "promoted", "renamed"]


def test_a_group_holds_at_most_group_max_members(people, settings):
    settings.NATTER = {**settings.NATTER, "GROUP_MAX_MEMBERS": 4}
    owner = people.user()
    others = [people.user() for _ in range(4)]
    with pytest.raises(groups.GroupFull):
        groups.group_create(creator=owner, title="Big", member_ids=[u.id for u in others])
    group = groups.group_create(creator=owner, title="Big", member_ids=[u.id for u in others[:3]])
    with pytest.raises(groups.GroupFull) as caught:
        groups.group_members_add(group_id=group.id, actor=owner, user_ids=[others[3].id])
    assert caught.value.extra == {"max_members": 4}


def test_the_last_admin_leaving_promotes_the_longest_standing_member(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    groups.group_leave(group_id=group.id, user=alice)
    assert Membership.objects.get(conversation=group, user=bob).is_admin
    actions = [(e["action"], e["user_ids"]) for e in events(c1, "group")]
    assert actions[-2:] == [("left", [alice.public_id]), ("promoted", [bob.public_id])]
    # Alice's devices got her `left` as their last group event.
    assert events(a1, "group")[-1]["action"] == "left"


def test_group_events_and_messages_share_one_gapless_seq(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    group_send(a1, group)
    groups.group_rename(group_id=group.id, actor=alice, title="Renamed")
    group_send(b1, group)
    group.refresh_from_db()
    seqs = sorted(
        [e["seq"] for e in events(c1, "group")]
        + list(Message.objects.values_list("seq", flat=True))
    )
    assert seqs == [1, 2, 3, 4] and group.last_seq == 4


def test_receipts_list_members_for_the_sender_only(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    message = group_send(a1, group).message
    services.message_fanout(message_id=message.id)
    services.inbox_ack(
        device=b1, cursor=inbox_after(device_id=b1.id, after_cursor=0, limit=99)[-1]["cursor"]
    )
    services.conversation_read(device=c1, conversation_id=group.id, up_to_seq=message.seq)
    body = message_receipts(user=alice, message_id=message.id)
    state = {r["user"]: r for r in body["receipts"]}
    assert state[bob.public_id]["delivered_at"] and not state[bob.public_id]["read_at"]
    assert state[carol.public_id]["read_at"] and state[carol.public_id]["delivered_at"]
    assert message_receipts(user=bob, message_id=message.id) is None
    statuses = [(e["status"], e["by_user"]) for e in events(a2, "receipt")]
    assert ("delivered", bob.public_id) in statuses and ("read", carol.public_id) in statuses


def test_the_group_body_goes_once_every_device_acked(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    message = group_send(a1, group).message
    services.message_fanout(message_id=message.id)
    for device in (a2, b1, c1):
        last = inbox_after(device_id=device.id, after_cursor=0, limit=99)[-1]["cursor"]
        services.inbox_ack(device=device, cursor=last)
    message.refresh_from_db()
    assert message.group_body is None and not message.fanout_pending


def test_the_sweeper_finds_fan_outs_still_pending(trio):
    alice, bob, carol, a1, a2, b1, c1, group = trio
    message = group_send(a1, group).message
    assert services.fanout_pending_ids(older_than_s=-1) == [message.id]
    services.message_fanout(message_id=message.id)
    assert services.fanout_pending_ids(older_than_s=-1) == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_adds_removes_and_sends_keep_membership_at_seq_exact(people):
    owner = people.user("owner")
    owner_device = people.device(owner)
    pool = [people.user() for _ in range(8)]
    devices = {u.id: people.device(u) for u in pool}
    group = groups.group_create(creator=owner, title="Churn", member_ids=[u.id for u in pool[:4]])
    errors = []

    def churn():
        rng = random.Random(7)
        try:
            for _ in range(25):
                user = rng.choice(pool)
                if Membership.objects.current().filter(conversation=group, user=user).exists():
                    groups.group_member_remove(group_id=group.id, actor=owner, user_id=user.id)
                else:
                    groups.group_members_add(group_id=group.id, actor=owner, user_ids=[user.id])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    def sender():
        try:
            for _ in range(25):
                group_send(owner_device, group)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=churn), threading.Thread(target=sender)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    messages = list(Message.objects.filter(conversation=group))
    random.Random(3).shuffle(messages)  # workers may run in any order
    for message in messages:
        services.message_fanout(message_id=message.id)

    # Replay the group's events (as the owner's device saw them) to know who was a
    # member at every seq, then check each message reached exactly those members.
    members, at_seq = {u.id for u in pool[:4]}, {}
    timeline = sorted(
        [(e["seq"], e) for e in events(owner_device, "group")] + [(m.seq, m) for m in messages],
        key=lambda pair: pair[0],
    )
    for _seq, item in timeline:
        if isinstance(item, Message):
            at_seq[item.id] = set(members)
        elif item["action"] == "added":
            members |= {int(u[2:]) for u in item["user_ids"]}
        elif item["action"] == "removed":
            members -= {int(u[2:]) for u in item["user_ids"]}
    for message in messages:
        got = {d for d in message_rows(message)}
        assert got == {devices[u].id for u in at_seq[message.id]}, message.seq


def test_a_batch_of_acks_from_many_members_costs_the_same_queries_as_one(people):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    owner = people.user()
    owner_device = people.device(owner)
    members = [people.user() for _ in range(30)]
    devices = [people.device(u) for u in members]
    group = groups.group_create(creator=owner, title="Batch", member_ids=[u.id for u in members])
    message = group_send(owner_device, group).message
    services.message_fanout(message_id=message.id)
    acks = [
        (d, inbox_after(device_id=d.id, after_cursor=0, limit=99)[-1]["cursor"], 0) for d in devices
    ]
    with CaptureQueriesContext(connection) as queries:
        services.inbox_ack_many(acks=acks)
    assert len(queries) <= 15, [q["sql"][:120] for q in queries]
    assert Receipt.objects.filter(message=message, delivered_at__isnull=False).count() == 30
    delivered = [e for e in events(owner_device, "receipt") if e["status"] == "delivered"]
    assert sorted(e["by_user"] for e in delivered) == sorted(u.public_id for u in members)
    assert all(e["up_to_seq"] == message.seq for e in delivered)
    message.refresh_from_db()
    assert message.group_body is None  # every copy acked: the body is gone
