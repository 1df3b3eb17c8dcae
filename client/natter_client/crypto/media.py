"""Attachment encryption (docs/crypto.md §10): libsodium secretstream in 64 KiB chunks.

Streams both ways, so a 100 MiB file is never held in memory: encryption reads
one chunk ahead (the last chunk carries the FINAL tag), decryption refuses a blob
that is truncated, extended or altered anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_ABYTES,
    crypto_secretstream_xchacha20poly1305_HEADERBYTES,
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_init_push,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_push,
    crypto_secretstream_xchacha20poly1305_state,
    crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
)
from nacl.exceptions import CryptoError as NaclCryptoError

from .primitives import DecryptError, Random, SystemRandom

__all__ = [
    "CHUNK_BYTES",
    "DecryptError",
    "MediaDecryptor",
    "decrypt_bytes",
    "decrypt_chunks",
    "encrypt_bytes",
    "encrypt_chunks",
    "encrypted_size",
    "media_key",
]

CHUNK_BYTES = 65536
HEADER_BYTES = crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES = crypto_secretstream_xchacha20poly1305_ABYTES
KEY_BYTES = 32


def media_key(rng: Random | None = None) -> bytes:
    return (rng or SystemRandom()).bytes(KEY_BYTES)


def encrypted_size(plain_size: int) -> int:
    """The blob size for a file of `plain_size` bytes (an empty file is one empty chunk)."""
    chunks = max(1, -(-plain_size // CHUNK_BYTES))
    return HEADER_BYTES + plain_size + chunks * ABYTES


def _chunks_of(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_BYTES):
        yield chunk


def encrypt_chunks(source: BinaryIO, key: bytes) -> Iterator[bytes]:
    """Yield the blob: the header, then one ciphertext per 64 KiB of `source`."""
    state = crypto_secretstream_xchacha20poly1305_state()
    yield crypto_secretstream_xchacha20poly1305_init_push(state, key)
    pending = source.read(CHUNK_BYTES)
    while True:
        following = source.read(CHUNK_BYTES) if len(pending) == CHUNK_BYTES else b""
        last = not following
        tag = (
            crypto_secretstream_xchacha20poly1305_TAG_FINAL
            if last
            else crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
        )
        yield crypto_secretstream_xchacha20poly1305_push(state, pending, None, tag)
        if last:
            return
        pending = following


def encrypt_bytes(data: bytes, key: bytes) -> bytes:
    import io

    return b"".join(encrypt_chunks(io.BytesIO(data), key))


class MediaDecryptor:
    """Feed the blob in pieces of any size; get plaintext back; `finish()` checks the end."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._state = None
        self._buffer = bytearray()
        self._done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        if self._state is None:
            if len(self._buffer) < HEADER_BYTES:
                return b""
            self._state = crypto_secretstream_xchacha20poly1305_state()
            try:
                crypto_secretstream_xchacha20poly1305_init_pull(
                    self._state, bytes(self._buffer[:HEADER_BYTES]), self._key
                )
            except (NaclCryptoError, ValueError) as exc:
                raise DecryptError("bad media header") from exc
            del self._buffer[:HEADER_BYTES]
        full = CHUNK_BYTES + ABYTES
        # Keep the last (possibly final, shorter) chunk until finish(): only then is it
        # known to be the last one.
        while len(self._buffer) > full:
            out += self._pull(bytes(self._buffer[:full]), final_expected=False)
            del self._buffer[:full]
        return bytes(out)

    def finish(self) -> bytes:
        if self._state is None:
            raise DecryptError("the media blob is truncated")
        if self._done:
            return b""
        plaintext = self._pull(bytes(self._buffer), final_expected=True)
        self._buffer.clear()
        self._done = True
        return plaintext

    def _pull(self, chunk: bytes, *, final_expected: bool) -> bytes:
        if self._done:
            raise DecryptError("data after the final chunk")
        try:
            plaintext, tag = crypto_secretstream_xchacha20poly1305_pull(self._state, chunk, None)
        except (NaclCryptoError, ValueError) as exc:
            raise DecryptError("a media chunk did not authenticate") from exc
        is_final = tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL
        if is_final != final_expected:
            raise DecryptError("the media blob is truncated or extended")
        return plaintext


def decrypt_chunks(blob: Iterable[bytes], key: bytes) -> Iterator[bytes]:
    decryptor = MediaDecryptor(key)
    for piece in blob:
        plaintext = decryptor.feed(piece)
        if plaintext:
            yield plaintext
    yield decryptor.finish()


def decrypt_bytes(blob: bytes, key: bytes) -> bytes:
    return b"".join(decrypt_chunks([blob], key))
