"""The in-process backend: the embedded default's one process, no Redis."""

import math
import threading
import time

from apps.presence.store.base import (
    Expired,
    PresenceStore,
    Touched,
    UserPresence,
    iso_at,
    parse_record,
    record,
    retry_after,
)


class MemoryPresenceStore(PresenceStore):
    """The embedded default's registry: one process, so plain dicts under a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self.dev: dict[int, tuple[str, float]] = {}
        self.users: dict[int, dict[int, float]] = {}
        self.procs: dict[str, dict[int, float]] = {}
        self.proc_expiry: dict[str, float] = {}
        self.expiry: dict[tuple[int, int], float] = {}
        self.on: dict[int, float] = {}
        self.due_at: dict[int, float] = {}
        self.seen: dict[int, str] = {}
        self.vis: dict[int, str] = {}
        self.watch: dict[int, dict[int, str]] = {}
        self.hits: dict[str, int] = {}
        self.locks: dict[str, float] = {}

    def _live(self, user_id: int, now: float) -> int:
        return sum(1 for exp in self.users.get(user_id, {}).values() if exp > now)

    def _set_seen(self, user_id: int, last_seen: str) -> None:
        if self.seen.get(user_id, "") < last_seen:
            self.seen[user_id] = last_seen

    def touch(
        self,
        *,
        user_id,
        device_id,
        conn,
        process,
        transport,
        since,
        ttl_s,
        now,
        first=False,
        visibility=None,
    ):
        expires = now + ttl_s
        with self._lock:
            value = record(
                conn=conn, process=process, transport=transport, since=since, user_id=user_id
            )
            existed = self.dev.get(device_id, (None, 0))[1] > now
            self.dev[device_id] = (value, expires)
            self.users.setdefault(user_id, {})[device_id] = expires
            self.procs.setdefault(process, {})[device_id] = expires
            self.proc_expiry[process] = max(self.proc_expiry.get(process, 0), expires)
            self.expiry[(user_id, device_id)] = expires
            came = self.on.get(user_id, 0) <= now
            self.on[user_id] = expires if came else max(self.on[user_id], expires)
            if visibility and user_id not in self.vis:
                self.vis[user_id] = visibility
            if first:
                self.due_at.pop(user_id, None)
            return Touched(came, self.vis.get(user_id) if came else None, not first and not existed)

    def release(self, *, user_id, device_id, conn, process, now, grace_s, last_seen):
        with self._lock:
            self.procs.get(process, {}).pop(device_id, None)
            value = self.dev.get(device_id)
            if value is None or not value[0].startswith(conn + "|"):
                return False
            del self.dev[device_id]
            self.users.get(user_id, {}).pop(device_id, None)
            self.expiry.pop((user_id, device_id), None)
            if self._live(user_id, now):
                return False
            self.due_at[user_id] = now + grace_s
            self._set_seen(user_id, last_seen)
            return True

    def settle(self, *, user_id, now):
        with self._lock:
            due = self.due_at.get(user_id)
            if due is None or due > now:
                return None
            del self.due_at[user_id]
            if self._live(user_id, now):
                return None
            self.on.pop(user_id, None)
            return self.seen.get(user_id), self.vis.get(user_id)

    def expire(self, *, now, ttl_s, limit):
        out = []
        with self._lock:
            stale = sorted((exp, key) for key, exp in self.expiry.items() if exp <= now)[:limit]
            for exp, (user_id, device_id) in stale:
                del self.expiry[(user_id, device_id)]
                devices = self.users.get(user_id, {})
                if devices.get(device_id, now + 1) <= now:
                    del devices[device_id]
                if self.dev.get(device_id, ("", now + 1))[1] <= now:
                    del self.dev[device_id]
                last_seen = iso_at(exp - ttl_s)
                offline = not self._live(user_id, now)
                if offline:
                    self.due_at[user_id] = now
                    self._set_seen(user_id, last_seen)
                out.append(Expired(user_id, device_id, last_seen, offline))
        return out

    def due(self, *, now, limit):
        with self._lock:
            return [u for u, at in sorted(self.due_at.items(), key=lambda x: x[1]) if at <= now][
                :limit
            ]

    def statuses(self, *, user_ids, now):
        with self._lock:
            return {
                u: UserPresence(self.on.get(u, 0) > now, self.seen.get(u), self.vis.get(u))
                for u in user_ids
            }

    def set_visibility(self, *, user_id, visibility):
        with self._lock:
            self.vis[user_id] = visibility

    def hit(self, *, key, limit, period_s, now):
        name = f"{key}:{math.floor(now / period_s)}"
        with self._lock:
            for old in [k for k in self.hits if k.startswith(key + ":") and k != name]:
                del self.hits[old]
            self.hits[name] = self.hits.get(name, 0) + 1
            return 0 if self.hits[name] <= limit else retry_after(now, period_s)

    def try_lock(self, *, name, ttl_s):
        now = time.monotonic()
        with self._lock:
            if self.locks.get(name, 0) > now:
                return False
            self.locks[name] = now + ttl_s
            return True

    def watches_replace(self, *, device_id, entries, ttl_s):
        with self._lock:
            self.watch[device_id] = dict(entries)

    def watches_get(self, *, device_id, ttl_s):
        with self._lock:
            return dict(self.watch.get(device_id, {}))

    def watches_update(self, *, device_id, entries):
        with self._lock:
            current = self.watch.get(device_id, {})
            for uid, value in entries.items():
                if uid in current:
                    current[uid] = value

    def processes(self, *, now):
        with self._lock:
            return [
                (p, sum(1 for e in devs.values() if e > now), self.proc_expiry.get(p, 0))
                for p, devs in self.procs.items()
                if self.proc_expiry.get(p, 0) > now
            ]

    def _entries(self, device_ids, now):
        out = []
        for device_id in device_ids:
            value, expires = self.dev.get(device_id, (None, 0))
            entry = parse_record(value)
            if entry is not None and expires > now:
                out.append({"device_id": device_id, "expires_at": expires, **entry})
        return out

    def devices_of_user(self, *, user_id, now):
        with self._lock:
            return self._entries(list(self.users.get(user_id, {})), now)

    def devices_on_process(self, *, process, now, limit):
        with self._lock:
            found = self._entries(list(self.procs.get(process, {})), now)
            return [d for d in found if d["process"] == process][:limit]

    def prune(self, *, now):
        with self._lock:
            for process in [p for p, e in self.proc_expiry.items() if e <= now]:
                del self.proc_expiry[process]
                self.procs.pop(process, None)
