"""A process's acks and pushes are served in batches (group commit)."""

import asyncio
import threading
import time

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


class _Recorder:
    """A batch function that takes a while and remembers how many ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.sizes: list[int] = []

    def __call__(self, requests):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.sizes.append(len(requests))
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
        return [r * 10 for r in requests]


async def test_a_second_batch_runs_alongside_only_while_a_crowd_waits():
    recorder = _Recorder()
    batcher = batching._Batcher(recorder, lanes=2, crowd=16)
    # A few calls at a time: one batch after another, never two at once.
    for start in range(0, 12, 3):
        results = await asyncio.gather(*(batcher.call(n) for n in range(start, start + 3)))
        assert results == [n * 10 for n in range(start, start + 3)]
    assert recorder.most == 1
    # A flood while a batch runs: a second batch takes the crowd, never a third.
    first = asyncio.ensure_future(batcher.call(0))
    await asyncio.sleep(0.01)
    flood = [asyncio.ensure_future(batcher.call(n)) for n in range(1, 60)]
    assert await first == 0
    assert await asyncio.gather(*flood) == [n * 10 for n in range(1, 60)]
    assert recorder.most == 2
    assert sum(recorder.sizes) == 12 + 60  # every call in exactly one batch


async def test_a_batch_gathers_company_only_right_after_a_crowded_batch():
    ran = []

    async def run(requests):
        ran.append(list(requests))
        return requests

    # A busy window of 0.5 s (10 ms in service): what the test does between two
    # calls cannot outlast it, however slow the host.
    batcher = batching._Batcher(run, gather_s=0.3, gather_when_crowded_only=True, busy_window_s=0.5)
    loop = asyncio.get_running_loop()

    async def timed(*calls):
        started = loop.time()
        results = await asyncio.gather(*(batcher.call(c) for c in calls))
        assert results == list(calls)
        return loop.time() - started

    # After a quiet spell, and right after a batch of one (calls come one at a
    # time): at once.
    assert await timed(1) < 0.15
    assert await timed(2) < 0.15
    assert await timed(3, 4) < 0.15  # two at once: one batch, still at once
    # Right after a batch that held company: the next waits for more.
    assert await timed(5) >= 0.3
    # A crowded batch long ago does not make a call wait.
    await timed(6, 7)
    await asyncio.sleep(batcher.busy_window_s * 2)
    assert await timed(8) < 0.15
    assert ran == [[1], [2], [3, 4], [5], [6, 7], [8]]
