"""A process's acks and pushes are served in batches (group commit)."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from apps.messaging import batching, services
from apps.messaging.models import InboxEntry, Receipt
from tests.messaging.helpers import inbox

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_batches"),
]


@database_sync_to_async
def group_with_a_message(people, size):
    from apps.groups import services as groups
    from tests.groups.test_services import group_send

    owner = people.user()
    owner_device = people.device(owner)
    members = [people.user() for _ in range(size)]
    devices = [people.device(u) for u in members]
    group = groups.group_create(creator=owner, title="Burst", member_ids=[u.id for u in members])
    message = group_send(owner_device, group).message
    services.message_fanout(message_id=message.id)
    return message, [(d, inbox(d)[-1]["cursor"]) for d in devices]


async def test_a_burst_of_acks_from_many_sockets_commits_in_a_few_transactions(people):
    message, acks = await group_with_a_message(people, 30)
    before = batching._batchers()["ack"].batches
    await asyncio.gather(*(batching.inbox_ack(device, cursor) for device, cursor in acks))
    assert batching._batchers()["ack"].batches - before <= 2
    left = await database_sync_to_async(
        InboxEntry.objects.filter(device__in=[d for d, _ in acks]).count
    )()
    delivered = await database_sync_to_async(
        Receipt.objects.filter(message=message, delivered_at__isnull=False).count
    )()
    assert left == 0 and delivered == 30


async def test_pushes_rung_together_are_read_together(people):
    message, acks = await group_with_a_message(people, 30)
    reads = batching._batchers()["read"]
    before = reads.batches
    pages = await asyncio.gather(*(batching.inbox_after(device.id, 0, 10) for device, _ in acks))
    assert reads.batches - before <= 2
    for (_device, cursor), page in zip(acks, pages, strict=True):
        assert page[-1]["cursor"] == cursor and page[-1]["event"]["message_id"] == message.public_id
