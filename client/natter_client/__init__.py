"""Async client SDK of the Natter messenger protocol (v1): REST, WebSocket and long-poll."""

from .client import NatterClient
from .e2e import Received
from .errors import (
    AbuseClosed,
    ApiError,
    ConnectedElsewhere,
    ConnectionClosed,
    ConnectionRejected,
    DeviceMismatch,
    NatterError,
    RateLimited,
    Unauthenticated,
)
from .http import NatterHttp
from .keystore import FileKeyStore, KeyStore
from .transport import Connection, LongPollConnection, WebSocketConnection
from .wire import Backoff, Ciphertexts, Dedup, Event, SendAck, b64decode, b64encode

__all__ = [
    "AbuseClosed",
    "ApiError",
    "Backoff",
    "Ciphertexts",
    "ConnectedElsewhere",
    "Connection",
    "ConnectionClosed",
    "ConnectionRejected",
    "Dedup",
    "DeviceMismatch",
    "Event",
    "FileKeyStore",
    "KeyStore",
    "LongPollConnection",
    "NatterClient",
    "NatterError",
    "NatterHttp",
    "RateLimited",
    "Received",
    "SendAck",
    "Unauthenticated",
    "WebSocketConnection",
    "b64decode",
    "b64encode",
]
