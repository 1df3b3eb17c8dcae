"""How far each device's inbox was pushed, for staff's delivery trace (the admin).

One small key per device in the cache's Redis, `inbox:pushed:<device>` =
"<cursor> <epoch seconds> <ws|longpoll>", set when a socket pushes a page of
events or a long-poll hands one out. Best effort and never waited for by a client:
a lost mark only makes the trace show an older push. Postgres stays the truth of
what is delivered (a row is deleted when its device acks it).
"""

import asyncio
import logging
import time
import weakref
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache

from apps.common.errors import OUTAGES
from apps.common.rediscache import async_client, sync_client

logger = logging.getLogger("natter.events")

# Marks being written (kept referenced until done, so they are not collected).
_PENDING: set = set()
# Marks not yet written, per event loop: a burst of pushes is one Redis pipeline.
# Kept as (cursor, epoch seconds, transport) and formatted only when written: a
# socket pushes many times in the second the marks gather, and only its last counts.
_WAITING: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, tuple]]" = (
    weakref.WeakKeyDictionary()
)


def _name(device_id: int) -> str:
    return f"inbox:pushed:{device_id}"


def _ttl_s() -> int:
    return 86400 * settings.NATTER["RETENTION_DAYS"]


def _value(cursor: int, transport: str, at: float | None = None) -> str:
    return f"{cursor} {time.time() if at is None else at:.6f} {transport}"


def mark_pushed(*, device_id: int, cursor: int, transport: str) -> None:
    """Remember that a device was handed its events up to `cursor`, and when."""
    value = _value(cursor, transport)
    try:
        client = sync_client()
        if client is None:
            cache.set(_name(device_id), value, timeout=_ttl_s())
        else:
            client.set(cache.make_key(_name(device_id)), value, ex=_ttl_s())
    except OUTAGES:
        logger.warning("could not mark the push of device %s", device_id)


def amark_pushed(*, device_id: int, cursor: int, transport: str) -> None:
    """`mark_pushed` from a socket: written in the background, never awaited.

    The marks of MARK_GATHER_S (every socket of the process pushing meanwhile) are
    written together: one pipeline, and one SET per device however often it was
    pushed. A pipeline per turn of the event loop was 6 % of a loaded socket
    process, one every 0.1 s still 4 %; the trace is up to a second behind instead.
    """
    client = async_client()
    if client is None:
        mark_pushed(device_id=device_id, cursor=cursor, transport=transport)
        return
    loop = asyncio.get_running_loop()
    waiting = _WAITING.setdefault(loop, {})
    if not waiting:  # the first of a burst starts the write; the others join it
        task = asyncio.ensure_future(_write_waiting(client, loop))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
    waiting[device_id] = (cursor, time.time(), transport)


# How long the marks of a process gather before they are written.
MARK_GATHER_S = 1.0


async def _write_waiting(client, loop) -> None:
    await asyncio.sleep(MARK_GATHER_S)  # let the pushes meanwhile add theirs
    marks = _WAITING.pop(loop, {})
    make_key, ttl_s = cache.make_key, _ttl_s()
    try:
        async with client.pipeline(transaction=False) as pipe:
            for device_id, (cursor, at, transport) in marks.items():
                pipe.set(make_key(_name(device_id)), _value(cursor, transport, at), ex=ttl_s)
            await pipe.execute()
    except OUTAGES:
        logger.warning("could not mark the push of %d device(s)", len(marks))


def pushed_marks(device_ids) -> dict[int, tuple[int, datetime, str]]:
    """The last push of each device that has one: (cursor, when, transport)."""
    device_ids = list(device_ids)
    if not device_ids:
        return {}
    client = sync_client()
    if client is None:
        found = cache.get_many([_name(d) for d in device_ids])
        raw = [found.get(_name(d)) for d in device_ids]
    else:
        raw = client.mget([cache.make_key(_name(d)) for d in device_ids])
    marks = {}
    for device_id, value in zip(device_ids, raw, strict=True):
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        cursor, at, transport = value.split(" ")
        marks[device_id] = (int(cursor), datetime.fromtimestamp(float(at), UTC), transport)
    return marks
