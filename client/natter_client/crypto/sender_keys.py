"""Sender Keys for groups (docs/crypto.md §6): one signed, ratcheted key per member device."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .primitives import (
    AEAD_TAG_BYTES,
    ED25519_PUBLIC_BYTES,
    ED25519_SEED_BYTES,
    SIGNATURE_BYTES,
    U32_MAX,
    BadSignature,
    CryptoError,
    DecryptError,
    DuplicateMessage,
    MalformedMessage,
    Random,
    TooManySkipped,
    aead_decrypt,
    aead_encrypt,
    ed25519_keypair,
    ed25519_sign,
    ed25519_verify,
    from_b64,
    kdf,
    read_u32,
    to_b64,
    u32,
)

MAX_SKIP = 1000
MAX_STORED_SKIPPED = 2000
KEPT_KEY_IDS = 2

VERSION = 0x01
PREFIX_BYTES = 1 + 4 + 4
SENDER_KEY_LABEL = b"natter-sk-v1"
GROUP_AD_LABEL = b"natter-group-v1"


def _step(chain_key: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message key), as KDF_CK of §4."""
    return kdf(chain_key, b"\x02", 32), kdf(chain_key, b"\x01", 32)


def _expand(message_key: bytes) -> tuple[bytes, bytes]:
    k = kdf(message_key, SENDER_KEY_LABEL, 56)
    return k[:32], k[32:]


def group_associated_data(conversation_id: str, sender_device_id: str) -> bytes:
    """Binds a group body to its group and its sender, so it cannot be replayed elsewhere."""
    return (
        GROUP_AD_LABEL
        + b"\x00"
        + conversation_id.encode("utf-8")
        + b"\x00"
        + sender_device_id.encode("utf-8")
    )


def _parse(body: bytes) -> tuple[int, int, bytes, bytes, bytes]:
    """(key_id, iteration, signed part, ciphertext, signature) of a group body."""
    if len(body) < PREFIX_BYTES + AEAD_TAG_BYTES + SIGNATURE_BYTES or body[0] != VERSION:
        raise MalformedMessage("not a version-1 group body")
    signed = body[:-SIGNATURE_BYTES]
    return (
        read_u32(body, 1),
        read_u32(body, 5),
        signed,
        signed[PREFIX_BYTES:],
        body[-SIGNATURE_BYTES:],
    )


def group_body_key_id(body: bytes) -> int:
    """The sender key id a group body was encrypted with, to pick the receiver."""
    return _parse(bytes(body))[0]


@dataclass
class SenderKey:
    """This device's own sender key for one group; it encrypts and signs every group body."""

    key_id: int
    iteration: int
    chain_key: bytes
    signing_seed: bytes
    signing_public: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.signing_public = ed25519_keypair(self.signing_seed)[0]

    @classmethod
    def create(cls, rng: Random) -> SenderKey:
        """Draws, in order: key_id = u32 of bytes(4), chain_key = bytes(32), signing seed (§1)."""
        key_id = int.from_bytes(rng.bytes(4), "big")
        chain_key = rng.bytes(32)
        signing_seed = rng.bytes(ED25519_SEED_BYTES)
        return cls(key_id=key_id, iteration=0, chain_key=chain_key, signing_seed=signing_seed)

    def distribution(self) -> dict[str, Any]:
        """The chain key at the current iteration and the public signing key (raw bytes)."""
        return {
            "key_id": self.key_id,
            "iteration": self.iteration,
            "chain_key": self.chain_key,
            "signing_key": self.signing_public,
        }

    def encrypt(self, plaintext: bytes, conversation_id: str, sender_device_id: str) -> bytes:
        """`0x01 || u32(key_id) || u32(iteration) || AEAD(...) || signature`, then step the chain."""
        if self.iteration > U32_MAX:
            raise CryptoError("sender key chain exhausted; rotate the key")
        next_chain, message_key = _step(self.chain_key)
        key, nonce = _expand(message_key)
        ad = group_associated_data(conversation_id, sender_device_id)
        signed = (
            bytes([VERSION])
            + u32(self.key_id)
            + u32(self.iteration)
            + aead_encrypt(key, nonce, plaintext, ad)
        )
        body = signed + ed25519_sign(self.signing_seed, signed)
        self.chain_key = next_chain
        self.iteration += 1
        return body

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "iteration": self.iteration,
            "chain_key": to_b64(self.chain_key),
            "signing_seed": to_b64(self.signing_seed),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SenderKey:
        return cls(
            key_id=int(data["key_id"]),
            iteration=int(data["iteration"]),
            chain_key=from_b64(data["chain_key"]),
            signing_seed=from_b64(data["signing_seed"]),
        )


@dataclass
class SenderKeyReceiver:
    """Another device's sender key, as received: it can open that key's bodies from its iteration on."""

    key_id: int
    iteration: int
    chain_key: bytes
    signing_key: bytes
    skipped: OrderedDict[int, bytes] = field(default_factory=OrderedDict)

    @classmethod
    def from_distribution(cls, distribution: dict[str, Any]) -> SenderKeyReceiver:
        """From `{key_id, iteration, chain_key, signing_key}` with raw bytes (see `distribution()`)."""
        key_id = distribution["key_id"]
        iteration = distribution["iteration"]
        chain_key = bytes(distribution["chain_key"])
        signing_key = bytes(distribution["signing_key"])
        for value in (key_id, iteration):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U32_MAX:
                raise MalformedMessage("sender key distribution: bad key_id or iteration")
        if len(chain_key) != 32 or len(signing_key) != ED25519_PUBLIC_BYTES:
            raise MalformedMessage("sender key distribution: bad key lengths")
        return cls(key_id=key_id, iteration=iteration, chain_key=chain_key, signing_key=signing_key)

    def decrypt(self, body: bytes, conversation_id: str, sender_device_id: str) -> bytes:
        """Verify, then open. On any error the receiver is left exactly as it was."""
        key_id, iteration, signed, ciphertext, signature = _parse(bytes(body))
        if key_id != self.key_id:
            raise DecryptError(f"group body is for sender key {key_id}, not {self.key_id}")
        if not ed25519_verify(self.signing_key, signed, signature):
            raise BadSignature("group body signature does not verify")
        ad = group_associated_data(conversation_id, sender_device_id)

        if iteration < self.iteration:
            message_key = self.skipped.get(iteration)
            if message_key is None:
                raise DuplicateMessage(f"iteration {iteration} was already used or is not kept")
            plaintext = _open(message_key, ciphertext, ad)
            del self.skipped[iteration]
            return plaintext

        if iteration - self.iteration > MAX_SKIP:
            raise TooManySkipped(f"iteration {iteration} would skip more than {MAX_SKIP} keys")
        chain_key = self.chain_key
        new_skipped: list[tuple[int, bytes]] = []
        for skipped_iteration in range(self.iteration, iteration):
            chain_key, message_key = _step(chain_key)
            new_skipped.append((skipped_iteration, message_key))
        next_chain, message_key = _step(chain_key)
        plaintext = _open(message_key, ciphertext, ad)
        # Authenticated: commit.
        self.skipped.update(new_skipped)
        while len(self.skipped) > MAX_STORED_SKIPPED:
            self.skipped.popitem(last=False)
        self.chain_key = next_chain
        self.iteration = iteration + 1
        return plaintext

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "iteration": self.iteration,
            "chain_key": to_b64(self.chain_key),
            "signing_key": to_b64(self.signing_key),
            "skipped": [[n, to_b64(key)] for n, key in self.skipped.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SenderKeyReceiver:
        return cls(
            key_id=int(data["key_id"]),
            iteration=int(data["iteration"]),
            chain_key=from_b64(data["chain_key"]),
            signing_key=from_b64(data["signing_key"]),
            skipped=OrderedDict((int(n), from_b64(key)) for n, key in data["skipped"]),
        )


def _open(message_key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    key, nonce = _expand(message_key)
    return aead_decrypt(key, nonce, ciphertext, ad)


class SenderKeyRing:
    """The receivers of one sender device in one group: the two most recent key ids, so bodies
    sent just before a rotation still open."""

    def __init__(self, receivers: list[SenderKeyReceiver] | None = None) -> None:
        self._receivers: OrderedDict[int, SenderKeyReceiver] = OrderedDict()
        for receiver in receivers or []:
            self._receivers[receiver.key_id] = receiver

    def add_distribution(self, distribution: dict[str, Any]) -> bool:
        """Keep a new key (dropping the oldest beyond two). A key id already held is ignored, so a
        repeated distribution cannot reopen iterations that were already used. True if added."""
        receiver = SenderKeyReceiver.from_distribution(distribution)
        if receiver.key_id in self._receivers:
            return False
        self._receivers[receiver.key_id] = receiver
        while len(self._receivers) > KEPT_KEY_IDS:
            self._receivers.popitem(last=False)
        return True

    @property
    def key_ids(self) -> list[int]:
        """Held key ids, oldest first."""
        return list(self._receivers)

    def decrypt(self, body: bytes, conversation_id: str, sender_device_id: str) -> bytes:
        key_id = group_body_key_id(body)
        receiver = self._receivers.get(key_id)
        if receiver is None:
            raise DecryptError(f"no sender key {key_id} from this device")
        return receiver.decrypt(body, conversation_id, sender_device_id)

    def to_dict(self) -> dict[str, Any]:
        return {"receivers": [r.to_dict() for r in self._receivers.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SenderKeyRing:
        return cls([SenderKeyReceiver.from_dict(r) for r in data["receivers"]])
