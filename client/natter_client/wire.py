"""Pure pieces of the wire: base64, send payloads, decoded events, backoff and de-duplication."""

from __future__ import annotations

import base64
import binascii
import logging
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("natter_client")

# A ciphertext per device: raw bytes (sent with the call's envelope) or (envelope, bytes), so an
# X3DH "prekey" message to a new device can travel beside "message" ones in one send.
Ciphertexts = Mapping[str, bytes | tuple[str, bytes]]


def b64encode(data: bytes) -> str:
    """Encode bytes as the protocol's standard, padded base64."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode standard padded base64, refusing junk instead of silently skipping it."""
    return base64.b64decode(text, validate=True)


def new_client_id() -> str:
    """Return a fresh idempotency key for one logical send."""
    return str(uuid.uuid4())


def encode_ciphertexts(ciphertexts: Ciphertexts, envelope: str = "message") -> list[dict[str, str]]:
    """Turn {device_id: bytes | (envelope, bytes)} into the wire's ciphertexts list."""
    encoded = []
    for device, value in ciphertexts.items():
        env, body = value if isinstance(value, tuple) else (envelope, value)
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"ciphertext for {device} must be bytes, not {type(body).__name__}")
        encoded.append({"device": device, "envelope": env, "body": b64encode(bytes(body))})
    return encoded


def send_payload(
    *,
    client_id: str,
    conversation: str,
    ciphertexts: Ciphertexts,
    kind: str = "text",
    envelope: str = "message",
    group_body: bytes | None = None,
    reply_to_seq: int | None = None,
    media_id: str | None = None,
) -> dict[str, Any]:
    """Build the body shared by POST /api/v1/messages and the WebSocket send frame."""
    payload: dict[str, Any] = {
        "client_id": client_id,
        "conversation": conversation,
        "kind": kind,
        "ciphertexts": encode_ciphertexts(ciphertexts, envelope),
    }
    if group_body is not None:
        payload["group_body"] = b64encode(group_body)
    if reply_to_seq is not None:
        payload["reply_to_seq"] = reply_to_seq
    if media_id is not None:
        payload["media_id"] = media_id
    return payload


def decode_event(event: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of an inbox event with message bodies as bytes; other types pass through."""
    decoded = dict(event)
    if decoded.get("type") != "message":
        return decoded
    for field in ("body", "group_body"):
        value = decoded.get(field)
        if isinstance(value, str):
            try:
                decoded[field] = b64decode(value)
            except (binascii.Error, ValueError):
                # One bad body must not kill the reader; the application sees the raw string.
                log.warning("undecodable %s in message %s", field, decoded.get("message_id"))
    return decoded


@dataclass(frozen=True, slots=True)
class Event:
    """One inbox event as the application sees it: its cursor and its decoded fields."""

    cursor: int
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@dataclass(frozen=True, slots=True)
class SendAck:
    """The server's first check: the message is stored under this message_id and seq."""

    client_id: str
    message_id: str
    conversation: str
    seq: int
    server_ts: str

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> SendAck:
        return cls(
            client_id=data["client_id"],
            message_id=data["message_id"],
            conversation=data["conversation"],
            seq=int(data["seq"]),
            server_ts=data.get("server_ts", ""),
        )


class Backoff:
    """Exponential backoff with jitter, so a restarted server is not hit by every client at once."""

    def __init__(
        self,
        base: float = 0.2,
        cap: float = 10.0,
        factor: float = 2.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempts = 0
        self._rand = rand

    def next(self) -> float:
        """Return the next delay: uniform in [ceiling/2, ceiling], ceiling doubling up to cap."""
        ceiling = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        """Start over after a connection that proved healthy."""
        self.attempts = 0


class Dedup:
    """Remember the last `maxlen` ids so a redelivered message is shown once, in bounded memory."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self.maxlen = maxlen
        self._seen: dict[str, None] = {}

    def first_time(self, key: str) -> bool:
        """Record key; return False if it was already seen."""
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.maxlen:
            # dicts keep insertion order, so the first key is the oldest.
            del self._seen[next(iter(self._seen))]
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[str]:
        return iter(self._seen)
