"""The primitives of docs/crypto.md §0–§1, as thin checked wrappers over PyNaCl (libsodium).

Nothing here implements a primitive itself: every hash, curve operation, signature and AEAD is a
libsodium call. The wrappers check lengths first (the bindings hand raw pointers to C) and turn
library failures into this package's `CryptoError` family.
"""

from __future__ import annotations

import base64
import binascii
from typing import Protocol

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
import nacl.utils

X25519_KEY_BYTES = 32
ED25519_PUBLIC_BYTES = 32
ED25519_SECRET_BYTES = 64
ED25519_SEED_BYTES = 32
SIGNATURE_BYTES = 64
AEAD_KEY_BYTES = 32
AEAD_NONCE_BYTES = 24
AEAD_TAG_BYTES = 16
U32_MAX = 0xFFFFFFFF


class CryptoError(Exception):
    """Base of every error of the crypto layer."""


class BadSignature(CryptoError):
    """A signature (signed prekey, group body) did not verify."""


class DecryptError(CryptoError):
    """A ciphertext did not authenticate, or no key could open it."""


class DuplicateMessage(CryptoError):
    """The message key was already used (a replay or a duplicate delivery) or is no longer kept."""


class TooManySkipped(CryptoError):
    """A header asks the receiver to skip more than MAX_SKIP message keys."""


class MalformedMessage(CryptoError):
    """Bytes that do not parse: wrong version, too short, bad padding, bad JSON, bad wire data."""


# --- encodings --------------------------------------------------------------------------------


def u32(value: int) -> bytes:
    """Encode an unsigned 32-bit integer big-endian (§0)."""
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"u32 out of range: {value}")
    return value.to_bytes(4, "big")


def read_u32(data: bytes, offset: int) -> int:
    """Read a big-endian u32 at `offset`."""
    return int.from_bytes(data[offset : offset + 4], "big")


def to_b64(data: bytes) -> str:
    """Standard padded base64, the wire's and the stored state's encoding of bytes."""
    return base64.b64encode(data).decode("ascii")


def from_b64(text: str) -> bytes:
    """Strict standard base64: junk is an error, not silently skipped."""
    if not isinstance(text, str):
        raise ValueError("base64 value must be a string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from exc


def _require_len(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        got = len(value) if isinstance(value, bytes) else type(value).__name__
        raise CryptoError(f"{name} must be {length} bytes, got {got}")


# --- hashing ----------------------------------------------------------------------------------


def kdf(key: bytes, msg: bytes, n: int) -> bytes:
    """H(key, msg, n) of §0: BLAKE2b with an n-byte output, keyed, or unkeyed when `key` is empty.

    libsodium (and so libsodium.js) accepts any output length from 1 to 64 bytes; the 4-byte draw
    of a sender key id (§1) is the only one below 16.
    """
    if not 1 <= n <= 64:
        raise ValueError(f"output length must be 1..64, got {n}")
    if len(key) > 64:
        raise ValueError("BLAKE2b key must be at most 64 bytes")
    return sodium.crypto_generichash_blake2b_salt_personal(bytes(msg), digest_size=n, key=key)


# --- randomness (§1) --------------------------------------------------------------------------


class Random(Protocol):
    """The only source of randomness of the crypto layer; the order of calls is part of §1."""

    def bytes(self, n: int) -> bytes: ...


class SystemRandom:
    """Production randomness: libsodium's randombytes_buf."""

    def bytes(self, n: int) -> bytes:
        return nacl.utils.random(n)


class DeterministicRandom:
    """Reproducible randomness for tests and vectors: the k-th call returns H(seed, u32(k), n)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("DeterministicRandom seed must be 32 bytes")
        self._seed = bytes(seed)
        self.calls = 0

    def bytes(self, n: int) -> bytes:
        out = kdf(self._seed, u32(self.calls), n)
        self.calls += 1
        return out


# --- X25519 -----------------------------------------------------------------------------------


def x25519_public(private: bytes) -> bytes:
    """pub = crypto_scalarmult_base(priv); the private key is used as drawn (libsodium clamps)."""
    _require_len("X25519 private key", private, X25519_KEY_BYTES)
    return sodium.crypto_scalarmult_base(private)


def x25519_keypair(rng: Random) -> tuple[bytes, bytes]:
    """Draw one X25519 key pair: exactly one `bytes(32)` call (§1)."""
    private = rng.bytes(X25519_KEY_BYTES)
    return private, x25519_public(private)


def dh(private: bytes, public: bytes) -> bytes:
    """X25519 agreement; a low-order public key (all-zero result) is an error, as in libsodium."""
    _require_len("X25519 private key", private, X25519_KEY_BYTES)
    _require_len("X25519 public key", public, X25519_KEY_BYTES)
    try:
        shared = sodium.crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:
        raise CryptoError("X25519 with a low-order public key") from exc
    if shared == bytes(X25519_KEY_BYTES):
        raise CryptoError("X25519 with a low-order public key")
    return shared


# --- Ed25519 ----------------------------------------------------------------------------------


def ed25519_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """crypto_sign_seed_keypair: (32-byte public key, 64-byte secret key) from a 32-byte seed."""
    _require_len("Ed25519 seed", seed, ED25519_SEED_BYTES)
    public, secret = sodium.crypto_sign_seed_keypair(seed)
    return public, secret


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """Detached 64-byte Ed25519 signature by the key of `seed`."""
    _require_len("Ed25519 seed", seed, ED25519_SEED_BYTES)
    return nacl.signing.SigningKey(seed).sign(message).signature


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid detached signature of `message` by `public`."""
    if not isinstance(public, bytes) or len(public) != ED25519_PUBLIC_BYTES:
        return False
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


def ed25519_public_to_x25519(public: bytes) -> bytes:
    """IKx public half (§2): crypto_sign_ed25519_pk_to_curve25519."""
    _require_len("Ed25519 public key", public, ED25519_PUBLIC_BYTES)
    try:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError) as exc:
        raise CryptoError("not a valid Ed25519 public key") from exc


def ed25519_secret_to_x25519(secret: bytes) -> bytes:
    """IKx private half (§2): crypto_sign_ed25519_sk_to_curve25519 of the 64-byte secret key."""
    _require_len("Ed25519 secret key", secret, ED25519_SECRET_BYTES)
    return sodium.crypto_sign_ed25519_sk_to_curve25519(secret)


# --- AEAD -------------------------------------------------------------------------------------


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305-IETF: ciphertext with the 16-byte tag appended."""
    _require_len("AEAD key", key, AEAD_KEY_BYTES)
    _require_len("AEAD nonce", nonce, AEAD_NONCE_BYTES)
    return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), ad, nonce, key)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Open an XChaCha20-Poly1305-IETF ciphertext; any failure is a DecryptError."""
    _require_len("AEAD key", key, AEAD_KEY_BYTES)
    _require_len("AEAD nonce", nonce, AEAD_NONCE_BYTES)
    if len(ciphertext) < AEAD_TAG_BYTES:
        raise DecryptError("ciphertext shorter than the tag")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(bytes(ciphertext), ad, nonce, key)
    except nacl.exceptions.CryptoError as exc:
        raise DecryptError("ciphertext did not authenticate") from exc
