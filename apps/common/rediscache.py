"""The cache's Redis, for the few places that need it raw: atomic scripts, tiny marks.

`sync_client()` is Django's own client of the cache (its connection pool);
`async_client()` is a redis.asyncio client of the same Redis for the running event
loop. Both are None without Redis (the embedded default), where callers fall back
to the local cache. Keys are namespaced with `cache.make_key`.
"""

import asyncio
import threading
import weakref

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.redis import RedisCache

_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object]" = (
    weakref.WeakKeyDictionary()
)


class SharedRedisCache(RedisCache):
    """Django's Redis cache with one client (and connection pool) per process.

    Django makes a cache object per thread and per asyncio task, and each made its
    own client: a new connection pool, a new TCP connection to Redis, and redis-py
    reading package metadata from disk (about a millisecond). Every background task
    of a socket (a push, a batch of acks) paid that, which was 40 % of a loaded
    process's event loop. redis-py's clients are thread-safe, so one is shared.
    """

    _clients: dict = {}
    _lock = threading.Lock()

    @property
    def _cache(self):
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.setdefault(key, self._class(self._servers, **self._options))
        return client


def sync_client():
    """Django's Redis client of the cache, or None when the cache is not Redis."""
    backend = getattr(cache, "_cache", None)
    if backend is None or not hasattr(backend, "get_client"):
        return None
    return backend.get_client(write=True)


def async_client():
    """A redis.asyncio client of the cache's Redis for this event loop, or None."""
    # redis.asyncio clients belong to one event loop: one per loop, like the channel layer.
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        if sync_client() is None:
            return None
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(
            settings.CACHES["default"]["LOCATION"],
            socket_timeout=5,
            socket_connect_timeout=5,
            driver_info=None,  # no CLIENT SETINFO (see CHANNEL_LAYERS in settings)
        )
        _async_clients[loop] = client
    return client
