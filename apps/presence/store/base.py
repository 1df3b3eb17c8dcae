"""The connection registry and presence state, behind one small interface.

Like Django's session backends: `RedisPresenceStore` for every real deployment
(all server processes share it) and `MemoryPresenceStore` for the embedded
default, one process with no Redis. Each operation has a sync form (Celery,
admin, REST views) and an async form prefixed with `a` (consumers), and takes
`now` as epoch seconds from the caller, so both backends agree on time.

What is kept (Redis keys under `presence:`):

- `dev:<device>`      the registry entry: connection id, process, transport, since
- `user:<user>`       zset of the user's connected devices, scored by expiry
- `proc:<process>`    zset of the devices a server process holds, scored by expiry
- `procs`             zset of server processes, scored by their latest expiry
- `expiry`            zset of every entry ("<user>:<device>"), for the sweep
- `on:<user>`         "online as announced": set when a user comes online, deleted
                      when offline is announced, and expiring with the entries
- `due`               zset of users whose offline announcement is pending (grace)
- `seen:<user>`       cached last_seen (ISO 8601, so strings sort as times)
- `vis:<user>`        cached last_seen_visibility
- `watch:<device>`    a long-poll device's subscriptions and what it was last told
- `hit:<key>:<n>`     fixed-window rate-limit counters; `lock:<name>` short locks
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime

PREFIX = "presence:"
SEEN_TTL_S = 7 * 86400
VIS_TTL_S = 86400


@dataclass(frozen=True)
class UserPresence:
    online: bool
    last_seen: str | None
    visibility: str | None


@dataclass(frozen=True)
class Touched:
    """What a registry refresh found: the user came online (announce it, with this
    visibility), or a heartbeat found its entry gone (Redis was flushed or failed
    over: the socket's channel-layer groups are probably gone too)."""

    came_online: bool
    visibility: str | None
    lost: bool = False


@dataclass(frozen=True)
class Expired:
    """A registry entry that timed out (its process died or stopped beating)."""

    user_id: int
    device_id: int
    last_seen: str
    user_offline: bool


def record(*, conn: str, process: str, transport: str, since: float, user_id: int) -> str:
    return f"{conn}|{process}|{transport}|{since:.3f}|{user_id}"


def parse_record(value: str | None) -> dict | None:
    if not value:
        return None
    conn, process, transport, since, user_id = value.split("|")
    return {
        "conn": conn,
        "process": process,
        "transport": transport,
        "since": float(since),
        "user_id": int(user_id),
    }


class PresenceStore(ABC):
    """The interface. Async forms default to the sync ones (fine for memory)."""

    @abstractmethod
    def touch(self, **kw) -> "Touched":
        """Register or refresh a device's entry."""

    @abstractmethod
    def release(self, **kw) -> bool:
        """Drop this connection's entry; True if the user has no device left."""

    @abstractmethod
    def settle(self, *, user_id: int, now: float) -> tuple[str, str] | None:
        """Claim a due offline announcement; return (last_seen, visibility) to announce."""

    @abstractmethod
    def expire(self, *, now: float, ttl_s: float, limit: int) -> list[Expired]:
        """Claim entries past their expiry; users left without a device become due."""

    @abstractmethod
    def due(self, *, now: float, limit: int) -> list[int]: ...

    @abstractmethod
    def statuses(self, *, user_ids: list[int], now: float) -> dict[int, UserPresence]: ...

    @abstractmethod
    def set_visibility(self, *, user_id: int, visibility: str) -> None: ...

    @abstractmethod
    def hit(self, *, key: str, limit: int, period_s: float, now: float) -> int:
        """Count a hit; return 0 if allowed, else the seconds to wait."""

    @abstractmethod
    def try_lock(self, *, name: str, ttl_s: float) -> bool: ...

    @abstractmethod
    def watches_replace(self, *, device_id: int, entries: dict[int, str], ttl_s: int) -> None: ...

    @abstractmethod
    def watches_get(self, *, device_id: int, ttl_s: int) -> dict[int, str]: ...

    @abstractmethod
    def watches_update(self, *, device_id: int, entries: dict[int, str]) -> None:
        """Overwrite entries that are still subscribed (a PUT may have replaced the set)."""

    @abstractmethod
    def processes(self, *, now: float) -> list[tuple[str, int, float]]:
        """(process, connected devices, latest expiry) of every live process."""

    @abstractmethod
    def devices_of_user(self, *, user_id: int, now: float) -> list[dict]: ...

    @abstractmethod
    def devices_on_process(self, *, process: str, now: float, limit: int) -> list[dict]: ...

    @abstractmethod
    def prune(self, *, now: float) -> None:
        """Forget processes whose every entry has expired."""

    async def atouch(self, **kw):
        return self.touch(**kw)

    async def arelease(self, **kw):
        return self.release(**kw)

    async def asettle(self, **kw):
        return self.settle(**kw)

    async def aexpire(self, **kw):
        return self.expire(**kw)

    async def adue(self, **kw):
        return self.due(**kw)

    async def astatuses(self, **kw):
        return self.statuses(**kw)

    async def ahit(self, **kw):
        return self.hit(**kw)

    async def atry_lock(self, **kw):
        return self.try_lock(**kw)

    async def awatches_get(self, **kw):
        return self.watches_get(**kw)

    async def awatches_update(self, **kw):
        return self.watches_update(**kw)

    async def aprune(self, **kw):
        return self.prune(**kw)


def retry_after(now: float, period_s: float) -> int:
    window_end = (math.floor(now / period_s) + 1) * period_s
    return max(1, math.ceil(window_end - now))


def iso_at(epoch: float) -> str:
    """An epoch time in the wire's form (UTC, microseconds, `Z`); such strings sort as times."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
