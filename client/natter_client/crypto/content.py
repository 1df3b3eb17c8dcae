"""Message contents (docs/crypto.md §7): compact UTF-8 JSON, padded to a multiple of 64 bytes."""

from __future__ import annotations

import json
from typing import Any

from .primitives import MalformedMessage

PAD_BLOCK = 64


def encode_content(obj: dict[str, Any]) -> bytes:
    """`json || 0x80 || 0x00...` up to the next multiple of 64, so lengths reveal little."""
    if not isinstance(obj, dict):
        raise TypeError("content must be a JSON object (dict)")
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    encoded = data.encode("utf-8") + b"\x80"
    return encoded + b"\x00" * (-len(encoded) % PAD_BLOCK)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_content(data: bytes) -> dict[str, Any]:
    """Strip the padding and parse; anything but a padded JSON object is a MalformedMessage."""
    unpadded = bytes(data).rstrip(b"\x00")
    if not unpadded.endswith(b"\x80"):
        raise MalformedMessage("content padding is missing")
    try:
        value = json.loads(unpadded[:-1].decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessage(f"content is not UTF-8 JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedMessage("content is not a JSON object")
    return value
