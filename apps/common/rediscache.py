"""The cache's Redis, for the few places that need it raw: atomic scripts, tiny marks.

`sync_client()` is Django's own client of the cache (its connection pool);
`async_client()` is a redis.asyncio client of the same Redis for the running event
loop. Both are None without Redis (the embedded default), where callers fall back
to the local cache. Keys are namespaced with `cache.make_key`.
"""

import asyncio
import weakref

from django.conf import settings
from django.core.cache import cache

_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object]" = (
    weakref.WeakKeyDictionary()
)


def sync_client():
    """Django's Redis client of the cache, or None when the cache is not Redis."""
    backend = getattr(cache, "_cache", None)
    if backend is None or not hasattr(backend, "get_client"):
        return None
    return backend.get_client(write=True)


def async_client():
    """A redis.asyncio client of the cache's Redis for this event loop, or None."""
    if sync_client() is None:
        return None
    import redis.asyncio

    # redis.asyncio clients belong to one event loop: one per loop, like the channel layer.
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = redis.asyncio.Redis.from_url(
            settings.CACHES["default"]["LOCATION"], socket_timeout=5, socket_connect_timeout=5
        )
        _async_clients[loop] = client
    return client
