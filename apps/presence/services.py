"""Presence, heartbeats and typing (PROTOCOL §6): what both transports call.

Connections register in the store (Redis, shared by every process) and refresh
their entry on each heartbeat; an entry not refreshed within PRESENCE_TTL_S
expires by itself. A user is online while any device has a live entry.

Going offline is announced PRESENCE_GRACE_S after the user's last device went
away, by a timer in the process that saw it go, or by the sweep if that process
died meanwhile; a device that comes back first cancels it (the `due` entry is
claimed atomically, so exactly one process announces). Watchers therefore never
see a reconnect within the grace period, and see a crash within the TTL plus
one sweep interval.

Functions prefixed with `a` are the async forms the consumers call; the plain
forms serve REST views and signal receivers.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection
from django.db.models import Q

from apps.accounts.models import Device, User
from apps.common import ids
from apps.common.db import db_call
from apps.common.errors import OUTAGES, BadRequest, NotMember
from apps.common.ratelimit import arate_limit_hit, rate_limit_hit
from apps.presence import events, selectors
from apps.presence.store import get_store

logger = logging.getLogger("natter.presence")

EVERYONE, CONTACTS, NOBODY = (v.value for v in User.LastSeenVisibility)
ONLINE, OFFLINE = "online", "offline"
# A long-poll device's subscriptions outlive a day without polls, then it PUTs again.
WATCH_TTL_S = 86400


def _conf(name: str):
    return settings.NATTER[name]


# --- This process ----------------------------------------------------------------------

_process: tuple[int, str] | None = None


def process_id() -> str:
    """This server process in the registry: host, pid and a random part (pids recycle)."""
    global _process
    if _process is None or _process[0] != os.getpid():
        _process = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _process[1]


_background: set[asyncio.Task] = set()


def _spawn(coro) -> None:
    """Run a coroutine beyond the consumer that started it (it may be gone by then)."""
    task = asyncio.get_running_loop().create_task(_logged(coro))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _logged(coro):
    try:
        await coro
    except Exception:
        logger.exception("presence background work failed")


def iso(value: datetime | float | None) -> str | None:
    """The wire form of a time: UTC, microseconds, `Z` (these strings sort as times)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- What a watcher sees ------------------------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """One subscription: may the watcher see the user as a contact, and what it was told."""

    contact: bool
    status: str = OFFLINE
    last_seen: str | None = None

    def encode(self) -> str:
        return f"{int(self.contact)}|{self.status}|{self.last_seen or ''}"

    @classmethod
    def decode(cls, value: str) -> "Watch":
        contact, status, last_seen = value.split("|")
        return cls(contact == "1", status, last_seen or None)


def presence_view(
    *, watcher_id: int, user_id: int, contact: bool, online: bool, last_seen, visibility
) -> tuple[str, str | None]:
    """What a watcher may see of a user: (status, last_seen).

    `last_seen_visibility` covers both the last-seen time and being online (like
    WhatsApp's "online: same as last seen"): someone who may not see your last
    seen sees you offline with no time, exactly like a user who never connected.
    """
    visible = (
        watcher_id == user_id or visibility == EVERYONE or (visibility == CONTACTS and contact)
    )
    if not visible:
        return OFFLINE, None
    return (ONLINE, None) if online else (OFFLINE, last_seen)


def presence_frame(user_id: int, watch: Watch) -> dict:
    return {
        "type": "presence",
        "user": ids.encode(ids.USER, user_id),
        "status": watch.status,
        "last_seen": watch.last_seen,
    }


def watch_apply(*, watcher_id: int, watches: dict[int, Watch], message: dict) -> dict | None:
    """Apply a presence change to a watcher's subscriptions; the frame to send, if any.

    Nothing is sent when what the watcher may see did not change: a duplicate
    announcement, or a change of someone hidden from this watcher.
    """
    user_id = message["user"]
    watch = watches.get(user_id)
    if watch is None:
        return None
    status, last_seen = presence_view(
        watcher_id=watcher_id,
        user_id=user_id,
        contact=watch.contact,
        online=message["online"],
        last_seen=message["last_seen"],
        visibility=message["visibility"],
    )
    if (status, last_seen) == (watch.status, watch.last_seen):
        return None
    watches[user_id] = Watch(watch.contact, status, last_seen)
    return presence_frame(user_id, watches[user_id])


# --- Connections and heartbeats ---------------------------------------------------------


async def connection_open(*, device: Device, conn: str, since: float) -> None:
    """Register a socket in the registry; announce the user online if it was not."""
    await _touch(device=device, conn=conn, transport="ws", since=since, first=True)


async def connection_heartbeat(*, device: Device, conn: str, since: float) -> bool:
    """Refresh a socket's registry entry (its TTL); True if the entry had been lost."""
    return await _touch(device=device, conn=conn, transport="ws", since=since, first=False)


async def apoll_heartbeat(*, device: Device, timeout: float) -> None:
    """A long-poll request is a heartbeat: the device stays online while it polls."""
    now = time.time()
    await _touch(
        device=device,
        conn="poll",
        transport="longpoll",
        since=now,
        first=True,
        # Held up to `timeout`, then the client polls again: live until then plus the TTL.
        ttl_s=_conf("PRESENCE_TTL_S") + timeout,
    )


async def _touch(*, device, conn, transport, since, first, ttl_s=None) -> bool:
    touched = await get_store().atouch(
        user_id=device.user_id,
        device_id=device.id,
        conn=conn,
        process=process_id(),
        transport=transport,
        since=since,
        ttl_s=ttl_s or _conf("PRESENCE_TTL_S"),
        now=time.time(),
        first=first,
        visibility=device.user.last_seen_visibility if first else None,
    )
    if touched.came_online:
        await events.apresence_announce(
            user_id=device.user_id,
            online=True,
            last_seen=None,
            visibility=touched.visibility or device.user.last_seen_visibility,
        )
    await presence_sweep_maybe()
    return touched.lost


async def connection_close(*, device: Device, conn: str) -> None:
    """Drop a socket's entry; if it was the user's last device, announce offline later."""
    now = time.time()
    grace = _conf("PRESENCE_GRACE_S")
    user_offline = await get_store().arelease(
        user_id=device.user_id,
        device_id=device.id,
        conn=conn,
        process=process_id(),
        now=now,
        grace_s=grace,
        last_seen=iso(now),
    )
    await db_call(presence_seen_write)(
        devices={device.id: iso(now)}, users={device.user_id: iso(now)} if user_offline else {}
    )
    if user_offline:
        loop = asyncio.get_running_loop()
        # A little after the due time, so this process's clock has surely passed it.
        loop.call_later(grace + 0.05, lambda: _spawn(presence_settle(user_id=device.user_id)))


def presence_seen_write(*, devices: dict[int, str], users: dict[int, str]) -> None:
    """Write Device.last_active_at and User.last_seen; never move either back in time.

    One statement per table however many: a sweep may expire hundreds of entries.
    """
    for model, column, stamps in (
        (Device, "last_active_at", devices),
        (User, "last_seen", users),
    ):
        if not stamps:
            continue
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute(
                    f"UPDATE {model._meta.db_table} t SET {column} = a.at "
                    "FROM unnest(%s::bigint[], %s::timestamptz[]) AS a(id, at) "
                    f"WHERE t.id = a.id AND (t.{column} IS NULL OR t.{column} < a.at)",
                    [list(stamps), [datetime.fromisoformat(at) for at in stamps.values()]],
                )
            continue
        for key, at in stamps.items():
            model.objects.filter(id=key).filter(
                Q(**{f"{column}__isnull": True}) | Q(**{f"{column}__lt": at})
            ).update(**{column: at})


async def presence_settle(*, user_id: int) -> None:
    """Announce a due offline, unless another process did or a device came back."""
    found = await get_store().asettle(user_id=user_id, now=time.time())
    if found is None:
        return
    last_seen, visibility = found
    if last_seen is None or visibility is None:
        # The cache was lost (Redis flushed); Postgres has both.
        raw = await db_call(_user_presence_row)(user_id)
        last_seen, visibility = last_seen or raw[1], visibility or raw[0]
    await events.apresence_announce(
        user_id=user_id, online=False, last_seen=last_seen, visibility=visibility
    )


def _user_presence_row(user_id: int) -> tuple[str, str | None]:
    row = User.objects.filter(id=user_id).values_list("last_seen_visibility", "last_seen").first()
    return (row[0], iso(row[1])) if row else (NOBODY, None)


# --- The sweep: entries of dead processes, offlines whose timer was lost ---------------

_next_sweep = 0.0


async def presence_sweep_maybe() -> None:
    """Sweep now if no process of the cluster did within PRESENCE_SWEEP_S.

    Piggybacked on heartbeats, so it runs wherever clients are connected, on
    Redis or embedded, without a scheduler; a Redis lock keeps it to one sweep
    per interval for the whole cluster.
    """
    global _next_sweep
    now = time.monotonic()
    if now < _next_sweep:
        return
    interval = _conf("PRESENCE_SWEEP_S")
    _next_sweep = now + interval
    if await get_store().atry_lock(name="sweep", ttl_s=interval * 0.9):
        _spawn(presence_sweep())


async def presence_sweep(*, limit: int = 500) -> dict:
    """Expire entries past their TTL, write last_seen, announce the offlines now due."""
    store = get_store()
    now = time.time()
    expired = await store.aexpire(now=now, ttl_s=_conf("PRESENCE_TTL_S"), limit=limit)
    if expired:
        await db_call(presence_seen_write)(
            devices={e.device_id: e.last_seen for e in expired},
            users={e.user_id: e.last_seen for e in expired if e.user_offline},
        )
    due = await store.adue(now=now, limit=limit)
    for user_id in due:
        await presence_settle(user_id=user_id)
    await store.aprune(now=now)
    return {"expired": len(expired), "settled": len(due)}


# --- Subscriptions ------------------------------------------------------------------------


def _subscription_ids(user_ids: list[int]) -> list[int]:
    unique = list(dict.fromkeys(user_ids))
    if len(unique) > _conf("PRESENCE_MAX_SUBSCRIPTIONS"):
        raise BadRequest(
            f"At most {_conf('PRESENCE_MAX_SUBSCRIPTIONS')} users per subscription.",
            field="user_ids",
        )
    return unique


def _watches(watcher_id: int, user_ids: list[int], people: dict, statuses: dict) -> dict:
    watches = {}
    for user_id in user_ids:
        person = people.get(user_id)
        if person is None:
            # Unknown or deactivated: the same answer as a hidden user, so ids are not probed.
            watches[user_id] = Watch(contact=False)
            continue
        state = statuses[user_id]
        status, last_seen = presence_view(
            watcher_id=watcher_id,
            user_id=user_id,
            contact=person["contact"],
            online=state.online,
            last_seen=max(filter(None, [state.last_seen, iso(person["last_seen"])]), default=None),
            visibility=person["visibility"],
        )
        watches[user_id] = Watch(person["contact"], status, last_seen)
    return watches


async def apresence_subscribe(*, device: Device, user_ids: list[int]) -> dict[int, Watch]:
    """Replace a socket's subscriptions; the watches, in order, hold the snapshot."""
    user_ids = _subscription_ids(user_ids)
    people = await db_call(selectors.presence_people)(watcher_id=device.user_id, user_ids=user_ids)
    statuses = await get_store().astatuses(user_ids=user_ids, now=time.time())
    return _watches(device.user_id, user_ids, people, statuses)


def presence_subscribe(*, device: Device, user_ids: list[int]) -> list[dict]:
    """Replace a long-poll device's subscriptions; return the snapshot frames."""
    user_ids = _subscription_ids(user_ids)
    store = get_store()
    people = selectors.presence_people(watcher_id=device.user_id, user_ids=user_ids)
    statuses = store.statuses(user_ids=user_ids, now=time.time())
    watches = _watches(device.user_id, user_ids, people, statuses)
    store.watches_replace(
        device_id=device.id,
        entries={uid: w.encode() for uid, w in watches.items()},
        ttl_s=WATCH_TTL_S,
    )
    return [presence_frame(uid, w) for uid, w in watches.items()]


async def apoll_watches(*, device: Device) -> tuple[dict[int, Watch], list[int]]:
    """A long-poll's subscriptions, and the users whose change it missed since its last answer."""
    store = get_store()
    raw = await store.awatches_get(device_id=device.id, ttl_s=WATCH_TTL_S)
    if not raw:
        return {}, []
    watches = {uid: Watch.decode(value) for uid, value in raw.items()}
    statuses = await store.astatuses(user_ids=list(watches), now=time.time())
    missing = [u for u, s in statuses.items() if s.visibility is None or s.last_seen is None]
    rows = {}
    if missing:
        rows = await db_call(_user_presence_rows)(missing)
    changed = []
    for user_id, state in statuses.items():
        visibility, last_seen = rows.get(user_id, (NOBODY, None))
        message = {
            "user": user_id,
            "online": state.online,
            "last_seen": state.last_seen or last_seen,
            "visibility": state.visibility or visibility,
        }
        if watch_apply(watcher_id=device.user_id, watches=watches, message=message):
            changed.append(user_id)
    return watches, changed


def _user_presence_rows(user_ids) -> dict[int, tuple[str, str | None]]:
    return {
        uid: (visibility, iso(last_seen))
        for uid, visibility, last_seen in User.objects.filter(id__in=user_ids).values_list(
            "id", "last_seen_visibility", "last_seen"
        )
    }


async def apoll_watches_told(*, device: Device, watches: dict[int, Watch], user_ids) -> None:
    """Remember what a long-poll answer told the device, so the next poll sends only news."""
    await get_store().awatches_update(
        device_id=device.id, entries={uid: watches[uid].encode() for uid in user_ids}
    )


def presence_visibility_changed(*, user_id: int, visibility: str) -> None:
    """Apply a new last_seen_visibility to every watcher at once."""
    store = get_store()
    store.set_visibility(user_id=user_id, visibility=visibility)
    state = store.statuses(user_ids=[user_id], now=time.time())[user_id]
    last_seen = state.last_seen or _user_presence_row(user_id)[1]
    events.presence_announce(
        user_id=user_id, online=state.online, last_seen=last_seen, visibility=visibility
    )


# --- Typing -------------------------------------------------------------------------------


def _typing_limit(device: Device) -> dict:
    # A token bucket like every other limit (apps/common/ratelimit.py): 0 turns it off.
    return {
        "scope": "typing",
        "key": str(device.id),
        "limit": _conf("TYPING_RATE"),
        "period_s": 10,
        "message": "Too many typing notices; slow down.",
    }


def _typing_notice(device: Device, conversation_id: int, state: str) -> dict:
    return {
        "conversation": ids.encode(ids.CONVERSATION, conversation_id),
        "user": ids.encode(ids.USER, device.user_id),
        "state": state,
    }


async def atyping_send(
    *, device: Device, conversation_id: int, state: str, limited: bool = True
) -> None:
    """Relay composing/paused to the other members' connected devices; store nothing.

    Dropped, without an error, in conversations of more than TYPING_MAX_MEMBERS.
    """
    if limited:
        await arate_limit_hit(**_typing_limit(device))
    device_ids = await db_call(selectors.typing_audience)(
        user_id=device.user_id, conversation_id=conversation_id
    )
    if device_ids:
        await events.atyping_notify(
            device_ids=device_ids, **_typing_notice(device, conversation_id, state)
        )


def typing_send(*, device: Device, conversation_id: int, state: str) -> None:
    """The REST form of atyping_send, for long-poll clients."""
    rate_limit_hit(**_typing_limit(device))
    device_ids = selectors.typing_audience(user_id=device.user_id, conversation_id=conversation_id)
    if device_ids:
        events.typing_notify(
            device_ids=device_ids, **_typing_notice(device, conversation_id, state)
        )


async def atyping_stop(*, device: Device, conversation_ids) -> None:
    """Say `paused` where a closing socket was composing (best effort, not rate-limited)."""
    for conversation_id in conversation_ids:
        try:
            await atyping_send(
                device=device, conversation_id=conversation_id, state="paused", limited=False
            )
        except (NotMember, *OUTAGES):
            pass
