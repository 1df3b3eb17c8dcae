"""Rate limits as token buckets, atomic in Redis (docs/protocol.md §10).

A limit is a bucket of `burst` tokens that refills at `limit` tokens per
`period_s` (`burst` defaults to `limit`). Each hit takes a token; a hit that
finds none is refused with the seconds until one is back (`retry_after`), and a
refused hit takes nothing.

The bucket is kept as GCRA (the generic cell rate algorithm): one Redis key per
bucket holds its "theoretical arrival time", and one Lua script reads, checks and
writes it, with Redis's own clock. So any number of processes and threads hitting
one bucket at once are counted exactly, with no window edges that would let
2 × limit through. Without Redis (the embedded default) the same arithmetic runs
under a process lock on the local cache, which is exact for its one process.

`NATTER_RATE_LIMITS=off` turns every limit off (`settings.NATTER["RATE_LIMITS"]`).
"""

import functools
import ipaddress
import math
import threading
import time

from django.conf import settings
from django.core.cache import cache

from apps.common.errors import RateLimited
from apps.common.rediscache import async_client, sync_client

# KEYS[1]: the bucket. ARGV[1]: microseconds per token; ARGV[2]: the burst (tokens).
# Returns 0 when the hit is allowed, else the milliseconds until it would be.
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return math.ceil((allow_at - now) / 1000)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
           math.ceil((new_tat - now) / 1000) + 1)
return 0
"""

_local_lock = threading.Lock()
_sha: str | None = None


def enabled() -> bool:
    return settings.NATTER.get("RATE_LIMITS", True)


def rate_limit_hit(
    *,
    scope: str,
    key: str,
    limit: float,
    period_s: float,
    burst: int | None = None,
    message: str | None = None,
) -> None:
    """Take a token of `key`'s bucket in `scope`; raise RateLimited when it is empty."""
    (refused,) = rate_limit_hit_many(
        scope=scope, keys=[key], limit=limit, period_s=period_s, burst=burst, message=message
    )
    if refused is not None:
        raise refused


def rate_limit_hit_many(
    *,
    scope: str,
    keys: list[str],
    limit: float,
    period_s: float,
    burst: int | None = None,
    message: str | None = None,
) -> list[RateLimited | None]:
    """Take a token of each key's bucket, in order: the RateLimited refusing each, or None.

    One Redis round trip for all of them (a batch of sends, one hit per send): a
    hit each was a round trip each, one after the other, on the batch that every
    waiting send of the process sits behind. A key given twice takes two tokens.
    """
    plans = _plans(scope, keys, limit, period_s, burst)
    if plans is None:
        return [None] * len(keys)
    client = sync_client()
    waits = [_local_hit(*p) for p in plans] if client is None else _redis_hits(client, plans)
    return [_refusal(scope, wait_ms, message) for wait_ms in waits]


async def arate_limit_hit(
    *,
    scope: str,
    key: str,
    limit: float,
    period_s: float,
    burst: int | None = None,
    message: str | None = None,
) -> None:
    """`rate_limit_hit` for async code (consumers): no thread hop, one Redis call."""
    (refused,) = await arate_limit_hit_many(
        scope=scope, keys=[key], limit=limit, period_s=period_s, burst=burst, message=message
    )
    if refused is not None:
        raise refused


async def arate_limit_hit_many(
    *,
    scope: str,
    keys: list[str],
    limit: float,
    period_s: float,
    burst: int | None = None,
    message: str | None = None,
) -> list[RateLimited | None]:
    """`rate_limit_hit_many` for async code: one pipelined Redis round trip, no thread."""
    plans = _plans(scope, keys, limit, period_s, burst)
    if plans is None:
        return [None] * len(keys)
    client = async_client()
    waits = [_local_hit(*p) for p in plans] if client is None else await _aredis_hits(client, plans)
    return [_refusal(scope, wait_ms, message) for wait_ms in waits]


# --- The limits on new connections per client address -----------------------------


async def aconnect_hit(client_ip: str | None) -> None:
    """Count a new WebSocket or long-poll of a client address (`CONNECT_RATE_PER_S`)."""
    conf = settings.NATTER
    if client_ip is None or ip_exempt(client_ip):
        return
    await arate_limit_hit(
        scope="connect",
        key=client_ip,
        limit=conf["CONNECT_RATE"],
        period_s=1,
        burst=conf["CONNECT_BURST"],
        message="Too many new connections from this address; retry later.",
    )


def connect_hit(client_ip: str | None) -> None:
    """The synchronous form of `aconnect_hit` (the long-poll's Django view)."""
    conf = settings.NATTER
    if client_ip is None or ip_exempt(client_ip):
        return
    rate_limit_hit(
        scope="connect",
        key=client_ip,
        limit=conf["CONNECT_RATE"],
        period_s=1,
        burst=conf["CONNECT_BURST"],
        message="Too many new connections from this address; retry later.",
    )


def scope_client_ip(scope) -> str | None:
    """The client address of an ASGI scope (daphne's --proxy-headers puts the real one here)."""
    client = scope.get("client")
    return client[0] if client else None


def ip_exempt(client_ip: str) -> bool:
    """Whether an address is in RATE_LIMIT_EXEMPT_IPS (loopback by default)."""
    networks = _exempt_networks(settings.NATTER.get("RATE_LIMIT_EXEMPT_IPS", ""))
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


@functools.lru_cache(maxsize=8)
def _exempt_networks(spec: str) -> tuple:
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    )


# --- Internals ------------------------------------------------------------------------


def _plan(scope, key, limit, period_s, burst) -> tuple[str, float, int] | None:
    if not enabled() or limit <= 0:
        return None
    burst = max(1, int(burst if burst is not None else limit))
    interval_us = period_s * 1_000_000 / limit
    return cache.make_key(f"rl:{scope}:{key}"), interval_us, burst


def _plans(scope, keys, limit, period_s, burst) -> list[tuple[str, float, int]] | None:
    """Each key's plan, in order; None when there is nothing to take (no keys, or
    the limits are off, which is the same for every key)."""
    plans = [_plan(scope, key, limit, period_s, burst) for key in keys]
    return plans if keys and plans[0] is not None else None


def _refusal(scope: str, wait_ms: int, message: str | None) -> RateLimited | None:
    if wait_ms <= 0:
        return None
    return RateLimited(
        message or f"Too many requests for {scope}; retry later.",
        retry_after=max(1, math.ceil(wait_ms / 1000)),
    )


def _redis_hits(client, plans: list[tuple[str, float, int]]) -> list[int]:
    """Run the script once per plan, in order, in one pipelined round trip."""
    global _sha
    from redis.exceptions import NoScriptError

    if _sha is None:
        _sha = client.script_load(_GCRA)
    results = _evalsha_each(client, plans)
    # Redis restarted, or its script cache was flushed: a hit that found no script
    # took no token, so only those run again.
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        _sha = client.script_load(_GCRA)
        again = _evalsha_each(client, [plans[i] for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return [int(result) for result in results]


def _evalsha_each(client, plans) -> list:
    pipe = client.pipeline(transaction=False)
    for key, interval_us, burst in plans:
        pipe.evalsha(_sha, 1, key, repr(interval_us), burst)
    return pipe.execute(raise_on_error=False)


async def _aredis_hits(client, plans: list[tuple[str, float, int]]) -> list[int]:
    """`_redis_hits` on an async client."""
    from redis.exceptions import NoScriptError

    sha = _sha or await _aload(client)
    results = await _aevalsha_each(client, sha, plans)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        sha = await _aload(client)
        again = await _aevalsha_each(client, sha, [plans[i] for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return [int(result) for result in results]


async def _aevalsha_each(client, sha: str, plans) -> list:
    pipe = client.pipeline(transaction=False)
    for key, interval_us, burst in plans:
        pipe.evalsha(sha, 1, key, repr(interval_us), burst)
    return await pipe.execute(raise_on_error=False)


async def _aload(client) -> str:
    global _sha
    _sha = await client.script_load(_GCRA)
    return _sha


def _local_hit(key: str, interval_us: float, burst: int) -> int:
    with _local_lock:
        now = time.time() * 1_000_000
        tat = max(cache.get(key) or now, now)
        new_tat = tat + interval_us
        allow_at = new_tat - burst * interval_us
        if allow_at > now:
            return math.ceil((allow_at - now) / 1000)
        cache.set(key, new_tat, timeout=math.ceil((new_tat - now) / 1_000_000) + 1)
        return 0
