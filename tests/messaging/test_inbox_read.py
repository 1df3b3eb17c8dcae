"""The batched inbox read (sockets) says exactly what the one-device read (long-poll) says."""

import uuid

import pytest

from apps.groups import services as groups
from apps.messaging import selectors, services
from tests.groups.test_services import group_send

pytestmark = pytest.mark.django_db


def test_the_batched_read_matches_the_single_read_for_every_kind_of_event(people):
    alice, bob, carol = people.user(), people.user(), people.user()
    a1, b1, b2, c1 = (
        people.device(alice),
        people.device(bob),
        people.device(bob),
        people.device(carol),
    )
    direct, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    for n in range(3):
        services.message_send(
            sender_device=a1,
            conversation_id=direct.id,
            client_id=uuid.uuid4(),
            kind="text",
            ciphertexts=[
                services.Ciphertext(d.id, "message", b"to-%d-%d" % (d.id, n)) for d in (b1, b2)
            ],
            reply_to_seq=n or None,
        )
    group = groups.group_create(creator=alice, title="Mixed", member_ids=[bob.id, carol.id])
    # A group body for everyone, and beside it a pairwise Sender Key for b1 only.
    message = group_send(a1, group, body=b"for-all", extras=[b1]).message
    services.message_fanout(message_id=message.id)
    second = group_send(a1, group, body=b"second").message
    services.message_fanout(message_id=second.id)
    # b1 acks up to the first direct message: a `receipt` event lands in a1's inbox.
    first = next(
        e["cursor"]
        for e in selectors.inbox_after(device_id=b1.id, after_cursor=0, limit=100)
        if e["event"]["type"] == "message"
    )
    services.inbox_ack(device=b1, cursor=first)

    requests = [
        (b1.id, 0, 100),
        (b2.id, 0, 100),
        (c1.id, 0, 100),
        (a1.id, 0, 100),
        (b2.id, 2, 2),  # the same device twice (a socket taking over): each its own page
        (b1.id, 10_000, 5),  # nothing after the end
    ]
    batched = selectors.inbox_after_many(requests)
    one_by_one = [
        selectors.inbox_after(device_id=d, after_cursor=a, limit=n) for d, a, n in requests
    ]
    assert batched == one_by_one
    kinds = {e["event"]["type"] for page in batched for e in page}
    assert {"message", "group", "receipt"} <= kinds
    extras = [e["event"] for e in batched[0] if "group_body" in e["event"]]
    assert len(extras) == 1 and extras[0]["body"] != extras[0]["group_body"]
