"""The long-lived keys of a device (docs/crypto.md §2): identity, signed prekey, one-time prekeys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .primitives import (
    ED25519_SEED_BYTES,
    U32_MAX,
    X25519_KEY_BYTES,
    Random,
    ed25519_keypair,
    ed25519_secret_to_x25519,
    ed25519_sign,
    ed25519_verify,
    from_b64,
    to_b64,
    x25519_public,
)


def _check_key_id(key_id: int) -> int:
    """Prekey ids are u32 and at least 1: 0 means "no one-time prekey" in a prekey message."""
    if not isinstance(key_id, int) or not 1 <= key_id <= U32_MAX:
        raise ValueError(f"prekey id must be 1..{U32_MAX}, got {key_id!r}")
    return key_id


@dataclass(frozen=True)
class IdentityKeyPair:
    """The device's Ed25519 identity; its public half is the directory's `identity_key`."""

    seed: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> IdentityKeyPair:
        public, secret = ed25519_keypair(seed)
        return cls(seed=bytes(seed), public=public, secret=secret)

    @classmethod
    def generate(cls, rng: Random) -> IdentityKeyPair:
        """One draw: `seed = bytes(32)` (§1)."""
        return cls.from_seed(rng.bytes(ED25519_SEED_BYTES))

    def sign(self, message: bytes) -> bytes:
        return ed25519_sign(self.seed, message)

    @property
    def x25519_private(self) -> bytes:
        """IKx.priv, for the X3DH agreements (§3)."""
        return ed25519_secret_to_x25519(self.secret)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": to_b64(self.seed), "public": to_b64(self.public)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdentityKeyPair:
        pair = cls.from_seed(from_b64(data["seed"]))
        if "public" in data and from_b64(data["public"]) != pair.public:
            raise ValueError("stored identity public key does not match its seed")
        return pair


@dataclass(frozen=True)
class SignedPreKey:
    """An X25519 prekey whose public half the identity key signs, so a claimer can trust it."""

    key_id: int
    private: bytes
    public: bytes
    signature: bytes

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int, rng: Random) -> SignedPreKey:
        """One draw: `priv = bytes(32)` (§1)."""
        _check_key_id(key_id)
        private = rng.bytes(X25519_KEY_BYTES)
        public = x25519_public(private)
        return cls(key_id=key_id, private=private, public=public, signature=identity.sign(public))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "private": to_b64(self.private),
            "public": to_b64(self.public),
            "signature": to_b64(self.signature),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignedPreKey:
        private = from_b64(data["private"])
        return cls(
            key_id=_check_key_id(data["key_id"]),
            private=private,
            public=x25519_public(private),
            signature=from_b64(data["signature"]),
        )


@dataclass(frozen=True)
class PreKey:
    """A one-time X25519 prekey; its private half is deleted after its first successful use."""

    key_id: int
    private: bytes
    public: bytes

    @classmethod
    def generate(cls, key_id: int, rng: Random) -> PreKey:
        """One draw: `priv = bytes(32)` (§1)."""
        _check_key_id(key_id)
        private = rng.bytes(X25519_KEY_BYTES)
        return cls(key_id=key_id, private=private, public=x25519_public(private))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "private": to_b64(self.private),
            "public": to_b64(self.public),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreKey:
        private = from_b64(data["private"])
        return cls(
            key_id=_check_key_id(data["key_id"]), private=private, public=x25519_public(private)
        )


def verify_signed_prekey(identity_public: bytes, prekey_public: bytes, signature: bytes) -> bool:
    """True when `signature` is the identity key's signature over the 32 raw prekey bytes."""
    return ed25519_verify(identity_public, prekey_public, signature)


def generate_one_time_prekeys(start_id: int, count: int, rng: Random) -> list[PreKey]:
    """`count` prekeys with consecutive ids from `start_id`, drawn in key-id order (§1)."""
    if count < 0:
        raise ValueError("count must not be negative")
    _check_key_id(start_id)
    if count:
        _check_key_id(start_id + count - 1)
    return [PreKey.generate(start_id + i, rng) for i in range(count)]
