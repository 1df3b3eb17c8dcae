"""Users, devices and conversations for a benchmark, made in bulk through the ORM.

Registering 10,000 users through the API would take minutes of password hashing
and key generation that the benchmark does not measure; here each device gets a
known token (only its hash is stored, as the server does) and a published
identity key, so the server treats it exactly like a device that logged in.
"""

import os
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchDevice:
    user_id: str
    device_id: str
    token: str


def keys_body() -> dict:
    """A `PUT /api/v1/keys` body with fresh keys: a device that registers over REST
    publishes them, as every client does, before anybody can send to it."""
    from natter_client.crypto import IdentityKeyPair, SignedPreKey, SystemRandom, to_b64

    rng = SystemRandom()
    identity = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(identity, 1, rng)
    return {
        "identity_key": to_b64(identity.public),
        "signed_prekey": {
            "key_id": 1,
            "public_key": to_b64(spk.public),
            "signature": to_b64(spk.signature),
        },
    }


def setup_django(env: dict) -> None:
    """Point this process's Django at the benchmark server's database, then set it up."""
    for key in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"):
        os.environ[key] = env[key]
    import django

    django.setup()


def make_devices(count: int, tag: str) -> list[BenchDevice]:
    """`count` users with one device each, keys published, in a few bulk inserts."""
    from nacl.signing import SigningKey

    from apps.accounts.models import Device, SignedPreKey, User
    from apps.common import ids

    identity = SigningKey.generate()
    public = bytes(identity.verify_key)
    spk = secrets.token_bytes(32)
    signature = identity.sign(spk).signature
    users, devices, tokens = [], [], []
    for i in range(count):
        user = User(username=f"b{tag}_{i}", display_name=f"Bench {i}", password="!")
        token = secrets.token_urlsafe(24)
        users.append(user)
        tokens.append(token)
        devices.append(
            Device(
                user=user, name="bench", token_hash=Device.hash_token(token), identity_key=public
            )
        )
    User.objects.bulk_create(users, batch_size=2000)
    Device.objects.bulk_create(devices, batch_size=2000)
    SignedPreKey.objects.bulk_create(
        [SignedPreKey(device=d, key_id=1, public_key=spk, signature=signature) for d in devices],
        batch_size=2000,
    )
    analyze()
    return [
        BenchDevice(ids.encode(ids.USER, u.id), d.public_id, t)
        for u, d, t in zip(users, devices, tokens, strict=True)
    ]


def make_pairs(count: int, tag: str) -> list[tuple[BenchDevice, BenchDevice, str]]:
    """`count` (sender, receiver, direct conversation id) triples."""
    from apps.accounts.models import User
    from apps.common import ids
    from apps.messaging.services import conversation_direct_get_or_create

    devices = make_devices(2 * count, tag)
    pairs = []
    for i in range(count):
        sender, receiver = devices[2 * i], devices[2 * i + 1]
        user = User.objects.get(id=ids.decode(ids.USER, sender.user_id))
        conversation, _ = conversation_direct_get_or_create(
            user=user, other_user_id=ids.decode(ids.USER, receiver.user_id)
        )
        pairs.append((sender, receiver, conversation.public_id))
    analyze()
    return pairs


def analyze() -> None:
    """Give the planner fresh statistics after a bulk setup, as autovacuum would.

    Postgres on the development machine runs with autovacuum off: without this, the
    planner knew nothing of tables that earlier runs had filled, chose hash joins
    over whole tables (the receipts, the conversations) and Postgres took 105 % of
    a core at 650 messages/s instead of 50 % at 900/s.
    """
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
