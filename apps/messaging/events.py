"""Doorbells on the channel layer: the one place messaging touches it.

The channel layer is at-most-once, so it only ever says "look at your inbox";
every event it announces is already a committed row (PROTOCOL §0.1). A doorbell
may carry copies of those rows' events, so a socket that is up to date pushes
them without reading them back; the rows stay the truth until acknowledged.
"""

import asyncio
import logging
import weakref

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from apps.common.db import CALLER_LOOP

logger = logging.getLogger("natter.events")

RING = {"type": "inbox.ring"}
# Doorbells handed to a loop and not yet sent (tests wait for them; see batching.settle).
IN_FLIGHT: set = set()


def device_group(device_id: int) -> str:
    return f"device.{device_id}"


# The sockets of this process, by loop and device: a doorbell for a device whose
# socket is here is rung in memory, not through Redis. Through Redis, every ring
# is a group_send (three round trips) and an entry in the process's channel, which
# under load filled up (capacity 1000) and dropped the rings of everyone.
_LOCAL: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, set]]" = (
    weakref.WeakKeyDictionary()
)


def local_listen(device_id: int, listener) -> None:
    """Ring `listener.doorbell()` in memory for this device's doorbells from this process."""
    _LOCAL.setdefault(asyncio.get_running_loop(), {}).setdefault(device_id, set()).add(listener)


def local_unlisten(device_id: int, listener) -> None:
    by_device = _LOCAL.get(asyncio.get_running_loop(), {})
    listeners = by_device.get(device_id)
    if listeners is not None:
        listeners.discard(listener)
        if not listeners:
            del by_device[device_id]


def _ring_locally(group: str, message: dict) -> bool:
    """Ring a device's sockets of this process directly; False if it has none here.

    A device has one socket (the newest wins, 4409), so one found here is the one:
    the ring does not also go through Redis. Rings are at-most-once anyway (§0.1):
    in the moment a socket moves to another process, a ring kept here is repaired
    by the next heartbeat, as any lost ring.
    """
    if message["type"] != "inbox.ring":
        return False
    listeners = _LOCAL.get(asyncio.get_running_loop(), {}).get(int(group.split(".", 1)[1]))
    if not listeners:
        return False
    for listener in list(listeners):
        listener.doorbell(message)
    return True


def ring_doorbells_on_commit(*, device_ids, carried: dict[int, dict] | None = None) -> None:
    """Ring the doorbells of these devices once the current transaction commits.

    `carried` gives some devices' doorbells their new events (`after`, `last`,
    `items`; see services.inbox_write): committed rows still, read from memory by
    a socket that is exactly up to `after`, and otherwise read from the inbox.
    """
    rings = _rings(device_ids, carried)
    if rings:
        transaction.on_commit(lambda: _group_send_all(rings))


def ring_doorbells(*, device_ids, carried: dict[int, dict] | None = None) -> None:
    """`ring_doorbells_on_commit` for rows committed already (a statement run on the
    event loop, outside Django's transactions)."""
    rings = _rings(device_ids, carried)
    if rings:
        _group_send_all(rings)


def _rings(device_ids, carried: dict[int, dict] | None) -> list[tuple[str, dict]]:
    carried = carried or {}
    return [
        (device_group(d), {"type": "inbox.ring", **carried[d]} if d in carried else RING)
        for d in sorted(set(device_ids))
    ]


def device_revoked_on_commit(*, device_id: int) -> None:
    """Close the sockets and long-polls of a revoked device once the revocation commits."""
    message = {"type": "device.revoked"}
    transaction.on_commit(lambda: _group_send_all([(device_group(device_id), message)]))


def _group_send_all(sends: list[tuple[str, dict]]) -> None:
    # A lost doorbell loses nothing, so a failing layer is logged, never raised:
    # the rows are committed and clients find them on their next poll or ping.
    running = _running_loop()
    if running is not None:
        # On the loop itself (a statement run there): send them from a task of it.
        _track(running.create_task(_send_many(sends)), len(sends))
        return
    loop = CALLER_LOOP.get()
    if loop is not None and loop.is_running():
        # On a daphne database thread: hand the doorbells to the server's loop and
        # go on. Waiting for them would hold the thread (and its connection) while
        # the loop is busy, which capped sends per second.
        _track(asyncio.run_coroutine_threadsafe(_send_many(sends), loop), len(sends))
        return
    # One async_to_sync around all the sends, not one per send (STACK-NOTES trap 8).
    try:
        async_to_sync(_send_many)(sends)
    except Exception:
        logger.exception("could not ring %d doorbell(s)", len(sends))


def _track(future, count: int) -> None:
    IN_FLIGHT.add(future)
    future.add_done_callback(IN_FLIGHT.discard)
    future.add_done_callback(_report_failure(count))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _report_failure(count: int):
    def report(future) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.error("could not ring %d doorbell(s): %r", count, future.exception())

    return report


async def _send_many(sends: list[tuple[str, dict]]) -> None:
    remote = [(group, message) for group, message in sends if not _ring_locally(group, message)]
    layer = get_channel_layer()
    # A few at a time: each waits on Redis, and every one in flight holds a connection.
    for start in range(0, len(remote), 16):
        chunk = remote[start : start + 16]
        await asyncio.gather(*(layer.group_send(group, message) for group, message in chunk))


def fanout_on_commit(*, message_id: int) -> None:
    """Queue the Celery fan-out of a group message once it is committed.

    If the queueing fails (broker down), the message stays `fanout_pending` and
    the beat sweeper queues it again: the job itself is the row, not the task.
    """

    def enqueue():
        from apps.groups.tasks import fanout_message_task

        try:
            fanout_message_task.delay(message_id)
        except Exception:
            logger.exception("could not queue the fan-out of message %s", message_id)

    transaction.on_commit(enqueue)
