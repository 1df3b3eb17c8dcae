"""The connection registry and presence state, behind one small interface.

Like Django's session backends: `RedisPresenceStore` for every real deployment and
`MemoryPresenceStore` for the embedded default. `base` describes what is kept.
"""

from apps.presence.store.base import (
    Expired,
    PresenceStore,
    Touched,
    UserPresence,
    parse_record,
    record,
)
from apps.presence.store.memory import MemoryPresenceStore
from apps.presence.store.redis_backend import RedisPresenceStore

__all__ = [
    "Expired",
    "MemoryPresenceStore",
    "PresenceStore",
    "RedisPresenceStore",
    "Touched",
    "UserPresence",
    "get_store",
    "parse_record",
    "record",
]

_stores: dict[str, PresenceStore] = {}


def get_store() -> PresenceStore:
    """The store of this process: Redis when configured, else in memory."""
    from django.conf import settings

    url = settings.NATTER["PRESENCE_REDIS_URL"]
    store = _stores.get(url)
    if store is None:
        store = RedisPresenceStore(url) if url else MemoryPresenceStore()
        _stores[url] = store
    return store
