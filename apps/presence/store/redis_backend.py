"""The Redis backend: shared by every server process of a deployment."""

import asyncio
import hashlib
import math
import weakref

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from apps.presence.store.base import (
    PREFIX,
    SEEN_TTL_S,
    VIS_TTL_S,
    Expired,
    PresenceStore,
    Touched,
    UserPresence,
    iso_at,
    parse_record,
    record,
    retry_after,
)

_TOUCH = """
-- KEYS: dev user proc procs expiry on vis due
-- ARGV: record device member expires_at ttl process keep visibility first user
local existed = 0
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5], 'GET') then existed = 1 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('ZADD', KEYS[4], 'GT', ARGV[4], ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
local came = 0
if redis.call('SET', KEYS[6], '1', 'NX', 'EX', ARGV[5]) then
  came = 1
else
  redis.call('EXPIRE', KEYS[6], ARGV[5], 'GT')
end
if ARGV[8] ~= '' then redis.call('SET', KEYS[7], ARGV[8], 'NX', 'EX', ARGV[11]) end
if ARGV[9] == '1' then redis.call('ZREM', KEYS[8], ARGV[10]) end
local vis = ''
if came == 1 then vis = redis.call('GET', KEYS[7]) or '' end
return {came, vis, existed}
"""

_RELEASE = """
-- KEYS: dev user proc expiry due seen
-- ARGV: conn device member now due_at last_seen seen_ttl user
redis.call('ZREM', KEYS[3], ARGV[2])
local rec = redis.call('GET', KEYS[1])
if (not rec) or string.sub(rec, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[4], '+inf') > 0 then return 0 end
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[8])
local cur = redis.call('GET', KEYS[6])
if (not cur) or cur < ARGV[6] then redis.call('SET', KEYS[6], ARGV[6], 'EX', ARGV[7]) end
return 1
"""

_SETTLE = """
-- KEYS: due user on seen vis ; ARGV: user now
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not s) or tonumber(s) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[2], '+inf') > 0 then return false end
redis.call('DEL', KEYS[3])
return {redis.call('GET', KEYS[4]) or '', redis.call('GET', KEYS[5]) or ''}
"""

_EXPIRE = """
-- KEYS: expiry user due seen ; ARGV: member device now user last_seen seen_ttl
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not s) or tonumber(s) > tonumber(ARGV[3]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
local us = redis.call('ZSCORE', KEYS[2], ARGV[2])
if us and tonumber(us) <= tonumber(ARGV[3]) then redis.call('ZREM', KEYS[2], ARGV[2]) end
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[3], '+inf') > 0 then return 0 end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
local cur = redis.call('GET', KEYS[4])
if (not cur) or cur < ARGV[5] then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6]) end
return 1
"""

_WATCH_UPDATE = """
-- KEYS: watch ; ARGV: field value field value ...
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""

_SCRIPTS = {
    name: (text, hashlib.sha1(text.encode()).hexdigest())
    for name, text in {
        "touch": _TOUCH,
        "release": _RELEASE,
        "settle": _SETTLE,
        "expire": _EXPIRE,
        "watch_update": _WATCH_UPDATE,
    }.items()
}


def _k(*parts) -> str:
    return PREFIX + ":".join(str(p) for p in parts)


def _s(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPresenceStore(PresenceStore):
    """Shared by every server process: redis-py's asyncio client for consumers, the sync
    client for everything else. Each operation is one round trip (a pipeline)."""

    def __init__(self, url: str):
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        # An asyncio client is tied to its event loop: one per loop.
        self._aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def aclient(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=5, socket_connect_timeout=5
            )
            self._aclients[loop] = client
        return client

    # Every operation is a plan: build(pipe) queues commands, parse(results) reads them.
    # Plans are run by the sync client or the asyncio client alike.

    def _run(self, build, parse):
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            try:
                return parse(pipe.execute())
            except NoScriptError:
                if attempt == 2:
                    raise
                for text, _ in _SCRIPTS.values():
                    self.client.script_load(text)

    async def _arun(self, build, parse):
        client = self.aclient()
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            build(pipe)
            try:
                return parse(await pipe.execute())
            except NoScriptError:
                # Redis restarted or its script cache was flushed.
                if attempt == 2:
                    raise
                for text, _ in _SCRIPTS.values():
                    await client.script_load(text)

    @staticmethod
    def _script(pipe, name: str, keys: list, args: list):
        pipe.evalsha(_SCRIPTS[name][1], len(keys), *keys, *args)

    # --- plans ----------------------------------------------------------------------

    def _touch_plan(
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
        ttl = max(1, math.ceil(ttl_s))
        keys = [
            _k("dev", device_id),
            _k("user", user_id),
            _k("proc", process),
            _k("procs"),
            _k("expiry"),
            _k("on", user_id),
            _k("vis", user_id),
            _k("due"),
        ]
        args = [
            record(conn=conn, process=process, transport=transport, since=since, user_id=user_id),
            device_id,
            f"{user_id}:{device_id}",
            f"{now + ttl_s:.3f}",
            ttl,
            process,
            ttl + 3600,  # the zsets outlive their members; scores say what is live
            visibility or "",
            "1" if first else "0",
            user_id,
            VIS_TTL_S,
        ]

        def parse(results):
            came, vis, existed = results[0]
            return Touched(bool(came), _s(vis) or None, not first and not existed)

        return (lambda pipe: self._script(pipe, "touch", keys, args)), parse

    def _release_plan(self, *, user_id, device_id, conn, process, now, grace_s, last_seen):
        keys = [
            _k("dev", device_id),
            _k("user", user_id),
            _k("proc", process),
            _k("expiry"),
            _k("due"),
            _k("seen", user_id),
        ]
        args = [
            conn,
            device_id,
            f"{user_id}:{device_id}",
            f"{now:.3f}",
            f"{now + grace_s:.3f}",
            last_seen,
            SEEN_TTL_S,
            user_id,
        ]
        return (lambda pipe: self._script(pipe, "release", keys, args)), lambda r: r[0] == 1

    def _settle_plan(self, *, user_id, now):
        keys = [_k("due"), _k("user", user_id), _k("on", user_id), _k("seen", user_id)]
        keys.append(_k("vis", user_id))

        def parse(results):
            found = results[0]
            if not found:
                return None
            return _s(found[0]) or None, _s(found[1]) or None

        return (
            lambda pipe: self._script(pipe, "settle", keys, [user_id, f"{now:.3f}"]),
            parse,
        )

    def _statuses_plan(self, *, user_ids, now):
        ids = list(user_ids)

        def build(pipe):
            pipe.mget([_k("on", u) for u in ids])
            pipe.mget([_k("seen", u) for u in ids])
            pipe.mget([_k("vis", u) for u in ids])

        def parse(results):
            on, seen, vis = results
            return {
                u: UserPresence(
                    online=on[i] is not None, last_seen=_s(seen[i]), visibility=_s(vis[i])
                )
                for i, u in enumerate(ids)
            }

        if not ids:
            return (lambda pipe: None), (lambda results: {})
        return build, parse

    def _hit_plan(self, *, key, limit, period_s, now):
        window = math.floor(now / period_s)
        name = _k("hit", key, window)

        def build(pipe):
            pipe.incr(name)
            pipe.expire(name, math.ceil(period_s) + 1)

        def parse(results):
            return 0 if results[0] <= limit else retry_after(now, period_s)

        return build, parse

    def _lock_plan(self, *, name, ttl_s):
        key = _k("lock", name)
        return (
            lambda pipe: pipe.set(key, "1", nx=True, px=max(1, int(ttl_s * 1000))),
            lambda results: bool(results[0]),
        )

    def _expire_candidates_plan(self, *, now, limit):
        def parse(results):
            return [(_s(m), float(score)) for m, score in results[0]]

        return (
            lambda pipe: pipe.zrangebyscore(
                _k("expiry"), "-inf", f"{now:.3f}", start=0, num=limit, withscores=True
            ),
            parse,
        )

    def _expire_plan(self, *, candidates, now, ttl_s):
        rows = []
        for member, score in candidates:
            user_id, device_id = (int(x) for x in member.split(":"))
            rows.append((user_id, device_id, iso_at(score - ttl_s)))

        def build(pipe):
            for (member, _), (user_id, device_id, last_seen) in zip(candidates, rows, strict=True):
                keys = [_k("expiry"), _k("user", user_id), _k("due"), _k("seen", user_id)]
                args = [member, device_id, f"{now:.3f}", user_id, last_seen, SEEN_TTL_S]
                self._script(pipe, "expire", keys, args)

        def parse(results):
            return [
                Expired(user_id=u, device_id=d, last_seen=ls, user_offline=bool(r))
                for (u, d, ls), r in zip(rows, results, strict=True)
                if r is not None
            ]

        return build, parse

    def _due_plan(self, *, now, limit):
        return (
            lambda pipe: pipe.zrangebyscore(_k("due"), "-inf", f"{now:.3f}", start=0, num=limit),
            lambda results: [int(_s(u)) for u in results[0]],
        )

    def _watches_get_plan(self, *, device_id, ttl_s):
        key = _k("watch", device_id)

        def build(pipe):
            pipe.hgetall(key)
            pipe.expire(key, ttl_s)

        return build, lambda results: {int(_s(k)): _s(v) for k, v in results[0].items()}

    def _watches_update_plan(self, *, device_id, entries):
        args = [x for uid, value in entries.items() for x in (uid, value)]
        key = _k("watch", device_id)
        return (lambda pipe: self._script(pipe, "watch_update", [key], args)), lambda r: None

    def _prune_plan(self, *, now):
        return (
            lambda pipe: pipe.zremrangebyscore(_k("procs"), "-inf", f"{now:.3f}"),
            lambda results: None,
        )

    # --- sync -----------------------------------------------------------------------

    def touch(self, **kw):
        return self._run(*self._touch_plan(**kw))

    def release(self, **kw):
        return self._run(*self._release_plan(**kw))

    def settle(self, **kw):
        return self._run(*self._settle_plan(**kw))

    def expire(self, *, now, ttl_s, limit):
        candidates = self._run(*self._expire_candidates_plan(now=now, limit=limit))
        if not candidates:
            return []
        return self._run(*self._expire_plan(candidates=candidates, now=now, ttl_s=ttl_s))

    def due(self, **kw):
        return self._run(*self._due_plan(**kw))

    def statuses(self, **kw):
        return self._run(*self._statuses_plan(**kw))

    def set_visibility(self, *, user_id, visibility):
        self.client.set(_k("vis", user_id), visibility, ex=VIS_TTL_S)

    def hit(self, **kw):
        return self._run(*self._hit_plan(**kw))

    def try_lock(self, **kw):
        return self._run(*self._lock_plan(**kw))

    def watches_replace(self, *, device_id, entries, ttl_s):
        key = _k("watch", device_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if entries:
            pipe.hset(key, mapping={str(k): v for k, v in entries.items()})
            pipe.expire(key, ttl_s)
        pipe.execute()

    def watches_get(self, **kw):
        return self._run(*self._watches_get_plan(**kw))

    def watches_update(self, **kw):
        if kw["entries"]:
            self._run(*self._watches_update_plan(**kw))

    def processes(self, *, now):
        live = self.client.zrangebyscore(_k("procs"), f"({now:.3f}", "+inf", withscores=True)
        pipe = self.client.pipeline(transaction=False)
        for process, _ in live:
            pipe.zcount(_k("proc", _s(process)), f"({now:.3f}", "+inf")
        counts = pipe.execute()
        return [
            (_s(process), count, expiry)
            for (process, expiry), count in zip(live, counts, strict=True)
        ]

    def _devices(self, zset_key, now, limit=None):
        members = self.client.zrangebyscore(
            zset_key,
            f"({now:.3f}",
            "+inf",
            withscores=True,
            start=0 if limit else None,
            num=limit,
        )
        pipe = self.client.pipeline(transaction=False)
        for device_id, _ in members:
            pipe.get(_k("dev", _s(device_id)))
        records = pipe.execute()
        out = []
        for (device_id, expiry), value in zip(members, records, strict=True):
            entry = parse_record(_s(value))
            if entry is not None:
                out.append({"device_id": int(_s(device_id)), "expires_at": expiry, **entry})
        return out

    def devices_of_user(self, *, user_id, now):
        return self._devices(_k("user", user_id), now)

    def devices_on_process(self, *, process, now, limit):
        return [
            d for d in self._devices(_k("proc", process), now, limit) if d["process"] == process
        ]

    def prune(self, **kw):
        return self._run(*self._prune_plan(**kw))

    # --- async ----------------------------------------------------------------------

    async def atouch(self, **kw):
        return await self._arun(*self._touch_plan(**kw))

    async def arelease(self, **kw):
        return await self._arun(*self._release_plan(**kw))

    async def asettle(self, **kw):
        return await self._arun(*self._settle_plan(**kw))

    async def aexpire(self, *, now, ttl_s, limit):
        candidates = await self._arun(*self._expire_candidates_plan(now=now, limit=limit))
        if not candidates:
            return []
        return await self._arun(*self._expire_plan(candidates=candidates, now=now, ttl_s=ttl_s))

    async def adue(self, **kw):
        return await self._arun(*self._due_plan(**kw))

    async def astatuses(self, **kw):
        return await self._arun(*self._statuses_plan(**kw))

    async def ahit(self, **kw):
        return await self._arun(*self._hit_plan(**kw))

    async def atry_lock(self, **kw):
        return await self._arun(*self._lock_plan(**kw))

    async def awatches_get(self, **kw):
        return await self._arun(*self._watches_get_plan(**kw))

    async def awatches_update(self, **kw):
        if kw["entries"]:
            await self._arun(*self._watches_update_plan(**kw))

    async def aprune(self, **kw):
        return await self._arun(*self._prune_plan(**kw))
