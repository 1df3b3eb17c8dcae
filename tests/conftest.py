import base64
import uuid

import pytest
import pytest_asyncio
from channels.layers import channel_layers

from apps.accounts import services as account_services


@pytest.fixture(autouse=True)
def _fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_channel_layers():
    # channels-redis pools are tied to one event loop; pytest-asyncio gives each
    # test a new loop (STACK-NOTES, Tests).
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.fixture(autouse=True)
def _clear_rate_limits():
    """Forget rate-limit counters between tests, and nothing else.

    `cache.clear()` would FLUSHDB the Redis database that the Celery broker and
    the channel layer share: a live server's queued tasks and groups would vanish.
    """
    from django.core.cache import cache

    backend = getattr(cache, "_cache", None)
    if backend is None or not hasattr(backend, "get_client"):
        cache.clear()  # the in-memory cache of the embedded default
    else:
        client = backend.get_client(write=True)
        keys = list(client.scan_iter(match=cache.make_key("rl:*")))
        if keys:
            client.delete(*keys)
    yield


def keys_upload_body(*, one_time: int = 0, start_id: int = 1) -> tuple[dict, object]:
    """A valid `PUT /api/v1/keys` body with fresh keys, and the identity signing key."""
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    identity = SigningKey.generate()
    spk = bytes(PrivateKey.generate().public_key)
    body = {
        "identity_key": b64(bytes(identity.verify_key)),
        "signed_prekey": {
            "key_id": 1,
            "public_key": b64(spk),
            "signature": b64(identity.sign(spk).signature),
        },
        "one_time_prekeys": [
            {"key_id": start_id + i, "public_key": b64(bytes(PrivateKey.generate().public_key))}
            for i in range(one_time)
        ],
    }
    return body, identity


def keys_publish(device, *, one_time: int = 0, start_id: int = 1):
    """Upload a fresh identity key and signed prekey (and `one_time` prekeys) for a device."""
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    identity = SigningKey.generate()
    spk = bytes(PrivateKey.generate().public_key)
    account_services.keys_upload(
        device=device,
        identity_key=bytes(identity.verify_key),
        signed_prekey=account_services.PreKeyUpload(1, spk, identity.sign(spk).signature),
        one_time_prekeys=[
            account_services.PreKeyUpload(start_id + i, bytes(PrivateKey.generate().public_key))
            for i in range(one_time)
        ],
    )
    return identity


@pytest_asyncio.fixture
async def settle_batches(transactional_db):
    """Let background ack batches commit before the database is flushed.

    An ack commits after the socket answered; a TRUNCATE at teardown racing such a
    commit can deadlock. Requesting transactional_db makes this teardown run first.
    """
    yield
    from apps.common.db import close_loop_connections
    from apps.messaging import batching

    await batching.settle()
    await close_loop_connections()


class People:
    """Makes users and logged-in devices the way clients do: through the services."""

    def __init__(self):
        self.n = 0

    def user(self, name: str | None = None):
        self.n += 1
        name = name or f"user{self.n}_{uuid.uuid4().hex[:6]}"
        return account_services.user_register(
            username=name, password="a long pass phrase 42", display_name=name.title()
        )

    def device(self, user, name: str = "laptop", *, keys: bool = True):
        """A logged-in device; with `keys`, it has published real keys as clients do."""
        device, token = account_services.device_login(
            username=user.username, password="a long pass phrase 42", device_name=name
        )
        device.token = token
        if keys:
            device.identity = keys_publish(device)
        return device


@pytest.fixture
def people():
    return People()


@pytest.fixture
def staff(people):
    """A browser logged in to the admin as a superuser."""
    from django.test import Client

    user = people.user("staffer")
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
